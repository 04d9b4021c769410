// Shared scaffolding for the through-the-mount tests: a temp dir pair per test (shared
// dir + mountpoint, under a 0755 base so other uids can reach them), a server in its own
// process (never in the test's process: a synchronous syscall on the mount would then
// wait for itself), teardown that always unmounts, and a guard that lazily unmounts what
// dead test processes left behind.
import fs from 'node:fs';
import path from 'node:path';
import { spawn, spawnSync, type ChildProcess, type SpawnSyncReturns } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import type { ExecutionContext, TestFn } from 'ava';
import { isMountPoint, mountPoints } from '../src/fuse-dev/mount.js';
import { umount2, MNT_DETACH } from '../src/sys/mount-calls.js';
import { launcherCommand } from './entry-points.js';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const BASE_PREFIX = '/tmp/vfs-mt-';
export const PYTHON = '/usr/bin/python3';

/**
 * How the server is started: 'launch' = `vfs-launch --shared-dir D --mountpoint M
 * --sandbox none` from source (the product), 'serve' = test/mount-serve.ts (the core and
 * the transport without the daemon). VFS_MOUNT_DRIVER overrides; VFS_MOUNT_LAUNCH_ARGS
 * adds launcher options (space-separated).
 */
/** 'stub': test/mount-stub-serve.ts, the transport alone behind a scripted session. */
export type Driver = 'serve' | 'launch' | 'stub';
export const DRIVER: Driver = process.env.VFS_MOUNT_DRIVER === 'serve' ? 'serve' : 'launch';
const LAUNCH_ARGS = (process.env.VFS_MOUNT_LAUNCH_ARGS ?? '').split(' ').filter((a) => a !== '');

function lazyUnmount(dir: string): void {
  try {
    umount2(dir, MNT_DETACH);
  } catch {
    // already gone
  }
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Unmount mounts under /tmp/vfs-mt-<pid>-* whose test process <pid> is gone. */
export function unmountLeftovers(): void {
  for (const mp of mountPoints()) {
    if (!mp.startsWith(BASE_PREFIX)) continue;
    const pid = Number(mp.slice(BASE_PREFIX.length).split('-')[0]);
    if (Number.isInteger(pid) && pid > 0 && !pidAlive(pid)) lazyUnmount(mp);
  }
}
unmountLeftovers();

const live = new Set<Server>();
process.on('exit', () => {
  for (const s of live) {
    try {
      s.child.kill('SIGKILL');
    } catch {
      // gone
    }
    lazyUnmount(s.mnt);
  }
});

export interface Dirs {
  base: string;
  shared: string;
  mnt: string;
  /** A plain directory next to the share: the same operations run there give the expected result. */
  ref: string;
}

/** A fresh base dir (0755) holding shared/, mnt/ and ref/ (each 0755, root-owned). */
export function makeDirs(): Dirs {
  const base = fs.mkdtempSync(`${BASE_PREFIX}${process.pid}-`);
  fs.chmodSync(base, 0o755);
  const d = { base, shared: path.join(base, 'shared'), mnt: path.join(base, 'mnt'), ref: path.join(base, 'ref') };
  for (const p of [d.shared, d.mnt, d.ref]) fs.mkdirSync(p, { mode: 0o755 });
  fs.chmodSync(d.shared, 0o755);
  return d;
}

export interface Server extends Dirs {
  child: ChildProcess;
  /** Everything the server wrote on stderr so far. */
  stderr(): string;
  /** Resolves when the server process exits. */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** SIGTERM (default), wait for exit, then make sure nothing stays mounted. */
  stop(signal?: NodeJS.Signals): Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/** argv of the server for a shared dir and mountpoint, plus extra server options. */
export function serverCommand(shared: string, mnt: string, extra: readonly string[] = [], driver: Driver = DRIVER): string[] {
  if (driver === 'serve' || driver === 'stub') {
    return [process.execPath, '--import', 'tsx', path.join(ROOT, driver === 'serve' ? 'test/mount-serve.ts' : 'test/mount-stub-serve.ts'),
      '--shared-dir', shared, '--mountpoint', mnt, ...extra];
  }
  // --sandbox none unless the caller chose a mode (tests of the sandboxed daemon as users run it).
  const sandbox = extra.some((a) => a === '--sandbox' || a.startsWith('--sandbox=')) ? [] : ['--sandbox', 'none'];
  return [...launcherCommand(), '--shared-dir', shared, '--mountpoint', mnt, ...sandbox, ...LAUNCH_ARGS, ...extra];
}

/** Run the server to completion without waiting for a mount (for failure cases). */
export function runServerSync(argv: readonly string[], timeoutMs = 60_000): SpawnSyncReturns<string> {
  return spawnSync(argv[0], argv.slice(1), { cwd: ROOT, encoding: 'utf8', timeout: timeoutMs });
}

const MOUNT_TIMEOUT_MS = 120_000;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Start a server on a fresh dir pair and wait until the mount is there. */
export async function startServer(extra: readonly string[] = [], dirs: Dirs = makeDirs(),
  prepare?: (d: Dirs) => void, driver: Driver = DRIVER): Promise<Server> {
  prepare?.(dirs);
  const argv = serverCommand(dirs.shared, dirs.mnt, extra, driver);
  const child = spawn(argv[0], argv.slice(1), { cwd: ROOT, stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  child.stderr?.setEncoding('utf8');
  child.stderr?.on('data', (s: string) => { err += s; });
  let done = false;
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.on('exit', (code, signal) => { done = true; resolve({ code, signal }); });
  });
  const server: Server = {
    ...dirs,
    child,
    stderr: () => err,
    exited,
    async stop(signal: NodeJS.Signals = 'SIGTERM') {
      if (!done) child.kill(signal);
      const res = await Promise.race([exited, sleep(15_000).then(() => null)]);
      if (res === null) child.kill('SIGKILL');
      const out = await exited;
      if (isMountPoint(dirs.mnt)) lazyUnmount(dirs.mnt);
      live.delete(server);
      return out;
    },
  };
  live.add(server);
  // vfs-launch compiles the seccomp policy twice (launcher and daemon) before mounting:
  // seconds on an idle machine, much longer when the whole suite loads both cores.
  const deadline = Date.now() + MOUNT_TIMEOUT_MS;
  while (!isMountPoint(dirs.mnt)) {
    if (done) throw new Error(`server exited before mounting: ${err.trim()}`);
    if (Date.now() > deadline) {
      await server.stop('SIGKILL');
      throw new Error(`server did not mount within ${MOUNT_TIMEOUT_MS / 1000} s: ${err.trim()}`);
    }
    await sleep(20);
  }
  return server;
}

/** Start a server for one ava test; stopped, unmounted and removed in teardown, pass or fail. */
export async function mountFor(t: ExecutionContext, extra: readonly string[] = [],
  prepare?: (d: Dirs) => void, driver: Driver = DRIVER): Promise<Server> {
  const dirs = makeDirs();
  t.teardown(() => dispose(dirs));
  return startServer(extra, dirs, prepare, driver);
}

/** Stop a server (if any) and remove its dirs, making sure nothing stays mounted. */
async function dispose(dirs: Dirs): Promise<void> {
  const s = [...live].find((x) => x.base === dirs.base);
  if (s) await s.stop();
  if (isMountPoint(dirs.mnt)) lazyUnmount(dirs.mnt);
  fs.rmSync(dirs.base, { recursive: true, force: true });
}

/**
 * One server for a whole test file: mounted in test.before, stopped and removed in
 * test.after.always (so also when a test fails). Returns a getter for the server.
 */
export function useMount(test: TestFn, extra: readonly string[] = [], prepare?: (d: Dirs) => void): () => Server {
  let server: Server | undefined;
  let dirs: Dirs | undefined;
  test.before(async () => {
    dirs = makeDirs();
    server = await startServer(extra, dirs, prepare);
  });
  test.after.always(async () => {
    if (dirs) await dispose(dirs);
  });
  return () => {
    if (!server) throw new Error('mount not started');
    return server;
  };
}

export interface RunResult {
  status: number | null;
  stdout: string;
  stderr: string;
}

/** Run a program synchronously, optionally as another uid/gid (no supplementary groups). */
export function run(file: string, args: readonly string[], opts: { uid?: number; gid?: number; cwd?: string; input?: string } = {}): RunResult {
  const r = spawnSync(file, args, {
    encoding: 'utf8', uid: opts.uid, gid: opts.gid, cwd: opts.cwd ?? '/', input: opts.input, timeout: 60_000,
  });
  if (r.error) throw r.error;
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/**
 * Run a Python snippet (system python3, reachable by every uid). The snippet gets `args`
 * as sys.argv[1:] and usually prints JSON; errors are reported as "ERR <errno name>".
 */
export function py(code: string, args: readonly string[] = [], opts: { uid?: number; gid?: number } = {}): RunResult {
  const prelude = 'import os, sys, json, errno, ctypes, stat\n' +
    'def E(fn):\n' +
    '    try:\n' +
    '        r = fn()\n' +
    '        return "OK" if r is None else r\n' +
    '    except OSError as e:\n' +
    '        name = errno.errorcode.get(e.errno, str(e.errno))\n' +
    '        return "ERR " + ("EOPNOTSUPP" if name == "ENOTSUP" else name)\n';
  return run(PYTHON, ['-c', prelude + code, ...args], opts);
}

/** Parse the JSON a py() snippet printed; fail loudly with its stderr otherwise. */
export function pyJson<T>(code: string, args: readonly string[] = [], opts: { uid?: number; gid?: number } = {}): T {
  const r = py(code, args, opts);
  if (r.status !== 0) throw new Error(`python failed (${r.status}): ${r.stderr}`);
  return JSON.parse(r.stdout) as T;
}

/** The Node error code of fn(), or 'OK'. */
export function codeOf(fn: () => unknown): string {
  try {
    fn();
    return 'OK';
  } catch (err) {
    return (err as NodeJS.ErrnoException).code ?? String(err);
  }
}

/** The attributes a passthrough must report as the host has them. */
export function statView(st: fs.BigIntStats): Record<string, string> {
  return {
    ino: String(st.ino), mode: st.mode.toString(8), nlink: String(st.nlink), uid: String(st.uid),
    gid: String(st.gid), size: String(st.size), rdev: String(st.rdev), mtime: String(st.mtimeNs),
  };
}

/** lstat of the same relative path through the mount and on the host, for t.deepEqual. */
export function bothLstat(s: Dirs, rel: string): [Record<string, string>, Record<string, string>] {
  return [statView(fs.lstatSync(path.join(s.mnt, rel), { bigint: true })),
    statView(fs.lstatSync(path.join(s.shared, rel), { bigint: true }))];
}

/** A test's own subdirectory: through the mount (m), on the host (h), in the plain ref dir (r). */
export interface Subdir {
  rel: string;
  m: string;
  h: string;
  r: string;
}

/** A maker of fresh subdirectories (named prefix0, prefix1, ...) on the current server. */
export function subdirMaker(current: () => Server, prefix: string): () => Subdir {
  let n = 0;
  return () => {
    const s = current();
    const rel = `${prefix}${n++}`;
    fs.mkdirSync(path.join(s.mnt, rel));
    fs.mkdirSync(path.join(s.ref, rel));
    return { rel, m: path.join(s.mnt, rel), h: path.join(s.shared, rel), r: path.join(s.ref, rel) };
  };
}

let twinCount = 0;

/**
 * A fresh subdirectory (mode 0755, then `setup` run on it as root) in both the share and
 * the reference directory of `s`, for tests that compare the mount with a plain directory:
 * m is the path through the mount, h the same on the host side, r the reference copy.
 */
export function twinDirs(s: Dirs, setup: (root: string) => void): { m: string; h: string; r: string } {
  const rel = `p${twinCount++}`;
  const h = path.join(s.shared, rel);
  const r = path.join(s.ref, rel);
  for (const root of [h, r]) {
    fs.mkdirSync(root, { mode: 0o755 });
    fs.chmodSync(root, 0o755);
    setup(root);
  }
  return { m: path.join(s.mnt, rel), h, r };
}
