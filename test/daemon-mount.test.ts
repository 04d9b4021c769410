// The daemon's own FUSE mount (--mountpoint with --sandbox none, as `policy record` and
// direct users run it) is served, and is gone after the daemon ends, whether it stops on
// SIGTERM (exit 0) or is killed outright (SIGKILL: it runs no code of its own).
import test from 'ava';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { daemonCommand, REPO } from './entry-points.js';

const DAEMON = daemonCommand();

function mounted(mnt: string): boolean {
  return fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').some((l) => l.split(' ')[4] === mnt);
}

async function until(what: () => boolean, ms: number): Promise<boolean> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (what()) return true;
    await new Promise((r) => setTimeout(r, 100));
  }
  return what();
}

for (const signal of ['SIGTERM', 'SIGKILL'] as const) {
  test(`a self-mounted daemon's mount is gone after ${signal}`, async (t) => {
    const base = fs.mkdtempSync(path.join(os.tmpdir(), 'vfs-selfmount-'));
    const share = path.join(base, 'share');
    const mnt = path.join(base, 'mnt');
    fs.mkdirSync(share);
    fs.mkdirSync(mnt);
    fs.writeFileSync(path.join(share, 'hello.txt'), 'hello\n');
    t.teardown(() => {
      if (mounted(mnt)) spawnSync('umount', ['-l', mnt]); // only when the test failed
      fs.rmSync(base, { recursive: true, force: true });
    });
    const daemon = spawn(DAEMON[0], [...DAEMON.slice(1),
      '--shared-dir', share, '--mountpoint', mnt, '--sandbox', 'none'], { cwd: REPO, stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    daemon.stderr.on('data', (c: Buffer) => { stderr += c.toString(); });
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
      daemon.on('exit', (code, sig) => resolve({ code, signal: sig })));
    t.true(await until(() => mounted(mnt) && fs.existsSync(path.join(mnt, 'hello.txt')), 60_000), stderr);
    t.is(fs.readFileSync(path.join(mnt, 'hello.txt'), 'utf8'), 'hello\n');
    daemon.kill(signal);
    const end = await exited;
    if (signal === 'SIGTERM') t.is(end.code, 0, stderr);
    else t.is(end.signal, 'SIGKILL');
    t.true(await until(() => !mounted(mnt), 10_000), `${mnt} still mounted after ${signal}`);
  });
}
