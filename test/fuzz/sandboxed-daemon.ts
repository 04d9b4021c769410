// The daemon as users run it, for the fuzz tests: `vfs-launch --shared-dir S --sandbox
// namespace --seccomp kill -- --socket-path P ...`, so every request meets the real
// seccomp filter (a test of the daemon without it cannot find a syscall the policy lacks).
// Output goes to a log file, not a pipe: the fuzz loop blocks in epoll_wait for minutes and
// a full pipe would stall the daemon's warnings and with them the daemon. Also here: the
// transport that carries one request at a time through the vhost-user frontend and turns a
// daemon that dies or stops answering into a typed error naming the daemon's last words.
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { launcherCommand, daemonCommand, REPO } from '../entry-points.js';
import { findDaemon, procStatus } from '../sandbox-helpers.js';
import { VirtioFsFrontend, HIPRIO, REQUEST, type FuseReply, type FrontendOptions } from '../frontend/virtio-fs.js';

export class DaemonDied extends Error {
  constructor(readonly pid: number, readonly lastWords: string) {
    super(`the sandboxed daemon (pid ${pid}) died: ${lastWords}`);
    this.name = 'DaemonDied';
    // Where the test noticed says nothing about why the daemon died: the message is all.
    this.stack = `${this.name}: ${this.message}`;
  }
}

export class DaemonHung extends Error {
  constructor(readonly pid: number, readonly ms: number) {
    super(`the sandboxed daemon (pid ${pid}) gave no completion within ${ms} ms`);
    this.name = 'DaemonHung';
    this.stack = `${this.name}: ${this.message}`;
  }
}

export class LaunchError extends Error {
  constructor(what: string, readonly log: string) {
    super(`${what}; launcher log:\n${log}`);
    this.name = 'LaunchError';
  }
}

export interface SandboxedDaemon {
  launcher: ChildProcess;
  /** The daemon process itself (a descendant of the launcher, in its own pid namespace). */
  pid: number;
  sock: string;
  /** Resolves when the launcher ends. */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  alive(): boolean;
  /** Open fds of the daemon, counted from outside. */
  fdCount(): number;
  /** What each open fd of the daemon refers to (readlink of /proc/PID/fd/N), by fd number. */
  fdTargets(): Map<number, string>;
  log(): string;
  /** SIGTERM the launcher (it forwards to the daemon) and wait; the launcher's exit code. */
  stop(): Promise<number | null>;
  /** Remove the socket dir. */
  cleanup(): void;
}

/** Process state from /proc/PID/stat ('' when the process is gone). */
function procState(pid: number): string {
  try {
    const s = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return s.slice(s.lastIndexOf(')') + 2, s.lastIndexOf(')') + 3);
  } catch {
    return '';
  }
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Start the sandboxed daemon on `share`; resolves once it listens with its filter installed. */
export async function launchSandboxed(share: string, daemonArgs: readonly string[], timeoutMs = 60_000): Promise<SandboxedDaemon> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vfs-fuzz-sock-'));
  const sock = path.join(dir, 'vhost.sock');
  const logPath = path.join(dir, 'launcher.log');
  const logFd = fs.openSync(logPath, 'w');
  const cmd = launcherCommand();
  const env: Record<string, string | undefined> = { ...process.env, HOME: os.tmpdir() };
  delete env.VFS_DAEMON_ENTRY;
  const launcher = spawn(cmd[0] ?? process.execPath,
    [...cmd.slice(1), '--shared-dir', share, '--sandbox', 'namespace', '--seccomp', 'kill', '--', '--socket-path', sock, ...daemonArgs],
    { cwd: REPO, env, stdio: ['ignore', logFd, logFd] });
  fs.closeSync(logFd);
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    launcher.on('exit', (code, signal) => resolve({ code, signal }));
  });
  const log = (): string => (fs.existsSync(logPath) ? fs.readFileSync(logPath, 'utf8') : '');
  const entry = daemonCommand().at(-1) ?? '';
  const deadline = Date.now() + timeoutMs;
  let pid: number | undefined;
  for (;;) {
    if (launcher.exitCode !== null || launcher.signalCode !== null) throw new LaunchError(`vfs-launch exited (${launcher.exitCode ?? launcher.signalCode}) before serving`, log());
    if (Date.now() > deadline) {
      launcher.kill('SIGKILL');
      throw new LaunchError(`the daemon did not start within ${timeoutMs} ms`, log());
    }
    if (pid === undefined && launcher.pid !== undefined) pid = findDaemon(launcher.pid, entry);
    if (pid !== undefined && fs.existsSync(sock)) {
      try {
        // Seccomp 2: the filter is on (installed with TSYNC, so on every thread).
        if (procStatus(pid).Seccomp === '2') break;
      } catch {
        // raced with an exit; the next round sees it
      }
    }
    await sleep(50);
  }
  const daemonPid = pid;
  return {
    launcher, pid: daemonPid, sock, exited, log,
    alive: () => {
      const st = procState(daemonPid);
      return st !== '' && st !== 'Z' && st !== 'X';
    },
    fdCount: () => fs.readdirSync(`/proc/${daemonPid}/fd`).length,
    fdTargets: () => {
      const out = new Map<number, string>();
      for (const n of fs.readdirSync(`/proc/${daemonPid}/fd`)) {
        try {
          out.set(Number(n), fs.readlinkSync(`/proc/${daemonPid}/fd/${n}`));
        } catch {
          // closed between readdir and readlink
        }
      }
      return out;
    },
    stop: async () => {
      if (launcher.exitCode === null && launcher.signalCode === null) launcher.kill('SIGTERM');
      const timer = setTimeout(() => launcher.kill('SIGKILL'), 15_000);
      const r = await exited;
      clearTimeout(timer);
      return r.code;
    },
    cleanup: () => fs.rmSync(dir, { recursive: true, force: true }),
  };
}

/** The launcher's account of the daemon's end (it names the syscall of a seccomp kill), or the log's tail. */
export async function lastWords(d: SandboxedDaemon, waitMs = 10_000): Promise<string> {
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([d.exited, new Promise((r) => (timer = setTimeout(r, waitMs)))]);
  clearTimeout(timer);
  const lines = d.log().trim().split('\n');
  const end = lines.filter((l) => /daemon (killed|exited)|SIGSYS|seccomp/i.test(l));
  return (end.length > 0 ? end : lines.slice(-5)).join('\n');
}

/**
 * One request at a time through the frontend. While it waits for the completion it looks at
 * the daemon every `pollMs`: dead -> DaemonDied, no completion within `hangMs` -> DaemonHung.
 */
export class OneByOne {
  constructor(readonly fe: VirtioFsFrontend, readonly d: SandboxedDaemon, readonly hangMs = 15_000, readonly pollMs = 100) {}

  call(parts: readonly Buffer[], replyLens: readonly number[], queue = REQUEST): FuseReply | undefined {
    if (!this.d.alive()) throw new DaemonDied(this.d.pid, 'dead before the request was sent');
    this.fe.enqueue(parts, replyLens, queue);
    this.fe.queues[queue].publish();
    const deadline = Date.now() + this.hangMs;
    for (;;) {
      try {
        const done = this.fe.complete(queue, this.pollMs);
        if (done.length !== 1) throw new Error(`one request in flight, ${done.length} completions`);
        return done[0].reply;
      } catch (err) {
        if (!(err instanceof Error) || !err.message.includes('no completion within')) throw err;
      }
      if (!this.d.alive()) throw new DaemonDied(this.d.pid, 'died while serving the request');
      if (Date.now() > deadline) throw new DaemonHung(this.d.pid, this.hangMs);
    }
  }

  /**
   * The Serve of the stateful fuzzer: FORGET and BATCH_FORGET go on the hiprio queue
   * without writable descriptors, as the Linux driver sends them; everything else on the
   * request queue, the reply copied back into `writable`.
   */
  serve(readable: Buffer[], writable: Buffer[], op: number, forgetOps: ReadonlySet<number>): number {
    if (forgetOps.has(op)) {
      const r = this.call(readable, [], HIPRIO);
      return r === undefined ? 0 : r.usedLen;
    }
    const r = this.call(readable, writable.map((w) => w.length));
    if (r === undefined) return 0;
    const raw = Buffer.concat([headerOf(r), r.body]);
    let at = 0;
    for (const w of writable) {
      if (at >= raw.length) break;
      at += raw.copy(w, 0, at);
    }
    return r.usedLen;
  }
}

/** The out header bytes of a reply as the device wrote them. */
function headerOf(r: FuseReply): Buffer {
  const h = Buffer.alloc(16);
  h.writeUInt32LE(r.header.len >>> 0, 0);
  h.writeInt32LE(r.header.error, 4);
  h.writeBigUInt64LE(BigInt.asUintN(64, r.header.unique), 8);
  return h;
}

export interface SandboxedSession {
  d: SandboxedDaemon;
  fe: VirtioFsFrontend;
  io: OneByOne;
  /** Close the frontend now (teardown then leaves it alone). */
  closeFrontend(): void;
}

/**
 * launchSandboxed() plus a connected frontend and a OneByOne over it, all torn down with
 * the test (frontend closed, daemon stopped, socket dir removed) whatever way it ends.
 */
export async function connectSandboxed(t: { teardown(fn: () => void | Promise<void>): void }, share: string,
  daemonArgs: readonly string[], frontend: Partial<FrontendOptions> = {}): Promise<SandboxedSession> {
  const d = await launchSandboxed(share, daemonArgs);
  t.teardown(async () => {
    await d.stop();
    d.cleanup();
  });
  const fe = VirtioFsFrontend.open({ ...frontend, socketPath: d.sock });
  let closed = false;
  const closeFrontend = (): void => {
    if (closed) return;
    closed = true;
    fe.close();
  };
  t.teardown(closeFrontend);
  return { d, fe, io: new OneByOne(fe, d), closeFrontend };
}
