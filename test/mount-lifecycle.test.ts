// The life of a /dev/fuse server process: refusals before anything is mounted (one clear
// error line, non-zero exit), a clean unmount and exit 0 on SIGTERM and SIGINT, and a
// clean exit when someone else unmounts the file system. Serial: each starts a daemon.
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { makeDirs, mountFor, runServerSync, serverCommand, startServer } from './mount-helpers.js';
import { isMountPoint } from '../src/fuse-dev/mount.js';
import { mount, umount2, MNT_DETACH } from '../src/sys/mount-calls.js';

function refused(t: import('ava').ExecutionContext, shared: string, mnt: string, mention: string): void {
  const r = runServerSync(serverCommand(shared, mnt));
  t.not(r.status, 0);
  t.is(r.signal, null);
  const lines = r.stderr.trim().split('\n').filter((l) => l.trim() !== '');
  t.is(lines.length, 1, r.stderr);
  t.true(lines[0].includes(mention), lines[0]);
}

test.serial('a missing shared dir is refused before mounting', (t) => {
  const d = makeDirs();
  t.teardown(() => fs.rmSync(d.base, { recursive: true, force: true }));
  const missing = path.join(d.base, 'no-such-dir');
  refused(t, missing, d.mnt, missing);
  t.false(isMountPoint(d.mnt));
});

test.serial('a missing mountpoint, or one that is a file, is refused', (t) => {
  const d = makeDirs();
  t.teardown(() => fs.rmSync(d.base, { recursive: true, force: true }));
  const missing = path.join(d.base, 'no-such-mnt');
  refused(t, d.shared, missing, missing);
  const file = path.join(d.base, 'file');
  fs.writeFileSync(file, '');
  refused(t, d.shared, file, file);
  t.false(isMountPoint(d.mnt));
});

test.serial('a busy mountpoint is refused and the existing mount is left alone', (t) => {
  const d = makeDirs();
  mount('tmpfs', d.mnt, 'tmpfs', 0, 'size=1m');
  t.teardown(() => {
    try {
      umount2(d.mnt, MNT_DETACH);
    } catch {
      // already gone
    }
    fs.rmSync(d.base, { recursive: true, force: true });
  });
  fs.writeFileSync(path.join(d.mnt, 'marker'), 'tmpfs');
  refused(t, d.shared, d.mnt, d.mnt);
  t.is(fs.readFileSync(path.join(d.mnt, 'marker'), 'utf8'), 'tmpfs');
  const mounts = fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').filter((l) => l.split(' ')[4] === d.mnt);
  t.is(mounts.length, 1);
});

for (const signal of ['SIGTERM', 'SIGINT'] as const) {
  test.serial(`${signal} unmounts and exits 0`, async (t) => {
    const s = await mountFor(t);
    fs.writeFileSync(path.join(s.mnt, 'f'), 'x');
    t.true(isMountPoint(s.mnt));
    const res = await s.stop(signal);
    t.deepEqual(res, { code: 0, signal: null });
    t.false(isMountPoint(s.mnt));
    t.is(fs.readFileSync(path.join(s.shared, 'f'), 'utf8'), 'x');
  });
}

test.serial('an external unmount ends the server with exit 0', async (t) => {
  const d = makeDirs();
  t.teardown(() => fs.rmSync(d.base, { recursive: true, force: true }));
  const s = await startServer([], d);
  t.teardown(() => s.stop());
  fs.readdirSync(s.mnt);
  umount2(s.mnt, 0);
  const res = await Promise.race([s.exited, new Promise((r) => setTimeout(() => r('timeout'), 15_000))]);
  t.deepEqual(res, { code: 0, signal: null });
});
