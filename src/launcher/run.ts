// vfs-launch's main flow: parse, validate (nothing created or spawned on a usage error, exit
// 2), optionally mount /dev/fuse in the host namespace, spawn the daemon in its sandbox,
// forward SIGTERM/SIGINT/SIGHUP to it, and leave with its status, saying how it ended.
import { execa } from 'execa';
import type { Options as ExecaOptions } from 'execa';
import type { Writable } from 'node:stream';
import { capabilitiesDocument } from '../daemon/capabilities.js';
import { daemonHelp } from '../daemon/options.js';
import type { LogLevel } from '../log.js';
import { logger, setLogLevel } from '../log.js';
import type { LaunchPlan } from './args.js';
import { FUSE_FD_IN_DAEMON, UsageError, launcherHelp, parseLaunchArgs } from './args.js';
import { describeDaemonEnd } from './exit-status.js';
import { findSeccompKill } from './seccomp-report.js';
import { daemonCommand, findDaemonPid } from './spawn.js';
import { validatePlan } from './validate.js';

const log = logger('launcher');

export const EXIT_USAGE = 2;

export interface LauncherIo {
  stdout: Writable;
  stderr: Writable;
}

const FORWARDED_SIGNALS = ['SIGTERM', 'SIGINT', 'SIGHUP'] as const;

async function checkSeccompPolicy(plan: LaunchPlan): Promise<void> {
  const cfg = plan.config;
  if (cfg.seccomp === 'none' && cfg.seccompPolicies.length === 0) return;
  try {
    // Loaded only when needed: compiling the policy module's syscall tables costs startup time.
    const { prepareSeccomp } = await import('../sandbox/seccomp/index.js');
    prepareSeccomp(cfg.seccomp, cfg.seccompPolicies);
  } catch (err) {
    const msg = err instanceof Error ? err.message : String(err);
    throw new UsageError(`--seccomp: the policy does not compile: ${msg}; fix the policy file or use --seccomp none`);
  }
}

/** Parse + validate only (no side effects). Returns the plan or throws UsageError. */
export async function planLaunch(argv: readonly string[]): Promise<LaunchPlan> {
  const plan = parseLaunchArgs(argv);
  if (plan.help || plan.version || plan.printCapabilities) return plan;
  validatePlan(plan);
  await checkSeccompPolicy(plan);
  return plan;
}

async function mountLocal(plan: LaunchPlan): Promise<{ fd: number; unmount: () => void }> {
  // Loaded only when used: the /dev/fuse transport module belongs to another part.
  const { mountFuse, unmountIfMounted } = await import('../fuse-dev/mount.js');
  const mountpoint = plan.mountpoint as string;
  const fd = mountFuse({ mountpoint, sourceName: plan.config.sharedDir, readOnly: plan.config.fs.readonly });
  log.debug(`mounted /dev/fuse (fd ${fd}) at ${mountpoint}`);
  return {
    fd,
    unmount: () => {
      try {
        if (unmountIfMounted(mountpoint)) log.debug(`unmounted ${mountpoint}`);
      } catch (err) {
        log.error(`could not unmount ${mountpoint}: ${err instanceof Error ? err.message : String(err)}`);
      }
    },
  };
}

/** "syslog (103)", or "103" when the number is not in our tables. */
async function syscallLabel(nr: number, auditArch: number): Promise<string> {
  const { archByAudit } = await import('../sandbox/seccomp/arch.js');
  const name = archByAudit(auditArch)?.byNumber.get(nr);
  return name === undefined ? String(nr) : `${name} (${nr})`;
}

/** Run vfs-launch with these arguments; resolves to the process exit code. */
export async function runLauncher(argv: readonly string[], io: LauncherIo = process): Promise<number> {
  let plan: LaunchPlan;
  try {
    plan = await planLaunch(argv);
  } catch (err) {
    if (err instanceof UsageError) {
      io.stderr.write(`vfs-launch: ${err.message}\n`);
      return EXIT_USAGE;
    }
    throw err;
  }
  if (plan.help) {
    io.stdout.write(launcherHelp(daemonHelp()));
    return 0;
  }
  if (plan.version) {
    io.stdout.write('vfs-launch 0.1.0\n');
    return 0;
  }
  if (plan.printCapabilities) {
    io.stdout.write(JSON.stringify(capabilitiesDocument(), null, 2) + '\n');
    return 0;
  }
  const cfg = plan.config;
  if (cfg.logLevel !== 'off') setLogLevel(cfg.logLevel as LogLevel);

  // fds 3.. of the daemon: the /dev/fuse fd, libvirt's listening socket.
  const extraFds: ('ignore' | number)[] = [];
  let local: { fd: number; unmount: () => void } | undefined;
  try {
    if (plan.mountpoint !== undefined) {
      local = await mountLocal(plan);
      extraFds[FUSE_FD_IN_DAEMON - 3] = local.fd;
    }
  } catch (err) {
    io.stderr.write(`vfs-launch: --mountpoint: ${err instanceof Error ? err.message : String(err)}\n`);
    return 1;
  }
  if (cfg.listenFd !== undefined) {
    // Keep libvirt's fd at the same number in the daemon.
    for (let i = extraFds.length; i < cfg.listenFd - 3; i++) extraFds[i] = 'ignore';
    if (cfg.listenFd >= 3) extraFds[cfg.listenFd - 3] = cfg.listenFd;
  }

  const cmd = daemonCommand({ config: cfg, daemonArgs: plan.daemonArgs, uidMap: plan.uidMap, gidMap: plan.gidMap, daemonEntry: process.env.VFS_DAEMON_ENTRY });
  log.debug(`spawning: ${cmd.file} ${cmd.args.join(' ')}`);
  const child = execa(cmd.file, cmd.args, {
    // execa's types allow only 3..9 as inherited fds; at run time any fd number works.
    stdio: ['inherit', 'inherit', 'inherit', ...extraFds] as unknown as ExecaOptions['stdio'], env: cmd.env, reject: false, stripFinalNewline: false, forceKillAfterDelay: false });
  if (local !== undefined) {
    // The daemon holds its own copy now; ours would keep the connection alive after it exits.
    const { closeSync } = await import('node:fs');
    closeSync(local.fd);
  }

  const forward = (sig: NodeJS.Signals, attempt = 0): void => {
    if (child.pid === undefined || child.exitCode !== null) return;
    const target = findDaemonPid(child.pid, cfg.sandbox);
    if (target === undefined) {
      // Not started yet (namespace mode): try again shortly, then give up on the whole tree.
      if (attempt < 40) setTimeout(() => forward(sig, attempt + 1), 50);
      else child.kill('SIGKILL');
      return;
    }
    log.debug(`forwarding ${sig} to daemon ${target}`);
    try {
      process.kill(target, sig);
    } catch {
      // already gone
    }
  };
  // Remember the daemon's pid while it lives: after a seccomp kill it names the audit record.
  let daemonPid: number | undefined;
  const findPid = (attempt = 0): void => {
    if (child.pid === undefined || child.exitCode !== null) return;
    daemonPid = findDaemonPid(child.pid, cfg.sandbox);
    if (daemonPid === undefined && attempt < 600) setTimeout(() => findPid(attempt + 1), 50).unref();
  };
  findPid();
  const handlers = FORWARDED_SIGNALS.map((sig) => {
    const h = (): void => forward(sig);
    process.on(sig, h);
    return [sig, h] as const;
  });

  const result = await child;
  // The daemon is gone: a signal now (a supervisor's SIGTERM racing with the daemon's own
  // exit) must neither reach a reused pid nor kill us before we report the daemon's status.
  const ignore = (): void => undefined;
  for (const [sig, h] of handlers) {
    process.on(sig, ignore);
    process.off(sig, h);
  }
  local?.unmount();
  let end = describeDaemonEnd(result.exitCode, result.signal, cfg.sandbox === 'namespace', cfg.seccomp);
  if (end.signal === 'SIGSYS' && daemonPid !== undefined) {
    const kill = await findSeccompKill(daemonPid);
    if (kill !== undefined) end = describeDaemonEnd(result.exitCode, result.signal, cfg.sandbox === 'namespace', cfg.seccomp, await syscallLabel(kill.syscall, kill.arch));
  }
  if (end.message !== undefined) io.stderr.write(`vfs-launch: ${end.message}\n`);
  return end.exitCode;
}
