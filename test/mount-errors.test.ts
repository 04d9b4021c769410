// mountFuse() refusals, called in-process (nothing gets mounted, so nothing here can wait
// on a FUSE server): each is a FuseMountError (a SysError) naming the path and the errno,
// with a hint, raised before mount(2) is attempted.
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { FuseMountError, isMountPoint, mountFuse } from '../src/fuse-dev/mount.js';
import { SysError } from '../src/sys/libc.js';
import { mount, umount2, MNT_DETACH } from '../src/sys/mount-calls.js';
import { makeDirs, run, ROOT } from './mount-helpers.js';

function refusal(fn: () => unknown): FuseMountError {
  try {
    fn();
  } catch (err) {
    if (err instanceof FuseMountError) return err;
    throw err;
  }
  throw new Error('no error thrown');
}

test('missing mountpoint, a file as mountpoint, a busy mountpoint', (t) => {
  const d = makeDirs();
  t.teardown(() => fs.rmSync(d.base, { recursive: true, force: true }));
  const missing = path.join(d.base, 'nope');
  const e1 = refusal(() => mountFuse({ mountpoint: missing, sourceName: 'x' }));
  t.true(e1 instanceof SysError);
  t.is(e1.code, 'ENOENT');
  t.is(e1.target, missing);
  t.is(e1.message, `mount ${missing}: ENOENT: mountpoint does not exist`);
  const file = path.join(d.base, 'file');
  fs.writeFileSync(file, '');
  const e2 = refusal(() => mountFuse({ mountpoint: file, sourceName: 'x' }));
  t.is(e2.code, 'ENOTDIR');
  t.regex(e2.message, /not a directory/);
  mount('tmpfs', d.mnt, 'tmpfs', 0, 'size=1m');
  t.teardown(() => umount2(d.mnt, MNT_DETACH));
  const e3 = refusal(() => mountFuse({ mountpoint: d.mnt, sourceName: 'x' }));
  t.is(e3.code, 'EBUSY');
  t.regex(e3.message, /already mounted/);
  // Through a symlink to the busy directory too.
  fs.symlinkSync(d.mnt, path.join(d.base, 'link'));
  t.is(refusal(() => mountFuse({ mountpoint: path.join(d.base, 'link'), sourceName: 'x' })).code, 'EBUSY');
  t.true(isMountPoint(d.mnt));
});

test('a missing FUSE device is named, and nothing is mounted', (t) => {
  const d = makeDirs();
  t.teardown(() => fs.rmSync(d.base, { recursive: true, force: true }));
  const e = refusal(() => mountFuse({ mountpoint: d.mnt, sourceName: 'x', devicePath: path.join(d.base, 'no-fuse') }));
  t.is(e.code, 'ENOENT');
  t.is(e.syscall, 'open');
  t.regex(e.message, /no FUSE device/);
  t.false(isMountPoint(d.mnt));
});

test('a caller that is not root gets EPERM before anything is opened', (t) => {
  const d = makeDirs();
  t.teardown(() => fs.rmSync(d.base, { recursive: true, force: true }));
  const code = `import(${JSON.stringify(path.join(ROOT, 'src/fuse-dev/mount.ts'))}).then((m) => {
    try { m.mountFuse({ mountpoint: ${JSON.stringify(d.mnt)}, sourceName: 'x' }); console.log('mounted'); }
    catch (e) { console.log(e.code + ' ' + e.message); }
  });`;
  const r = run(process.execPath, ['--import', 'tsx', '-e', code], { uid: 65534, gid: 65534, cwd: ROOT });
  t.is(r.stdout.trim(), `EPERM mount ${d.mnt}: EPERM: mounting a FUSE file system needs root`, r.stderr);
  t.false(isMountPoint(d.mnt));
});
