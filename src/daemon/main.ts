#!/usr/bin/env node
// The daemon's entry point. It runs the process model of DESIGN.md in order, on one thread:
// parse options; catch the stop signals (stop-signals.ts); open what lives outside the
// shared dir (the listening socket, the /dev/fuse fd, the seccomp filter: from vfs-launch
// through an fd, or compiled here when started directly) and load every module serving
// needs (nothing outside the share can be loaded after pivot_root); enter the sandbox and
// drop privileges (capabilities are per thread, and this is the thread that serves); install
// seccomp with TSYNC over every thread; then run the device loop on this main thread.
// Why no worker thread: a worker isolate costs ~8 MB private and ~12 MB RSS per VM
// (bench/README.md, "Per-VM cost"), and the one thing the main thread did besides waiting
// was to turn SIGTERM/SIGINT/SIGHUP into a stop, which the loop now sees in its own epoll set.
import fs from 'node:fs';
import { parseDaemonArgs, daemonHelp, UsageError } from './options.js';
import type { DaemonConfig } from './options.js';
import { logger, setLogLevel, setLogSink, useSyslog, writeStderr } from '../log.js';
import { connectSyslog, sendSyslog } from '../sys/syslog-calls.js';
import { listenUnix } from '../sys/socket-calls.js';
import { enterSandbox, dropPrivileges, resolveCapabilities } from '../sandbox/index.js';
import { installFilter } from '../sandbox/seccomp/install.js';
import type { SeccompMode } from '../sandbox/seccomp/install.js';
import { RLIMIT_NOFILE, getrlimit } from '../sys/process-calls.js';
import { setUmask, unshareFsThread } from '../sys/cred-calls.js';
import { sigbusGuard, lastGuardError } from '../sys/sigbus-guard.js';
import { capabilitiesDocument } from './capabilities.js';
import { watchStopSignals } from './stop-signals.js';
import { threadsStarted } from './threads.js';
import { startQueueThreads } from './queue-thread-start.js';
import { MAX_WRITE } from '../vhost/device.js';
import { serve } from './serve.js';
import type { Transport } from './serve.js';

const log = logger('daemon');

/** Largest WRITE a /dev/fuse mount carries in one request (FUSE_MAX_MAX_PAGES * 4 KiB). */
const FUSE_DEV_MAX_WRITE = 1024 * 1024;

/** Open the transport endpoint while the host's file system is still visible. */
async function openTransport(cfg: DaemonConfig): Promise<Transport> {
  if (cfg.fuseFd !== undefined || cfg.mountpoint !== undefined) {
    // Loaded only for a /dev/fuse transport, and before the sandbox (nothing loads after it).
    const { runFuseDeviceLoop } = await import('../fuse-dev/fuse-loop.js');
    let devFd = cfg.fuseFd;
    if (devFd === undefined) {
      const { mountFuse } = await import('../fuse-dev/mount.js');
      devFd = mountFuse({ mountpoint: cfg.mountpoint as string, sourceName: cfg.sharedDir, allowOther: true, readOnly: cfg.fs.readonly });
      log.info(`mounted ${cfg.sharedDir} on ${cfg.mountpoint}`);
    }
    return { kind: 'fuse', devFd, maxWrite: FUSE_DEV_MAX_WRITE, run: runFuseDeviceLoop };
  }
  if (cfg.listenFd !== undefined) return { kind: 'vhost', listenFd: cfg.listenFd, tag: cfg.tag };
  const socketPath = cfg.socketPath as string;
  if (cfg.listeningFd !== undefined) {
    log.info(`listening on ${socketPath} (bound by vfs-launch, fd ${cfg.listeningFd})`);
    return { kind: 'vhost', listenFd: cfg.listeningFd, tag: cfg.tag };
  }
  const listenFd = listenUnix(socketPath, { group: cfg.socketGroup });
  log.info(`listening on ${socketPath}`);
  return { kind: 'vhost', listenFd, tag: cfg.tag };
}

/** The filter vfs-launch compiled and left in a pipe for us, read whole and closed. */
function readFilterFd(fd: number): Buffer {
  const chunks: Buffer[] = [];
  const buf = Buffer.alloc(64 * 1024);
  for (;;) {
    const n = fs.readSync(fd, buf, 0, buf.length, null);
    if (n === 0) break;
    chunks.push(Buffer.from(buf.subarray(0, n)));
  }
  fs.closeSync(fd);
  return Buffer.concat(chunks);
}

/** The seccomp program to install (undefined for --seccomp none) and the policy it came from. */
async function seccompProgram(cfg: DaemonConfig): Promise<{ mode: SeccompMode; program?: Buffer; from: string }> {
  if (cfg.seccompBpfFd !== undefined) {
    const program = readFilterFd(cfg.seccompBpfFd);
    return { mode: cfg.seccomp, program: cfg.seccomp === 'none' ? undefined : program, from: `compiled by vfs-launch (fd ${cfg.seccompBpfFd})` };
  }
  // Started directly: compile here (the compiler and the syscall tables load only then).
  const { prepareSeccomp } = await import('../sandbox/seccomp/index.js');
  const prepared = prepareSeccomp(cfg.seccomp, cfg.seccompPolicies);
  return { mode: cfg.seccomp, program: prepared.filter?.bytes, from: prepared.files.join(', ') };
}

async function run(argv: string[]): Promise<number> {
  if (argv.includes('--help') || argv.includes('-h')) {
    process.stdout.write(daemonHelp());
    return 0;
  }
  const cfg = parseDaemonArgs(argv);
  // The <socket>.pid lock is the waiter's to hold (launcher/pid-file.ts): not ours, and not
  // a host file to keep open inside the sandbox.
  if (cfg.pidFileFd !== undefined) fs.closeSync(cfg.pidFileFd);
  if (cfg.printCapabilities) {
    process.stdout.write(JSON.stringify(capabilitiesDocument(), null, 2) + '\n');
    return 0;
  }
  if (cfg.logLevel === 'off') setLogSink(() => undefined);
  else setLogLevel(cfg.logLevel);
  for (const note of cfg.notes) log.warn(note);
  if (cfg.syslog) {
    const fd = connectSyslog();
    useSyslog((msg) => sendSyslog(fd, msg));
  }

  // From here on a stop signal is kept: one that arrives before the loop runs makes it
  // return at once (checked below), one that arrives later wakes the loop's epoll_wait.
  const stop = await watchStopSignals(log);

  const capabilities = resolveCapabilities(cfg.modcaps);
  // open_by_handle_at needs CAP_DAC_READ_SEARCH (as virtiofsd, which adds it for handles).
  // A file-handles migration destination opens handles too (virtiofsd asks for
  // --modcaps=+dac_read_search there; the mode is set on both sides, so we add it).
  const handles = cfg.fs.inodeFileHandles !== 'never' || cfg.fs.migration.mode === 'file-handles';
  if (handles && !capabilities.includes('dac_read_search')) capabilities.push('dac_read_search');
  const seccomp = await seccompProgram(cfg);
  const transport = await openTransport(cfg);
  if (cfg.mountpoint !== undefined) await startUnmountWatcher(cfg.mountpoint);
  const probe = cfg.fs.inodeFileHandles !== 'never' ? (await import('../fs/file-handle-probe.js')).fileHandleProblem : undefined;
  const forbidden = cfg.testForbiddenSyscall ? (await import('./test-hooks.js')).makeForbiddenSyscall : undefined;
  // The SIGBUS guard for guest memory (sys/sigbus-guard.ts), before the sandbox and the filter.
  if (sigbusGuard() === undefined) log.debug(`no SIGBUS guard: ${lastGuardError()?.message ?? 'unknown'}`);

  // Queue threads load their code now, while the host's file system is still there; they
  // drop their own capabilities below and come under the filter with every thread.
  const queueThreads = cfg.queueThreads > 0 && transport.kind === 'vhost' ? await startQueueThreads(cfg.queueThreads, MAX_WRITE + 8192) : undefined;
  if (queueThreads !== undefined) log.info(`${cfg.queueThreads} queue thread(s) started: request queues 2..${cfg.queueThreads + 1} are served on threads of their own`);
  log.debug(`threads started (waited ${await threadsStarted()} ms)`);
  const sandbox = enterSandbox({ mode: cfg.sandbox, sharedDir: cfg.sharedDir });
  // rlimit, no_new_privs and the capability drop of the thread that serves (the only one
  // that ever runs our code); the other threads' bounding set was narrowed at exec (setpriv).
  dropPrivileges({ rlimitNofile: cfg.rlimitNofile, capabilities });
  queueThreads?.dropPrivileges(capabilities);
  // The inode table keeps its fds under this limit (src/fs/inodes.ts: the fd budget).
  cfg.fs.fdLimit = Number(getrlimit(RLIMIT_NOFILE).soft);
  if (probe !== undefined) {
    const problem = probe(sandbox.rootFd);
    if (problem !== undefined && cfg.fs.inodeFileHandles === 'mandatory') {
      throw new Error(`--inode-file-handles=mandatory: file handles cannot be used: ${problem}; use --inode-file-handles=never or prefer`);
    }
    if (problem !== undefined) {
      log.warn(`--inode-file-handles=prefer: falling back to O_PATH fds: ${problem}`);
      cfg.fs.inodeFileHandles = 'never';
    }
  }
  log.info(`inodes: ${cfg.fs.inodeFileHandles === 'never' ? 'O_PATH fds' : 'file handles'}, RLIMIT_NOFILE ${cfg.fs.fdLimit}`);
  // With DONT_MASK agreed (--posix-acl, or a migrated session that had it) each creation
  // sets the request's umask on this thread: first umask 0 for every thread (as
  // createFuseServer would), then a copy of the fs_struct for this one, so that the libuv
  // pool never runs under a guest's umask. After the sandbox: a chroot acts on the
  // fs_struct, which must still be the shared one then.
  setUmask(0);
  const unshared = unshareFsThread();
  if (unshared < 0) throw new Error(`unshare(CLONE_FS) of the serving thread failed (errno ${-unshared}); the daemon needs a umask of its own for --posix-acl`);
  installFilter(seccomp.mode, seccomp.program, seccomp.from);
  if (forbidden !== undefined) forbidden();

  if (stop.received() !== undefined) {
    queueThreads?.stop();
    return 0;
  }
  let code: number;
  try {
    code = serve({ rootFd: sandbox.rootFd, procSelfFd: sandbox.procSelfFd, fs: cfg.fs, transport, stopFd: stop.fd, queueThreads });
  } finally {
    queueThreads?.stop();
  }
  // Let the event loop run the signal handler that stopped us, so its line is logged: libuv
  // reads its signal pipe in the poll phase of the next turn, after this turn's immediates.
  for (let turn = 0; turn < 3 && stop.received() === undefined; turn++) await new Promise((r) => setImmediate(r));
  return code;
}

/**
 * Undo the daemon's own mount (--mountpoint, --sandbox none) whenever the daemon ends,
 * however it ends. The daemon itself cannot: by then it has dropped CAP_SYS_ADMIN and its
 * seccomp policy has no umount2, and a daemon killed by SIGSYS runs no code at all. So a
 * watcher is started now, while we may still exec: it blocks reading a pipe whose write
 * end only this process holds, and unmounts when the pipe closes at our exit (fusermount3's
 * auto_unmount works the same way). The pipe is ours, not a Node stream, because Node
 * closes a child's stdin when the child exits; and the watcher is detached (its shell
 * exits at once, before the sandbox) so that no SIGCHLD, and no wait4 the policy does not
 * allow, reaches us later.
 */
async function startUnmountWatcher(mountpoint: string): Promise<void> {
  const { spawn } = await import('node:child_process');
  const { closeFd, pipeCloexec } = await import('../sys/event-calls.js');
  const [readEnd, writeEnd] = pipeCloexec();
  const script = 'exec 3<&0; { read _ignored <&3; exec umount -l -- "$1"; } & exit 0';
  const shell = spawn('/bin/sh', ['-c', script, 'vfs-unmount', mountpoint], { stdio: [readEnd, 'ignore', 'inherit'] });
  await new Promise<void>((resolve, reject) => {
    shell.once('error', reject);
    shell.once('exit', () => resolve());
  });
  closeFd(readEnd);
  log.debug(`unmount watcher for ${mountpoint} holds the read end; write end fd ${writeEnd} stays open until exit`);
}

run(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err: unknown) => {
    if (err instanceof UsageError) {
      // Not process.stderr: on a full non-blocking pipe it queues, and process.exit drops the queue.
      writeStderr(`vfs-daemon: ${err.message}\n`);
      process.exit(2);
    }
    log.error(err instanceof Error ? err.message : String(err));
    process.exit(1);
  },
);
