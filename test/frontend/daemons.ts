// Start a vhost-user-fs backend for the frontend to talk to: our daemon (from source) or
// the reference virtiofsd (fetched by scripts/fetch-virtiofsd.sh, or $VIRTIOFSD). The
// daemon's output goes to a log file, not a pipe: the tests block in epoll_wait for long
// stretches and a full pipe would stall the daemon.
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { daemonCommand } from '../entry-points.js';

export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

export type BackendKind = 'vfs' | 'virtiofsd';

export interface Daemon {
  kind: BackendKind;
  proc: ChildProcess;
  pid: number;
  socketPath: string;
  logPath: string;
  /** Resolves with the exit code (or 128+signal) when the process ends. */
  exited: Promise<number>;
  exitCode: number | undefined;
  log(): string;
  stop(): Promise<number>;
}

let virtiofsdPath: string | undefined;

/** Path of the reference virtiofsd: $VIRTIOFSD, else what scripts/fetch-virtiofsd.sh prints. */
export function findVirtiofsd(): string {
  if (virtiofsdPath !== undefined) return virtiofsdPath;
  const env = process.env.VIRTIOFSD;
  if (env !== undefined && env !== '') virtiofsdPath = env;
  else {
    const out = execFileSync(path.join(REPO, 'scripts/fetch-virtiofsd.sh'), { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] });
    virtiofsdPath = out.trim().split('\n').pop() ?? '';
  }
  return virtiofsdPath;
}

/**
 * How to start our daemon (test/entry-points.ts: dist/ when fresh, else the sources).
 * VFS_TEST_DAEMON=entry: the stand-in in backend-entry.ts.
 */
export function vfsDaemonCommand(): string[] {
  if (process.env.VFS_TEST_DAEMON === 'entry') return [process.execPath, '--import', 'tsx', path.join(REPO, 'test/frontend/backend-entry.ts')];
  return daemonCommand();
}

export interface StartOptions {
  sharedDir: string;
  extraArgs?: string[];
  socketPath?: string;
  timeoutMs?: number;
  /** Program and leading arguments that start our daemon (default: vfsDaemonCommand()). */
  vfsCommand?: string[];
  /** --sandbox for our daemon (default none; namespace needs vfsCommand to be vfs-launch). */
  sandbox?: 'none' | 'chroot' | 'namespace';
}

export function tempSocketPath(tag: string): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `vfs-sock-${tag}-`));
  return path.join(dir, 'vhost.sock');
}

export async function startDaemon(kind: BackendKind, o: StartOptions): Promise<Daemon> {
  const socketPath = o.socketPath ?? tempSocketPath(kind);
  const logPath = `${socketPath}.${kind}.log`;
  const logFd = fs.openSync(logPath, 'w');
  const common = ['--shared-dir', o.sharedDir, '--socket-path', socketPath, '--sandbox', kind === 'vfs' ? (o.sandbox ?? 'none') : 'none', ...(o.extraArgs ?? [])];
  // Extra daemon arguments for a whole run (e.g. VFS_TEST_DAEMON_ARGS="--seccomp none" while debugging).
  const envArgs = kind === 'vfs' ? (process.env.VFS_TEST_DAEMON_ARGS ?? '').split(' ').filter((a) => a !== '') : [];
  common.push(...envArgs);
  const vfsCmd = o.vfsCommand ?? vfsDaemonCommand();
  const proc =
    kind === 'vfs'
      ? spawn(vfsCmd[0], [...vfsCmd.slice(1), ...common], { cwd: REPO, stdio: ['ignore', logFd, logFd] })
      : spawn(findVirtiofsd(), [...common, '--log-level', 'error'], { stdio: ['ignore', logFd, logFd] });
  fs.closeSync(logFd);
  if (proc.pid === undefined) throw new Error(`could not start ${kind}`);
  const d: Daemon = {
    kind,
    proc,
    pid: proc.pid,
    socketPath,
    logPath,
    exitCode: undefined,
    exited: new Promise<number>((resolve) => {
      proc.on('exit', (code, sig) => {
        d.exitCode = code ?? 128 + (sig !== null ? (os.constants.signals[sig] ?? 0) : 0);
        resolve(d.exitCode);
      });
    }),
    log: () => (fs.existsSync(logPath) ? fs.readFileSync(logPath, 'utf8') : ''),
    stop: async () => {
      if (d.exitCode === undefined) proc.kill('SIGTERM');
      const t = setTimeout(() => proc.kill('SIGKILL'), 5000);
      const c = await d.exited;
      clearTimeout(t);
      return c;
    },
  };
  const deadline = Date.now() + (o.timeoutMs ?? 20000);
  while (!fs.existsSync(socketPath)) {
    if (d.exitCode !== undefined) throw new Error(`${kind} exited with ${d.exitCode} before listening:\n${d.log()}`);
    if (Date.now() > deadline) {
      await d.stop();
      throw new Error(`${kind} did not create ${socketPath} in time:\n${d.log()}`);
    }
    await new Promise((r) => setTimeout(r, 20));
  }
  return d;
}

/** Wait for the process to exit, up to `ms`; returns the exit code or undefined if still running. */
export async function waitExit(d: Daemon, ms: number): Promise<number | undefined> {
  if (d.exitCode !== undefined) return d.exitCode;
  let timer: NodeJS.Timeout | undefined;
  const r = await Promise.race([d.exited, new Promise<undefined>((res) => (timer = setTimeout(() => res(undefined), ms)))]);
  clearTimeout(timer);
  return r;
}

/** utime+stime of a process in clock ticks, from /proc/PID/stat. */
export function cpuTicks(pid: number): number {
  const s = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
  return Number(f[11]) + Number(f[12]);
}

/** VmRSS of a process in KiB. */
export function rssKiB(pid: number): number {
  const m = /VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m === null ? 0 : Number(m[1]);
}
