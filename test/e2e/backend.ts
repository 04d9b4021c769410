// Starts the vhost-user-fs backend a test guest connects to: our daemon (through vfs-launch) or the reference Rust virtiofsd fetched by
// scripts/fetch-virtiofsd.sh, so the same end-to-end checks can be run against both.
// VFS_E2E_BACKEND=reference selects the reference; the default is ours. VFS_E2E_LAUNCHER_ARGS
// adds launcher options (space-separated, e.g. "--seccomp log") to runs of ours. Ours runs from
// dist/ (what users run; `npm test` builds it first) when that build is newer than every source
// file, else from src/ through tsx (test/entry-points.ts; VFS_TEST_FROM=dist|src forces one).
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { REPO_ROOT } from './guest.js';
import { launcherCommand } from '../entry-points.js';

export type BackendKind = 'ours' | 'reference';
export type SandboxMode = 'none' | 'namespace' | 'chroot';

export interface BackendOptions {
  kind: BackendKind;
  sharedDir: string;
  socketPath: string;
  sandbox: SandboxMode;
  /** Extra daemon options (after `--` for vfs-launch). */
  daemonArgs?: string[];
  startTimeoutMs?: number;
}

export interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface Backend {
  pid: number;
  command: string[];
  /** Everything the backend printed so far (stdout and stderr). */
  output(): string;
  exited: Promise<Exit>;
  /** Resolves with the exit, or undefined when it has not exited within ms. */
  waitExit(ms: number): Promise<Exit | undefined>;
  /** SIGTERM, then SIGKILL after a grace period; safe to call after exit. */
  stop(): Promise<Exit>;
}

export function backendKind(): BackendKind {
  const k = process.env.VFS_E2E_BACKEND ?? 'ours';
  if (k !== 'ours' && k !== 'reference') throw new Error(`VFS_E2E_BACKEND=${k}: use ours or reference`);
  return k;
}

let referenceBinary: string | undefined;

/** The reference virtiofsd wrapper (downloads it on first use). */
export function referenceVirtiofsd(): string {
  if (referenceBinary === undefined) {
    const script = path.join(REPO_ROOT, 'scripts/fetch-virtiofsd.sh');
    referenceBinary = execFileSync('bash', [script], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] }).trim();
  }
  return referenceBinary;
}

export function backendCommand(o: BackendOptions): string[] {
  const extra = o.daemonArgs ?? [];
  if (o.kind === 'reference') {
    return [referenceVirtiofsd(), '--shared-dir', o.sharedDir, '--socket-path', o.socketPath, '--sandbox', o.sandbox, ...extra];
  }
  const launcherArgs = (process.env.VFS_E2E_LAUNCHER_ARGS ?? '').split(/\s+/).filter((a) => a.length > 0);
  return [...launcherCommand(), '--shared-dir', o.sharedDir, '--sandbox', o.sandbox, ...launcherArgs, '--', '--socket-path', o.socketPath, ...extra];
}

function isSocket(p: string): boolean {
  try {
    return fs.statSync(p).isSocket();
  } catch {
    return false;
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Starts the backend and resolves once its socket is listening. */
export async function startBackend(o: BackendOptions): Promise<Backend> {
  const command = backendCommand(o);
  fs.rmSync(o.socketPath, { force: true });
  const child: ChildProcess = spawn(command[0], command.slice(1), {
    cwd: REPO_ROOT,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, UV_USE_IO_URING: '0' },
  });
  const killOnExit = () => child.kill('SIGKILL');
  process.once('exit', killOnExit);
  let out = '';
  child.stdout?.setEncoding('utf8');
  child.stderr?.setEncoding('utf8');
  child.stdout?.on('data', (s: string) => { out += s; });
  child.stderr?.on('data', (s: string) => { out += s; });
  let exit: Exit | undefined;
  const exited = new Promise<Exit>((resolve) => {
    child.once('exit', (code, signal) => {
      process.removeListener('exit', killOnExit);
      exit = { code, signal };
      resolve(exit);
    });
    child.once('error', (err) => {
      out += `spawn error: ${err.message}\n`;
      exit = { code: null, signal: null };
      resolve(exit);
    });
  });
  const waitExit = async (ms: number): Promise<Exit | undefined> => {
    let timer: NodeJS.Timeout | undefined;
    const t = new Promise<undefined>((r) => { timer = setTimeout(() => r(undefined), ms); });
    const r = await Promise.race([exited, t]);
    clearTimeout(timer);
    return r;
  };
  const backend: Backend = {
    pid: child.pid ?? -1,
    command,
    output: () => out,
    exited,
    waitExit,
    async stop() {
      if (exit !== undefined) return exit;
      child.kill('SIGTERM');
      const e = await waitExit(5000);
      if (e !== undefined) return e;
      child.kill('SIGKILL');
      return exited;
    },
  };

  const deadline = Date.now() + (o.startTimeoutMs ?? 20_000);
  while (!isSocket(o.socketPath)) {
    if (exit !== undefined) {
      throw new Error(`backend exited before listening (code ${exit.code}, signal ${exit.signal}): ${command.join(' ')}\n${out}`);
    }
    if (Date.now() > deadline) {
      await backend.stop();
      throw new Error(`backend did not create ${o.socketPath} in time: ${command.join(' ')}\n${out}`);
    }
    await sleep(50);
  }
  return backend;
}

/** `pid` and all its descendants, from /proc (the launcher runs the daemon as a grandchild). */
export function processTree(pid: number): number[] {
  const children = new Map<number, number[]>();
  for (const name of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    let stat: string;
    try {
      stat = fs.readFileSync(`/proc/${name}/stat`, 'utf8');
    } catch {
      continue; // exited meanwhile
    }
    // Fields after the parenthesised command name: state, ppid, ...
    const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
    const list = children.get(ppid) ?? [];
    list.push(Number(name));
    children.set(ppid, list);
  }
  const out: number[] = [];
  const todo = [pid];
  while (todo.length > 0) {
    const p = todo.pop() as number;
    out.push(p);
    todo.push(...(children.get(p) ?? []));
  }
  return out;
}

export interface ProcessView {
  pid: number;
  /** "dev:ino" of its root directory: following /proc/PID/root reaches the real directory even
   * across a pivot_root in another mount namespace (whose readlink text would only say "/"). */
  root: string;
  seccomp: number;
  noNewPrivs: number;
}

/** Each process of the backend's tree as seen from outside. */
export function inspectBackend(pid: number): ProcessView[] {
  const out: ProcessView[] = [];
  for (const p of processTree(pid)) {
    try {
      const st = fs.statSync(`/proc/${p}/root`);
      const status = fs.readFileSync(`/proc/${p}/status`, 'utf8');
      const field = (name: string) => {
        const m = new RegExp(`^${name}:\\s*(\\d+)`, 'm').exec(status);
        return m === null ? -1 : Number(m[1]);
      };
      out.push({ pid: p, root: `${st.dev}:${st.ino}`, seccomp: field('Seccomp'), noNewPrivs: field('NoNewPrivs') });
    } catch {
      // exited meanwhile
    }
  }
  return out;
}

export function dirId(p: string): string {
  const st = fs.statSync(p);
  return `${st.dev}:${st.ino}`;
}
