// vfs-launch's main flow: parse, validate (nothing created or spawned on a usage error, exit
// 2), compile the seccomp policy, optionally mount /dev/fuse in the host namespace, then
// replace this process with the daemon's start-up chain (spawn.ts): no Node process stays
// behind for the VM. The compiled filter travels to the daemon through a pipe, so the
// daemon neither loads the policy compiler nor compiles again. How the daemon ended is
// reported by the waiter and the epilogue (epilogue.ts).
import fs from 'node:fs';
import type { Writable } from 'node:stream';
import { capabilitiesDocument } from '../daemon/capabilities.js';
import { daemonHelp } from '../daemon/options.js';
import type { LogLevel } from '../log.js';
import { logger, setLogLevel } from '../log.js';
import type { LaunchPlan } from './args.js';
import { UsageError, launcherHelp, parseLaunchArgs } from './args.js';
import { daemonCommand } from './spawn.js';
import { execve, keepAcrossExec } from '../sys/exec-calls.js';
import { listenUnix } from '../sys/socket-calls.js';
import { validatePlan } from './validate.js';
import { lockPidFile } from './pid-file.js';

const log = logger('launcher');

export const EXIT_USAGE = 2;

export interface LauncherIo {
  stdout: Writable;
  stderr: Writable;
}

/** Largest filter the pipe holds without a reader (the kernel's BPF_MAXINSNS is 4096 x 8 bytes = 32 KiB). */
const PIPE_CAPACITY = 64 * 1024;

async function checkSeccompPolicy(plan: LaunchPlan): Promise<void> {
  const cfg = plan.config;
  if (cfg.seccomp === 'none' && cfg.seccompPolicies.length === 0) return;
  try {
    // Loaded only when needed: compiling the policy module's syscall tables costs startup time.
    const { prepareSeccomp } = await import('../sandbox/seccomp/index.js');
    plan.seccompProgram = prepareSeccomp(cfg.seccomp, cfg.seccompPolicies).filter?.bytes;
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

async function mountLocal(plan: LaunchPlan): Promise<number> {
  // Loaded only when used: the /dev/fuse transport module belongs to another part.
  const { mountFuse } = await import('../fuse-dev/mount.js');
  const mountpoint = plan.mountpoint as string;
  const fd = mountFuse({ mountpoint, sourceName: plan.config.sharedDir, readOnly: plan.config.fs.readonly });
  log.debug(`mounted /dev/fuse (fd ${fd}) at ${mountpoint}`);
  return fd;
}

/** A pipe holding `program`, its read end left open across exec; returns that fd. */
async function filterPipe(program: Buffer): Promise<number> {
  if (program.length > PIPE_CAPACITY) throw new Error(`seccomp filter of ${program.length} bytes does not fit a pipe`);
  const { pipeCloexec } = await import('../sys/event-calls.js');
  const [readEnd, writeEnd] = pipeCloexec();
  let off = 0;
  while (off < program.length) off += fs.writeSync(writeEnd, program, off);
  fs.closeSync(writeEnd);
  keepAcrossExec(readEnd);
  return readEnd;
}

/** Run vfs-launch with these arguments; resolves to the exit code, or execs the daemon and never resolves. */
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

  const daemonArgs = [...plan.daemonArgs];
  // Node marks even stdin, stdout and stderr close-on-exec: they are the daemon's too.
  const keep: number[] = [0, 1, 2];
  try {
    if (plan.mountpoint !== undefined) {
      const fd = await mountLocal(plan);
      // The fd Node gave us is the daemon's: say which it is (args.ts put a placeholder).
      const i = daemonArgs.indexOf('--fuse-fd');
      daemonArgs[i + 1] = String(fd);
      keep.push(fd);
    }
  } catch (err) {
    io.stderr.write(`vfs-launch: --mountpoint: ${err instanceof Error ? err.message : String(err)}\n`);
    return 1;
  }
  if (cfg.listenFd !== undefined) keep.push(cfg.listenFd);
  let pidFile: string | undefined;
  if (cfg.socketPath !== undefined) {
    // Locked before the socket is touched: a second daemon on this path stops here (exit 1,
    // as virtiofsd) instead of replacing the socket the first one serves.
    try {
      const pf = lockPidFile(cfg.socketPath);
      daemonArgs.push('--pid-file-fd', String(pf.fd));
      keep.push(pf.fd);
      pidFile = pf.path;
    } catch (err) {
      io.stderr.write(`vfs-launch: --socket-path: ${err instanceof Error ? err.message : String(err)}\n`);
      return 1;
    }
    // Bound and listening here, before the daemon's Node even starts: a VMM may connect from
    // now on (its messages wait in the socket until the daemon accepts), which takes the
    // daemon's start-up off the path libvirt waits on. The daemon gets the fd.
    try {
      const fd = listenUnix(cfg.socketPath, { group: cfg.socketGroup });
      log.debug(`listening on ${cfg.socketPath} (fd ${fd}), for the daemon`);
      daemonArgs.push('--listening-fd', String(fd));
      keep.push(fd);
    } catch (err) {
      io.stderr.write(`vfs-launch: --socket-path: ${err instanceof Error ? err.message : String(err)}\n`);
      return 1;
    }
  }
  if (plan.seccompProgram !== undefined) daemonArgs.push('--seccomp-bpf-fd', String(await filterPipe(plan.seccompProgram)));

  const cmd = daemonCommand({
    config: cfg, daemonArgs, uidMap: plan.uidMap, gidMap: plan.gidMap, daemonEntry: process.env.VFS_DAEMON_ENTRY, unmount: plan.mountpoint, pidFile,
  });
  log.debug(`exec: ${cmd.file} (waiter) -> ${cmd.daemon.join(' ')}`);
  try {
    for (const fd of keep) keepAcrossExec(fd);
    execve(cmd.file, cmd.argv, cmd.env);
  } catch (err) {
    io.stderr.write(`vfs-launch: cannot start the daemon: ${err instanceof Error ? err.message : String(err)}\n`);
    if (plan.mountpoint !== undefined) {
      const { unmountIfMounted } = await import('../fuse-dev/mount.js');
      unmountIfMounted(plan.mountpoint);
    }
    return 1;
  }
}
