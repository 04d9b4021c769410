// The <socket>.pid file (launcher/pid-file.ts), as virtiofsd keeps one, with the daemon as
// users run it (vfs-launch, --sandbox namespace, --seccomp kill): created next to
// --socket-path (mode 0600) holding the launcher's pid (the waiter's, after its exec),
// locked for the daemon's whole life so a second vfs-launch on the same path is refused
// (exit 1, the first one's socket untouched), not held by the sandboxed daemon itself,
// removed when the daemon stops; none for --fd. And --print-capabilities against the
// reference virtiofsd's document.
import test from 'ava';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { spawn, spawnSync } from 'node:child_process';
import { launcherCommand, REPO } from './entry-points.js';

const LAUNCHER = launcherCommand();
const VIRTIOFSD = '/root/.cache/vfs/virtiofsd-ref/bin/virtiofsd';
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function fdTargets(pid: number): string[] {
  try {
    return fs.readdirSync(`/proc/${pid}/fd`).map((fd) => {
      try {
        return fs.readlinkSync(`/proc/${pid}/fd/${fd}`);
      } catch {
        return '';
      }
    });
  } catch {
    return [];
  }
}

function descendants(pid: number): number[] {
  const out: number[] = [];
  const queue = [pid];
  while (queue.length > 0) {
    const p = queue.shift() as number;
    let kids: number[] = [];
    try {
      kids = fs.readFileSync(`/proc/${p}/task/${p}/children`, 'utf8').trim().split(/\s+/).filter((x) => x !== '').map(Number);
    } catch {
      // gone
    }
    out.push(...kids);
    queue.push(...kids);
  }
  return out;
}

test('<socket>.pid: locked for the daemon\'s life, a second launch refused, not in the sandbox, removed at stop', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vfs-pid-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  fs.mkdirSync(path.join(dir, 'share'));
  const sock = path.join(dir, 'v.sock');
  const pidFile = `${sock}.pid`;
  const args = ['--shared-dir', path.join(dir, 'share'), '--sandbox', 'namespace', '--seccomp', 'kill', '--', '--socket-path', sock];
  const first = spawn(LAUNCHER[0] as string, [...LAUNCHER.slice(1), ...args], { cwd: REPO, stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  first.stderr.on('data', (b: Buffer) => { err += b.toString(); });
  const exited = new Promise<number | null>((r) => first.on('exit', (code) => r(code)));
  t.teardown(() => { first.kill('SIGKILL'); });
  const deadline = Date.now() + 60_000;
  while (!err.includes('waiting for a vhost-user frontend')) {
    if (Date.now() > deadline) throw new Error(`daemon did not start: ${err}`);
    await sleep(50);
  }
  const st = fs.statSync(pidFile);
  t.is(st.mode & 0o777, 0o600);
  t.is(fs.readFileSync(pidFile, 'utf8'), `${first.pid}\n`, 'the pid of the launcher (now the waiter)');
  const sockIno = fs.statSync(sock).ino;

  const second = spawnSync(LAUNCHER[0] as string, [...LAUNCHER.slice(1), ...args], { cwd: REPO, encoding: 'utf8', timeout: 60_000 });
  t.is(second.status, 1);
  t.is(second.stderr, `vfs-launch: --socket-path: ${pidFile} is locked by another daemon (pid ${first.pid}): the socket is in use; stop that daemon or choose another --socket-path\n`);
  t.is(fs.statSync(sock).ino, sockIno, 'the first daemon\'s socket was not replaced');
  t.is(fs.readFileSync(pidFile, 'utf8'), `${first.pid}\n`);

  // The waiter holds the lock; the sandboxed daemon (and the chain before it) does not.
  t.true(fdTargets(first.pid as number).includes(pidFile));
  const below = descendants(first.pid as number);
  t.true(below.length > 0);
  for (const pid of below) t.false(fdTargets(pid).includes(pidFile), `pid ${pid} holds the pid file`);

  first.kill('SIGTERM');
  t.is(await exited, 0, err);
  t.false(fs.existsSync(pidFile), 'removed at exit');
  // Free again: a new launch on the path locks it.
  const third = spawn(LAUNCHER[0] as string, [...LAUNCHER.slice(1), ...args], { cwd: REPO, stdio: ['ignore', 'ignore', 'pipe'] });
  let err3 = '';
  third.stderr.on('data', (b: Buffer) => { err3 += b.toString(); });
  const thirdExit = new Promise<number | null>((r) => third.on('exit', (code) => r(code)));
  t.teardown(() => { third.kill('SIGKILL'); });
  while (!err3.includes('waiting for a vhost-user frontend')) {
    if (Date.now() > deadline + 60_000) throw new Error(`third launch did not start: ${err3}`);
    await sleep(50);
  }
  t.is(fs.readFileSync(pidFile, 'utf8'), `${third.pid}\n`);
  third.kill('SIGTERM');
  t.is(await thirdExit, 0, err3);
});

test('no pid file for --fd (the caller owns that socket), as virtiofsd', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vfs-pid-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  fs.mkdirSync(path.join(dir, 'share'));
  const server = net.createServer();
  await new Promise<void>((r) => server.listen(path.join(dir, 'given.sock'), r));
  t.teardown(() => server.close());
  const fd = (server as unknown as { _handle: { fd: number } })._handle.fd;
  const child = spawn(LAUNCHER[0] as string, [...LAUNCHER.slice(1), '--shared-dir', path.join(dir, 'share'), '--sandbox', 'namespace', '--fd=3'],
    { cwd: REPO, stdio: ['ignore', 'ignore', 'pipe', fd] });
  let err = '';
  child.stderr?.on('data', (b: Buffer) => { err += b.toString(); });
  const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
  t.teardown(() => { child.kill('SIGKILL'); });
  const deadline = Date.now() + 60_000;
  while (!err.includes('waiting for a vhost-user frontend')) {
    if (Date.now() > deadline) throw new Error(`daemon did not start: ${err}`);
    await sleep(50);
  }
  t.deepEqual(fs.readdirSync(dir).sort(), ['given.sock', 'share']);
  child.kill('SIGTERM');
  t.is(await exited, 0, err);
});

test('--print-capabilities: the reference virtiofsd\'s document shape, listing only what vfs supports', (t) => {
  const ours = spawnSync(LAUNCHER[0] as string, [...LAUNCHER.slice(1), '--print-capabilities'], { cwd: REPO, encoding: 'utf8' });
  t.is(ours.status, 0, ours.stderr);
  const doc = JSON.parse(ours.stdout) as { type: string; features: string[] };
  const ref = JSON.parse(spawnSync(VIRTIOFSD, ['--print-capabilities'], { encoding: 'utf8' }).stdout) as { type: string; features: string[] };
  t.is(doc.type, ref.type);
  t.deepEqual(Object.keys(doc).sort(), Object.keys(ref).sort());
  // virtiofsd 1.13.2 says migrate-precopy and separate-options; so do we (migration state landed).
  t.deepEqual(ref.features, ['migrate-precopy', 'separate-options']);
  t.deepEqual(doc.features, ref.features);
});
