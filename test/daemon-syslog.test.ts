// --syslog: the daemon's log lines reach /dev/log as RFC 3164-style datagrams with the
// daemon facility, and without a syslog socket the daemon refuses to start, saying why.
// /dev/log is machine-wide, so both cases run serially in one test.
import test from 'ava';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { daemonCommand, launcherCommand, REPO } from './entry-points.js';
import { VirtioFsFrontend } from './frontend/virtio-fs.js';
import { FuseClient } from './frontend/fuse-client.js';
import * as F from './frontend/fuse-requests.js';

const DAEMON = daemonCommand().slice(1);
const DEV_LOG = '/dev/log';

// A python3 datagram receiver bound at /dev/log that echoes what it gets, one per line.
const RECEIVER = `
import socket, sys, os
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(${JSON.stringify(DEV_LOG)})
print("ready", flush=True)
while True:
    print(s.recv(65536).decode(), flush=True)
`;

test.serial('--syslog sends log lines to /dev/log, and fails clearly without it', async (t) => {
  if (fs.existsSync(DEV_LOG)) t.fail('/dev/log already exists on this machine: this test needs to own it');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vfs-syslog-'));
  const share = path.join(dir, 'share');
  fs.mkdirSync(share);
  const sock = path.join(dir, 'vfs.sock');
  const args = [...DAEMON, '--shared-dir', share, '--socket-path', sock, '--sandbox', 'none', '--seccomp', 'none', '--syslog'];

  const missing = spawnSync(process.execPath, args, { cwd: REPO, encoding: 'utf8', timeout: 30_000 });
  t.is(missing.status, 1);
  t.regex(missing.stderr, /connect \/dev\/log: ENOENT/);

  const receiver = spawn('python3', ['-c', RECEIVER], { stdio: ['ignore', 'pipe', 'inherit'] });
  t.teardown(() => {
    receiver.kill('SIGKILL');
    fs.rmSync(DEV_LOG, { force: true });
    fs.rmSync(dir, { recursive: true, force: true });
  });
  let received = '';
  await new Promise<void>((resolve) => {
    receiver.stdout.on('data', (chunk: Buffer) => {
      received += chunk.toString();
      if (received.includes('ready')) resolve();
    });
  });

  const daemon = spawn(process.execPath, args, { cwd: REPO, stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  daemon.stderr.on('data', (c: Buffer) => { stderr += c.toString(); });
  const exited = new Promise<number | null>((resolve) => daemon.on('exit', (c) => resolve(c)));
  let running = true;
  void exited.then(() => { running = false; });
  const deadline = Date.now() + 30_000;
  while (running && !received.includes('listening on') && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
  daemon.kill('SIGTERM');
  const code = await exited;
  t.is(code, 0, stderr);
  // facility daemon (3) * 8 + severity info (6) = 30
  t.regex(received, new RegExp(`<30>vfs\\[\\d+\\]: daemon: listening on ${sock.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`));
  t.notRegex(stderr, /listening on/, 'with --syslog nothing is logged on stderr');
});

// A receiver that binds /dev/log, takes the daemon's first line and then sleeps, so that
// the socket's queue (net.unix.max_dgram_qlen datagrams, 10 by default) fills while the
// daemon goes on logging (its sandbox steps, the frontend's messages and requests).
const SLOW_RECEIVER = `
import socket, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(${JSON.stringify(DEV_LOG)})
print("ready", flush=True)
print(s.recv(65536).decode(), flush=True)
time.sleep(1.5)
while True:
    print(s.recv(65536).decode(), flush=True)
`;

test.serial('--syslog under the default sandbox loses no line to a busy syslog: the device thread waits for it', async (t) => {
  // The test above removes /dev/log in its teardown.
  if (fs.existsSync(DEV_LOG)) t.fail('/dev/log already exists on this machine: this test needs to own it');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vfs-syslog-'));
  const share = path.join(dir, 'share');
  fs.mkdirSync(share);
  const sock = path.join(dir, 'vfs.sock');
  const receiver = spawn('python3', ['-c', SLOW_RECEIVER], { stdio: ['ignore', 'pipe', 'inherit'] });
  t.teardown(() => {
    receiver.kill('SIGKILL');
    fs.rmSync(DEV_LOG, { force: true });
    fs.rmSync(dir, { recursive: true, force: true });
  });
  let received = '';
  receiver.stdout.on('data', (chunk: Buffer) => { received += chunk.toString(); });
  while (!received.includes('ready')) await new Promise((r) => setTimeout(r, 20));

  // vfs-launch's defaults: --sandbox namespace --seccomp kill.
  const launcher = launcherCommand();
  const env: NodeJS.ProcessEnv = { ...process.env, HOME: os.tmpdir() };
  delete env.VFS_DAEMON_ENTRY;
  const daemon = spawn(launcher[0], [...launcher.slice(1), '--shared-dir', share, '--', '--socket-path', sock, '--syslog', '--log-level', 'trace'],
    { cwd: REPO, env, stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  daemon.stderr.on('data', (c: Buffer) => { stderr += c.toString(); });
  const exited = new Promise<number | null>((resolve) => daemon.on('exit', (c) => resolve(c)));
  const deadline = Date.now() + 30_000;
  while (!fs.existsSync(sock)) {
    if (daemon.exitCode !== null || Date.now() > deadline) t.fail(`the daemon did not listen: ${stderr}`);
    await new Promise((r) => setTimeout(r, 20));
  }
  const requests = 50;
  const fe = VirtioFsFrontend.open({ socketPath: sock, timeoutMs: 20_000 });
  try {
    const c = new FuseClient(fe);
    c.doInit();
    for (let i = 0; i < requests; i++) c.getattr(F.ROOT_ID);
  } finally {
    fe.close();
  }
  t.is(await exited, 0, stderr);
  // Everything sent is queued in the receiver's socket by now; let it print the rest.
  const settle = Date.now() + 10_000;
  while (!received.includes('frontend disconnected') && Date.now() < settle) await new Promise((r) => setTimeout(r, 50));

  const lines = received.split('\n');
  const at = (re: RegExp): number => lines.findIndex((l) => re.test(l));
  const connected = at(/^<30>vfs\[\d+\]: vhost: frontend connected, serving requests$/);
  const disconnected = at(/^<30>vfs\[\d+\]: vhost: frontend disconnected; shutting down$/);
  t.true(connected >= 0, received);
  t.true(disconnected > connected, received);
  // trace is severity debug (7): 3 * 8 + 7 = 31. Every request's line, in order.
  const uniques = lines.map((l) => /^<31>vfs\[\d+\]: fs: GETATTR unique (\d+) /.exec(l)).filter((m) => m !== null).map((m) => Number(m[1]));
  t.is(uniques.length, requests, received);
  t.true(uniques.every((u, i) => i === 0 || u > uniques[i - 1]), 'in request order');
  // The launcher's own lines (it has no --syslog) are all that may be on stderr.
  t.deepEqual(stderr.split('\n').filter((l) => l !== '' && !/^\[\S+\] [A-Z]+ launcher: /.test(l)), [], 'with --syslog the daemon logs nothing on stderr');
});
