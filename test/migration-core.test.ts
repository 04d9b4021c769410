// Migration of the FUSE core's tables between two sessions on one directory, in one process
// (the daemon does the same through vhost-user DEVICE_STATE; the QEMU test does it for
// real): the destination answers the guest's node ids and fhs, and each --migration-*
// option changes what happens when the host moved files in between.
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { createFuseServer } from '../src/fs/fuse-server.js';
import { DEFAULT_FS_OPTIONS, type FsOptions, type MigrationOptions } from '../src/fs/options.js';
import type { FuseSession } from '../src/fs/session.js';
import { EntryOutHead, OpenIn, OpenOut, Op, ReadIn, WriteIn, Attr, AttrOutHead, GetattrIn, ForgetIn } from '../src/fs/fuse-abi.js';
import { AT_FDCWD, O_CLOEXEC, O_DIRECTORY, O_PATH, close, openat } from '../src/sys/file-calls.js';
import { makeFs, init, send, request, struct, cstr } from './fs-helpers.js';
import { decodeState } from '../src/fs/migration-state.js';

const ESTALE = 116;

function sessionAt(dir: string, migration: Partial<MigrationOptions>, opts: Partial<FsOptions> = {}): FuseSession {
  const rootFd = openat(AT_FDCWD, dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
  const procSelfFd = openat(AT_FDCWD, '/proc/self/fd', O_PATH | O_DIRECTORY | O_CLOEXEC);
  return createFuseServer({
    rootFd, procSelfFd, transport: 'virtio', maxWrite: 1 << 20,
    options: { ...DEFAULT_FS_OPTIONS, ...opts, migration: { ...DEFAULT_FS_OPTIONS.migration, ...migration } },
  });
}

function ops(session: FuseSession) {
  return {
    lookup(parent: bigint, name: string): bigint {
      const r = send(session, request(Op.LOOKUP, [cstr(name)], { nodeid: parent }));
      if (r === null || r.error !== 0) throw new Error(`lookup ${name}: ${r?.error}`);
      return EntryOutHead.decode(r.body, 0).nodeid;
    },
    open(nodeid: bigint, flags = 2): bigint {
      const r = send(session, request(Op.OPEN, [struct(OpenIn, { flags })], { nodeid }));
      if (r === null || r.error !== 0) throw new Error(`open ${nodeid}: ${r?.error}`);
      return OpenOut.decode(r.body, 0).fh;
    },
    read(nodeid: bigint, fh: bigint, size = 100): { error: number; data: string } {
      const r = send(session, request(Op.READ, [struct(ReadIn, { fh, offset: 0n, size })], { nodeid }));
      return { error: r?.error ?? -1, data: r?.body.toString() ?? '' };
    },
    write(nodeid: bigint, fh: bigint, offset: bigint, data: string): number {
      const r = send(session, request(Op.WRITE, [struct(WriteIn, { fh, offset, size: data.length }), Buffer.from(data)], { nodeid }));
      return r?.error ?? -1;
    },
    getattr(nodeid: bigint): { error: number; size: bigint } {
      const r = send(session, request(Op.GETATTR, [struct(GetattrIn, {})], { nodeid }));
      return { error: r?.error ?? -1, size: r !== null && r.error === 0 ? Attr.decode(r.body, AttrOutHead.size).size : -1n };
    },
    forget(nodeid: bigint, n: bigint): void {
      send(session, request(Op.FORGET, [struct(ForgetIn, { nlookup: n })], { nodeid }));
    },
  };
}

function migrate(src: FuseSession, dst: FuseSession): string | undefined {
  const data = src.migration!.save();
  if (typeof data === 'string') throw new Error(data);
  return dst.migration!.load(data);
}

/** A source session with d/f (open read-write), g, and d/sub looked up; the host dir and ids. */
function setup(t: import('ava').ExecutionContext, migration: Partial<MigrationOptions> = {}) {
  const f = makeFs({ migration: { ...DEFAULT_FS_OPTIONS.migration, ...migration } });
  t.teardown(() => f.cleanup());
  init(f.session);
  fs.mkdirSync(path.join(f.dir, 'd/sub'), { recursive: true });
  fs.writeFileSync(path.join(f.dir, 'd/f'), 'hello');
  fs.writeFileSync(path.join(f.dir, 'g'), 'gee');
  const o = ops(f.session);
  const d = o.lookup(1n, 'd');
  const file = o.lookup(d, 'f');
  o.lookup(d, 'f'); // two lookups
  const g = o.lookup(1n, 'g');
  const sub = o.lookup(d, 'sub');
  const fh = o.open(file);
  return { f, o, d, file, g, sub, fh };
}

test('find-paths: node ids, lookup counts and an open handle carry over; reads and writes go on', (t) => {
  const { f, d, file, g, sub, fh } = setup(t);
  const dst = sessionAt(f.dir, {});
  t.is(migrate(f.session, dst), undefined);
  const o = ops(dst);
  t.is(o.read(file, fh).data, 'hello');
  t.is(o.write(file, fh, 5n, ' world'), 0);
  t.is(fs.readFileSync(path.join(f.dir, 'd/f'), 'utf8'), 'hello world');
  t.is(o.getattr(g).size, 3n);
  t.is(o.getattr(sub).error, 0);
  // A lookup on the destination finds the same node id, and new ones do not collide.
  t.is(o.lookup(d, 'f'), file);
  fs.writeFileSync(path.join(f.dir, 'new'), 'n');
  t.true(o.lookup(1n, 'new') > sub);
  // The migrated lookup count (2, +1 above) is honoured: after 2 forgets the node lives on.
  o.forget(file, 2n);
  t.is(o.getattr(file).error, 0);
  // A bad fh is still refused (not made valid by the restore).
  t.is(o.read(file, fh + 100n).error, -9);
});

test('a file renamed on the host: abort fails the load, guest-error answers ESTALE for it alone', (t) => {
  const { f, file, g, fh } = setup(t);
  fs.renameSync(path.join(f.dir, 'd/f'), path.join(f.dir, 'moved'));
  const abort = sessionAt(f.dir, { onError: 'abort' });
  t.regex(migrate(f.session, abort) ?? '', /inode \d+: .*"f" in \d+: errno 2/);
  // Nothing was kept by the failed load.
  t.is(ops(abort).getattr(g).error, -5, 'not initialized after a failed load');
  const lenient = sessionAt(f.dir, { onError: 'guest-error' });
  t.is(migrate(f.session, lenient), undefined);
  const o = ops(lenient);
  t.is(o.getattr(file).error, -ESTALE);
  t.is(o.read(file, fh).error, -9, 'its handle is gone too');
  t.is(o.getattr(g).size, 3n, 'other inodes are fine');
});

test('--migration-confirm-paths corrects a path the host changed, from /proc/self/fd', (t) => {
  const { f, file, fh } = setup(t, { confirmPaths: true });
  fs.mkdirSync(path.join(f.dir, 'elsewhere'));
  fs.renameSync(path.join(f.dir, 'd/f'), path.join(f.dir, 'elsewhere/f2'));
  const dst = sessionAt(f.dir, { onError: 'abort' });
  t.is(migrate(f.session, dst), undefined);
  const o = ops(dst);
  t.is(o.read(file, fh).data, 'hello');
  t.is(o.write(file, fh, 0n, 'J'), 0);
  t.is(fs.readFileSync(path.join(f.dir, 'elsewhere/f2'), 'utf8'), 'Jello');
});

test('--migration-verify-handles catches a file replaced under its name', (t) => {
  for (const verifyHandles of [false, true]) {
    const { f, file } = setup(t, { verifyHandles });
    fs.renameSync(path.join(f.dir, 'd/f'), path.join(f.dir, 'old-f'));
    fs.writeFileSync(path.join(f.dir, 'd/f'), 'an impostor');
    const dst = sessionAt(f.dir, { onError: 'guest-error' });
    t.is(migrate(f.session, dst), undefined);
    // Without the check the destination silently serves the new file under the old node id.
    if (verifyHandles) t.is(ops(dst).getattr(file).error, -ESTALE);
    else t.is(ops(dst).getattr(file).size, BigInt('an impostor'.length));
  }
});

test('file-handles mode: inodes travel as file handles and survive a rename', (t) => {
  const { f, file, g, fh } = setup(t, { mode: 'file-handles' });
  fs.renameSync(path.join(f.dir, 'd/f'), path.join(f.dir, 'd/renamed'));
  const dst = sessionAt(f.dir, { onError: 'abort' });
  t.is(migrate(f.session, dst), undefined);
  const o = ops(dst);
  t.is(o.read(file, fh).data, 'hello');
  t.is(o.getattr(g).size, 3n);
});

test('a file handle naming a file outside the shared directory is refused', (t) => {
  const { f } = setup(t, { mode: 'file-handles' });
  // The share is a subdirectory; the outside file is on the same file system.
  const share = path.join(f.dir, 'd');
  const src = sessionAt(share, { mode: 'file-handles' });
  init(src);
  const so = ops(src);
  const sub = so.lookup(1n, 'sub');
  fs.renameSync(path.join(share, 'sub'), path.join(f.dir, 'outside'));
  const dst = sessionAt(share, { onError: 'abort' });
  t.regex(migrate(src, dst) ?? '', new RegExp(`inode ${sub}: its file handle names a file that is not reachable in the shared directory`));
});

test('a deleted open file and an unnamed inode', (t) => {
  const { f, o, d, file, fh } = setup(t);
  // ".." of d/sub is d, found again without a recorded name (through /proc/self/fd).
  const sub = o.lookup(d, 'sub');
  const dotdot = o.lookup(sub, '..');
  t.is(dotdot, d);
  fs.unlinkSync(path.join(f.dir, 'd/f'));
  const dst = sessionAt(f.dir, { onError: 'guest-error' });
  t.is(migrate(f.session, dst), undefined);
  t.is(ops(dst).getattr(file).error, -ESTALE);
  t.is(ops(dst).read(file, fh).error, -9);
  t.is(ops(dst).getattr(d).error, 0);
});

test('a malformed state fails the load and leaves the destination empty', (t) => {
  const { f } = setup(t);
  const dst = sessionAt(f.dir, {});
  const good = f.session.migration!.save() as Buffer;
  t.regex(dst.migration!.load(good.subarray(0, good.length - 3)) ?? '', /migration state at byte/);
  const evil = Buffer.from(good);
  // Turn the first record's name into "..": refused by the format, nothing opened.
  const at = evil.indexOf(Buffer.from('d'), 40 + 34);
  evil.writeUInt16LE(2, 40 + 18);
  t.true(at > 0);
  t.regex(dst.migration!.load(evil) ?? '', /migration state at byte/);
  t.is(ops(dst).getattr(2n).error, -5);
  void close;
});

test('inodes READDIRPLUS made go by their exact names (the entry-name scratch bytes after the NUL made the destination refuse the whole state)', (t) => {
  const f = makeFs({});
  t.teardown(() => f.cleanup());
  init(f.session);
  for (const n of ['a-rather-long-file-name', 'short', 'mid-name']) fs.writeFileSync(path.join(f.dir, n), n);
  const dir = send(f.session, request(Op.OPENDIR, [struct(OpenIn, { flags: 0o200000 })], { nodeid: 1 }));
  t.is(dir?.error, 0);
  const fh = OpenOut.decode(dir?.body as Buffer, 0).fh;
  const plus = send(f.session, request(Op.READDIRPLUS, [struct(ReadIn, { fh, offset: 0n, size: 65536 })], { nodeid: 1 }));
  t.is(plus?.error, 0);
  const data = f.session.migration!.save();
  if (typeof data === 'string') throw new Error(data);
  const st = decodeState(data);
  const names = st.inodes.map((i) => (i.location.kind === 'name' ? i.location.name.toString() : i.location.kind)).sort();
  t.deepEqual(names, ['a-rather-long-file-name', 'mid-name', 'short']);
  const dst = sessionAt(f.dir, {});
  t.is(dst.migration!.load(data), undefined, 'the destination takes the state');
  for (const i of st.inodes) t.is(ops(dst).getattr(BigInt(i.nodeid)).error, 0);
});
