// Shared by the sandbox/launcher tests: start vfs-launch (test/entry-points.ts) as a real process,
// find the daemon it started (a descendant running the daemon entry), wait until the
// daemon's main thread has finished its sandbox stage, and read its /proc files from
// outside. Everything here looks at the kernel's view; nothing is mocked.
import { execFileSync, spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { capabilityMask, resolveCapabilities } from '../src/sandbox/capabilities.js';
import { daemonCommand, launcherCommand } from './entry-points.js';

const here = path.dirname(fileURLToPath(import.meta.url));
export const ROOT = path.resolve(here, '..');
/** argv prefix that runs vfs-launch: dist/ when fresh, else the sources through tsx. */
export const LAUNCHER = launcherCommand();
/** Stand-in daemon: the sandbox stage exactly as the daemon runs it, then waits. */
export const ENTRY = path.join(ROOT, 'test', 'sandbox-entry.ts');

export interface Launched {
  proc: ChildProcess;
  stdout: () => string;
  stderr: () => string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/** The real daemon's entry file, as the launcher above starts it. */
export const DAEMON = daemonCommand().at(-1) ?? '';

export function startLauncher(args: readonly string[], opts: { uid?: number; gid?: number; entry?: string; env?: Record<string, string>; fd3?: number } = {}): Launched {
  const entry = opts.entry ?? ENTRY;
  const env: Record<string, string | undefined> = { ...process.env, HOME: os.tmpdir(), ...opts.env };
  if (entry === DAEMON) delete env.VFS_DAEMON_ENTRY;
  else env.VFS_DAEMON_ENTRY = entry;
  const proc = spawn(LAUNCHER[0] ?? process.execPath, [...LAUNCHER.slice(1), ...args], {
    cwd: ROOT,
    env,
    // fd3: an fd the launcher inherits as 3 (as libvirt passes its listening socket).
    stdio: opts.fd3 === undefined ? ['ignore', 'pipe', 'pipe'] : ['ignore', 'pipe', 'pipe', opts.fd3],
    uid: opts.uid,
    gid: opts.gid,
  });
  let out = '';
  let err = '';
  proc.stdout?.on('data', (d: Buffer) => { out += d.toString(); });
  proc.stderr?.on('data', (d: Buffer) => { err += d.toString(); });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    proc.on('close', (code, signal) => resolve({ code, signal }));
  });
  return { proc, stdout: () => out, stderr: () => err, exited };
}

function childrenOf(pid: number): number[] {
  try {
    return fs.readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/).filter((s) => s !== '').map(Number);
  } catch {
    return [];
  }
}

function cmdline(pid: number): string[] {
  try {
    return fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
  } catch {
    return [];
  }
}

/** The daemon among the launcher's descendants: a node process running `entry`. */
export function findDaemon(launcherPid: number, entry = ENTRY): number | undefined {
  const queue = [...childrenOf(launcherPid)];
  while (queue.length > 0) {
    const pid = queue.shift() as number;
    const argv = cmdline(pid);
    if (argv[0] === process.execPath && argv.includes(entry)) return pid;
    queue.push(...childrenOf(pid));
  }
  return undefined;
}

export function procStatus(pid: number, task = pid): Record<string, string> {
  const out: Record<string, string> = {};
  for (const line of fs.readFileSync(`/proc/${pid}/task/${task}/status`, 'utf8').split('\n')) {
    const i = line.indexOf(':');
    if (i > 0) out[line.slice(0, i)] = line.slice(i + 1).trim();
  }
  return out;
}

export function capHex(names: readonly string[]): string {
  return capabilityMask(names).toString(16).padStart(16, '0');
}

export function expectedCaps(modcaps?: string): string {
  return capHex(resolveCapabilities(modcaps));
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** CapBnd of a thread after the privilege drop: the bounding set is emptied. */
export const NO_CAPS = '0000000000000000';

/**
 * Wait until the launcher's daemon exists and its main thread has dropped to `caps` with
 * an empty bounding set (the last step of the sandbox stage). Throws with the launcher's
 * stderr on timeout.
 */
export async function waitSandboxed(l: Launched, caps: string, timeoutMs = 150_000,
  entry = ENTRY, ready: (pid: number) => boolean = () => l.stdout().includes('"rootEntries"')): Promise<number> {
  const deadline = Date.now() + timeoutMs;
  let last = '';
  while (Date.now() < deadline) {
    if (l.proc.exitCode !== null) throw new Error(`launcher exited ${l.proc.exitCode}: ${l.stderr()}`);
    const pid = l.proc.pid === undefined ? undefined : findDaemon(l.proc.pid, entry);
    if (pid !== undefined) {
      try {
        const st = procStatus(pid);
        last = `CapEff ${st.CapEff} CapBnd ${st.CapBnd} NoNewPrivs ${st.NoNewPrivs}`;
        if (st.CapEff === caps && st.CapBnd === NO_CAPS && st.NoNewPrivs === '1' && ready(pid)) return pid;
      } catch {
        // raced with exit; loop
      }
    }
    await sleep(100);
  }
  throw new Error(`daemon not sandboxed within ${timeoutMs} ms (${last}); stderr: ${l.stderr()}`);
}

/** Mount points (field 5) and mount roots (field 4) of a process, from outside. */
export function mountsOf(pid: number): { root: string; mountPoint: string; options: string[] }[] {
  return fs.readFileSync(`/proc/${pid}/mountinfo`, 'utf8').trim().split('\n').map((line) => {
    const f = line.split(' ');
    return { root: f[3], mountPoint: f[4], options: f[5].split(',') };
  });
}

export function nsOf(pid: number, ns: string): string {
  return fs.readlinkSync(`/proc/${pid}/ns/${ns}`);
}

export async function stopLauncher(l: Launched): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  if (l.proc.exitCode === null && l.proc.signalCode === null) l.proc.kill('SIGTERM');
  const timer = setTimeout(() => l.proc.kill('SIGKILL'), 15_000);
  const r = await l.exited;
  clearTimeout(timer);
  return r;
}

export function tempShare(prefix: string): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  fs.writeFileSync(path.join(dir, 'file'), 'content\n');
  fs.mkdirSync(path.join(dir, 'sub'));
  // An absolute symlink: from inside the sandbox it must not reach the host's /etc.
  fs.symlinkSync('/etc/hostname', path.join(dir, 'abs-link'));
  return dir;
}

/** The ordinary user the unprivileged tests run as; created (useradd) when missing. */
export const TEST_USER = 'vfs-sbx-test';

export function ensureUser(): { uid: number; gid: number } {
  try {
    execFileSync('id', ['-u', TEST_USER], { stdio: 'ignore' });
  } catch {
    try {
      execFileSync('useradd', ['--system', '--no-create-home', '--shell', '/usr/sbin/nologin', TEST_USER], { stdio: 'pipe' });
    } catch (err) {
      // Another test file may have created it at the same moment.
      if (!/already exists/.test(String((err as { stderr?: Buffer }).stderr ?? ''))) throw err;
    }
  }
  const uid = Number(execFileSync('id', ['-u', TEST_USER], { encoding: 'utf8' }).trim());
  const gid = Number(execFileSync('id', ['-g', TEST_USER], { encoding: 'utf8' }).trim());
  return { uid, gid };
}
