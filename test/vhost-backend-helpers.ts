// Shared by the backend tests that run our device in a child process: start a script
// (TypeScript, through tsx) that listens on a socket in a fresh temp dir, wait for the
// socket, and make sure the child is gone (and the dir removed) when the test ends.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';

export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

/** A JSON string literal of a repository file's absolute path, for imports in child scripts. */
export const repoFile = (p: string): string => JSON.stringify(path.join(REPO, p));

export interface DeviceChild {
  proc: ChildProcess;
  dir: string;
  sock: string;
  log(): string;
  exited: Promise<number | null>;
}

/**
 * Run `script` as `node --import tsx -e script -- SOCK ...args` in a new temp dir (prefix
 * `prefix`), resolving once SOCK exists. `prepare` runs on the dir before the child starts.
 */
export async function startDeviceChild(t: { teardown(fn: () => void | Promise<void>): void }, prefix: string, script: string,
  args: (dir: string) => string[], prepare: (dir: string) => void = () => undefined): Promise<DeviceChild> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  prepare(dir);
  const sock = path.join(dir, 'vhost.sock');
  const logPath = path.join(dir, 'log');
  const logFd = fs.openSync(logPath, 'w');
  const proc = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script, '--', sock, ...args(dir)],
    { cwd: REPO, stdio: ['ignore', logFd, logFd] });
  fs.closeSync(logFd);
  const exited = new Promise<number | null>((resolve) => proc.on('exit', (code) => resolve(code)));
  const log = (): string => fs.readFileSync(logPath, 'utf8');
  // Wait for the child to be gone: a SIGCHLD arriving later would interrupt the next
  // test's blocking receive (the frontend's socket has a timeout, so it is not restarted).
  t.teardown(async () => {
    proc.kill('SIGKILL');
    await exited;
    fs.rmSync(dir, { recursive: true, force: true });
  });
  const deadline = Date.now() + 60000;
  while (!fs.existsSync(sock)) {
    if (proc.exitCode !== null || Date.now() > deadline) throw new Error(`device did not start: ${log()}`);
    await new Promise((r) => setTimeout(r, 20));
  }
  return { proc, dir, sock, log, exited };
}
