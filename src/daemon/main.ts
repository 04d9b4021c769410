#!/usr/bin/env node
// The daemon's entry point. It runs the process model of DESIGN.md in order:
// parse options; open what lives outside the shared dir (the listening socket, the
// /dev/fuse fd, the seccomp policy); start the device worker (before the sandbox,
// see worker.ts); enter the sandbox and drop privileges on this thread; let the worker
// drop its own (capabilities are per-thread); install seccomp with TSYNC over every
// thread; then let the worker serve. This thread stays in Node's event loop so that
// SIGTERM/SIGINT become a clean stop.
import { Worker } from 'node:worker_threads';
import { fileURLToPath } from 'node:url';
import { parseDaemonArgs, daemonHelp, UsageError } from './options.js';
import type { DaemonConfig } from './options.js';
import type { FromMain, ToMain, TransportSpec } from './worker-messages.js';
import { logger, setLogLevel, setLogSink, useSyslog, writeStderr } from '../log.js';
import { connectSyslog, sendSyslog } from '../sys/syslog-calls.js';
import { closeFd, eventfd, eventfdWrite, pipeCloexec } from '../sys/event-calls.js';
import { listenUnix } from '../sys/socket-calls.js';
import { mountFuse } from '../fuse-dev/mount.js';
import { spawn } from 'node:child_process';
import { enterSandbox, dropPrivileges, resolveCapabilities } from '../sandbox/index.js';
import { prepareSeccomp, installSeccomp } from '../sandbox/seccomp/index.js';
import { makeForbiddenSyscall } from './test-hooks.js';
import { fileHandleProblem } from '../fs/file-handle-probe.js';
import { RLIMIT_NOFILE, getrlimit } from '../sys/process-calls.js';
import { capabilitiesDocument } from './capabilities.js';

const log = logger('daemon');

/** Largest WRITE a /dev/fuse mount carries in one request (FUSE_MAX_MAX_PAGES * 4 KiB). */
const FUSE_DEV_MAX_WRITE = 1024 * 1024;

function startWorker(): Promise<Worker> {
  // Run from source (tsx), the worker is worker.ts and needs tsx's loader registered in its
  // own thread (execArgv's --import does not reach a worker's entry); from dist it is worker.js.
  const fromSource = fileURLToPath(import.meta.url).endsWith('.ts');
  const entry = new URL(fromSource ? './worker.ts' : './worker.js', import.meta.url);
  const worker = fromSource
    ? new Worker(
      `import(${JSON.stringify(import.meta.resolve('tsx/esm/api'))}).then((m) => { m.register(); return import(${JSON.stringify(entry.href)}); })`,
      { eval: true },
    )
    : new Worker(entry);
  return new Promise((resolve, reject) => {
    const onMessage = (m: ToMain): void => {
      if (m.type === 'ready') {
        worker.off('message', onMessage);
        resolve(worker);
      }
    };
    worker.on('message', onMessage);
    worker.once('error', reject);
  });
}

function request(worker: Worker, msg: FromMain, expect: ToMain['type']): Promise<void> {
  return new Promise((resolve, reject) => {
    const onMessage = (m: ToMain): void => {
      if (m.type === expect) {
        worker.off('message', onMessage);
        resolve();
      } else if (m.type === 'failed') {
        worker.off('message', onMessage);
        reject(new Error(m.message));
      }
    };
    worker.on('message', onMessage);
    worker.postMessage(msg);
  });
}

/** Open the transport endpoint while the host's file system is still visible. */
function openTransport(cfg: DaemonConfig): TransportSpec {
  if (cfg.fuseFd !== undefined) return { kind: 'fuse', devFd: cfg.fuseFd, maxWrite: FUSE_DEV_MAX_WRITE };
  if (cfg.mountpoint !== undefined) {
    const devFd = mountFuse({ mountpoint: cfg.mountpoint, sourceName: cfg.sharedDir, allowOther: true, readOnly: cfg.fs.readonly });
    log.info(`mounted ${cfg.sharedDir} on ${cfg.mountpoint}`);
    return { kind: 'fuse', devFd, maxWrite: FUSE_DEV_MAX_WRITE };
  }
  if (cfg.listenFd !== undefined) return { kind: 'vhost', listenFd: cfg.listenFd, tag: cfg.tag };
  const socketPath = cfg.socketPath as string;
  const listenFd = listenUnix(socketPath, { group: cfg.socketGroup });
  log.info(`listening on ${socketPath}`);
  return { kind: 'vhost', listenFd, tag: cfg.tag };
}

async function run(argv: string[]): Promise<number> {
  if (argv.includes('--help') || argv.includes('-h')) {
    process.stdout.write(daemonHelp());
    return 0;
  }
  const cfg = parseDaemonArgs(argv);
  if (cfg.printCapabilities) {
    process.stdout.write(JSON.stringify(capabilitiesDocument(), null, 2) + '\n');
    return 0;
  }
  if (cfg.logLevel === 'off') setLogSink(() => undefined);
  else setLogLevel(cfg.logLevel);
  for (const note of cfg.notes) log.warn(note);
  let syslogFd: number | undefined;
  if (cfg.syslog) {
    const fd = connectSyslog();
    useSyslog((msg) => sendSyslog(fd, msg));
    syslogFd = fd;
  }

  // Signals are caught from here on: one that arrives before the device loop runs is
  // kept in the stop eventfd, and the loop returns at once when it starts.
  const stopFd = eventfd();
  let stopping = false;
  const stop = (sig: NodeJS.Signals): void => {
    if (!stopping) log.info(`${sig}: stopping`);
    stopping = true;
    eventfdWrite(stopFd);
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  process.on('SIGHUP', stop);

  const capabilities = resolveCapabilities(cfg.modcaps);
  // open_by_handle_at needs CAP_DAC_READ_SEARCH (as virtiofsd, which adds it for handles).
  if (cfg.fs.inodeFileHandles !== 'never' && !capabilities.includes('dac_read_search')) capabilities.push('dac_read_search');
  const seccomp = prepareSeccomp(cfg.seccomp, cfg.seccompPolicies);
  const transport = openTransport(cfg);
  if (cfg.mountpoint !== undefined) await startUnmountWatcher(cfg.mountpoint);
  const worker = await startWorker();

  const sandbox = enterSandbox({ mode: cfg.sandbox, sharedDir: cfg.sharedDir });
  dropPrivileges({ rlimitNofile: cfg.rlimitNofile, capabilities });
  // The inode table keeps its fds under this limit (src/fs/inodes.ts: the fd budget).
  cfg.fs.fdLimit = Number(getrlimit(RLIMIT_NOFILE).soft);
  if (cfg.fs.inodeFileHandles !== 'never') {
    const problem = fileHandleProblem(sandbox.rootFd);
    if (problem !== undefined && cfg.fs.inodeFileHandles === 'mandatory') {
      throw new Error(`--inode-file-handles=mandatory: file handles cannot be used: ${problem}; use --inode-file-handles=never or prefer`);
    }
    if (problem !== undefined) {
      log.warn(`--inode-file-handles=prefer: falling back to O_PATH fds: ${problem}`);
      cfg.fs.inodeFileHandles = 'never';
    }
  }
  log.info(`inodes: ${cfg.fs.inodeFileHandles === 'never' ? 'O_PATH fds' : 'file handles'}, RLIMIT_NOFILE ${cfg.fs.fdLimit}`);
  await request(worker, { type: 'drop-privileges', capabilities, logLevel: cfg.logLevel, syslogFd }, 'privileges-dropped');
  installSeccomp(seccomp);
  if (cfg.testForbiddenSyscall) makeForbiddenSyscall();

  return await new Promise<number>((resolve) => {
    worker.on('message', (m: ToMain) => {
      if (m.type === 'exit') resolve(m.code);
      if (m.type === 'failed') resolve(1);
    });
    worker.on('error', (err) => {
      log.error(`device thread failed: ${err.message}`);
      resolve(1);
    });
    worker.postMessage({
      type: 'serve',
      rootFd: sandbox.rootFd,
      procSelfFd: sandbox.procSelfFd,
      fs: cfg.fs,
      transport,
      stopFd,
    } satisfies FromMain);
  });
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
