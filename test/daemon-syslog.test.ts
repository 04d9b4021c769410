// --syslog: the daemon's log lines reach /dev/log as RFC 3164-style datagrams with the
// daemon facility, and without a syslog socket the daemon refuses to start, saying why.
// /dev/log is machine-wide, so both cases run serially in one test.
import test from 'ava';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { daemonCommand, REPO } from './entry-points.js';

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
