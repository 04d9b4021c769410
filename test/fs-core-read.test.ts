// The FUSE core driven directly through handle() over a temp dir: INIT negotiation,
// LOOKUP (including the names that must not leave the root), GETATTR, OPEN/READ,
// OPENDIR/READDIR/READDIRPLUS with resumable offsets, FORGET.
import test, { type ExecutionContext } from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import {
  Attr, AttrOutHead, BatchForgetIn, Dirent, DIRENTPLUS_HEAD_SIZE, ENTRY_OUT_SIZE, EntryOutHead, ForgetIn, ForgetOne,
  GetattrIn, InitFlag, Op, OpenIn, OpenOut, ReadIn, ReleaseIn, direntAlign,
} from '../src/fs/fuse-abi.js';
import { makeFs, init, initOut, send, request, struct, cstr, type TestFs, type Answer } from './fs-helpers.js';
import { closeFuseServer, fuseServerFdCount } from '../src/fs/fuse-server.js';

const ENOENT = -2;
const EINVAL = -22;
const EIO = -5;

function entryOf(a: Answer): { nodeid: number; ino: bigint; mode: number; size: bigint; nlink: number } {
  const h = EntryOutHead.decode(a.body, 0);
  const at = Attr.decode(a.body, EntryOutHead.size);
  return { nodeid: Number(h.nodeid), ino: at.ino, mode: at.mode, size: at.size, nlink: at.nlink };
}

function lookup(t: TestFs, parent: number, name: string | Buffer): Answer {
  const a = send(t.session, request(Op.LOOKUP, [cstr(name)], { nodeid: parent }));
  if (a === null) throw new Error('no reply');
  return a;
}

function withFs(fn: (t: ExecutionContext, f: TestFs) => void, opts = {}): (t: ExecutionContext) => void {
  return (t) => {
    const f = makeFs(opts);
    try {
      fn(t, f);
    } finally {
      f.cleanup();
    }
  };
}

test('requests before INIT get EIO; INIT negotiates version and flags', (t) => {
  withFs((t, f) => {
    const a = send(f.session, request(Op.GETATTR, [struct(GetattrIn, {})]));
    t.is(a?.error, EIO);
    const r = init(f.session, InitFlag.ASYNC_READ | InitFlag.POSIX_LOCKS | InitFlag.MAX_PAGES | InitFlag.DO_READDIRPLUS, 40);
    const o = initOut(r);
    t.is(o.major, 7);
    t.is(o.minor, 38);
    t.is(o.flags & InitFlag.POSIX_LOCKS, 0, 'POSIX locks are not offered');
    t.truthy(o.flags & InitFlag.ASYNC_READ);
    t.truthy(o.flags & InitFlag.DO_READDIRPLUS);
    t.is(o.flags & InitFlag.WRITEBACK_CACHE, 0, 'only flags the client offered');
    t.is(o.maxWrite, 1 << 20);
    t.is(o.maxPages, 256);
  })(t);
});

test('a second INIT (a rebooted guest) starts a fresh session: old node ids are gone', (t) => {
  withFs((t, f) => {
    init(f.session);
    fs.writeFileSync(path.join(f.dir, 'a'), 'hello');
    const a = entryOf(lookup(f, 1, 'a')).nodeid;
    t.true(fuseServerFdCount(f.session) >= 1);
    t.is(initOut(init(f.session)).major, 7, 'the second INIT is answered');
    t.is(fuseServerFdCount(f.session), 0, 'the old inodes were released');
    t.is(send(f.session, request(Op.GETATTR, [struct(GetattrIn, {})], { nodeid: a }))?.error, ENOENT, 'an old node id is unknown');
    t.is(entryOf(lookup(f, 1, 'a')).nodeid > 0, true);
  })(t);
});

test('INIT with an older minor answers that minor; a too-old client gets EPROTO', (t) => {
  withFs((t, f) => {
    t.is(initOut(init(f.session, 0, 31)).minor, 31);
  })(t);
  withFs((t, f) => {
    t.throws(() => init(f.session, 0, 26));
  })(t);
});

test('LOOKUP of a file, "." and ".." on the root stay inside; "/", empty and unterminated names are refused', withFs((t, f) => {
  init(f.session);
  fs.writeFileSync(path.join(f.dir, 'a'), 'hello');
  const a = lookup(f, 1, 'a');
  t.is(a.error, 0);
  const e = entryOf(a);
  t.is(e.size, 5n);
  t.is(e.ino, BigInt(fs.statSync(path.join(f.dir, 'a')).ino));
  const rootIno = BigInt(fs.statSync(f.dir).ino);
  const dd = lookup(f, 1, '..');
  t.is(dd.error, 0);
  t.is(entryOf(dd).nodeid, 1);
  t.is(entryOf(dd).ino, rootIno);
  t.is(entryOf(lookup(f, 1, '.')).nodeid, 1);
  t.is(lookup(f, 1, '../etc').error, EINVAL);
  t.is(lookup(f, 1, '/').error, EINVAL);
  t.is(lookup(f, 1, '').error, EINVAL);
  t.is(send(f.session, request(Op.LOOKUP, [Buffer.from('abc')]))?.error, EINVAL, 'no NUL');
  t.is(lookup(f, 1, 'missing').error, ENOENT);
  t.is(lookup(f, 12345, 'a').error, ENOENT, 'unknown parent');
  // A second lookup of the same file yields the same node id.
  t.is(entryOf(lookup(f, 1, 'a')).nodeid, e.nodeid);
}));

test('LOOKUP ".." of a subdirectory gives its parent, never above the root', withFs((t, f) => {
  init(f.session);
  fs.mkdirSync(path.join(f.dir, 'd'));
  const d = entryOf(lookup(f, 1, 'd')).nodeid;
  const up = lookup(f, d, '..');
  t.is(up.error, 0);
  t.is(entryOf(up).nodeid, 1);
  t.is(entryOf(lookup(f, entryOf(up).nodeid, '..')).nodeid, 1);
}));

test('GETATTR of the root and of a file; FORGET frees a node id', withFs((t, f) => {
  init(f.session);
  fs.writeFileSync(path.join(f.dir, 'x'), 'abc');
  const g = send(f.session, request(Op.GETATTR, [struct(GetattrIn, {})]));
  t.is(g?.error, 0);
  const at = Attr.decode(g?.body as Buffer, AttrOutHead.size);
  t.is(at.mode & 0o170000, 0o040000);
  const x = entryOf(lookup(f, 1, 'x')).nodeid;
  lookup(f, 1, 'x');
  const gx = send(f.session, request(Op.GETATTR, [struct(GetattrIn, {})], { nodeid: x }));
  t.is(Attr.decode(gx?.body as Buffer, AttrOutHead.size).size, 3n);
  // Two lookups: forgetting one keeps it, the second frees it.
  t.is(send(f.session, request(Op.FORGET, [struct(ForgetIn, { nlookup: 1n })], { nodeid: x })), null);
  t.is(send(f.session, request(Op.GETATTR, [struct(GetattrIn, {})], { nodeid: x }))?.error, 0);
  t.is(send(f.session, request(Op.FORGET, [struct(ForgetIn, { nlookup: 1n })], { nodeid: x })), null);
  t.is(send(f.session, request(Op.GETATTR, [struct(GetattrIn, {})], { nodeid: x }))?.error, ENOENT);
  // Forgetting the root never frees it.
  t.is(send(f.session, request(Op.FORGET, [struct(ForgetIn, { nlookup: 100n })], { nodeid: 1 })), null);
  t.is(send(f.session, request(Op.GETATTR, [struct(GetattrIn, {})]))?.error, 0);
  // BATCH_FORGET
  const y = entryOf(lookup(f, 1, 'x')).nodeid;
  t.is(y === x, false, 'node ids are not reused');
  const batch = Buffer.concat([struct(BatchForgetIn, { count: 1 }), struct(ForgetOne, { nodeid: BigInt(y), nlookup: 1n })]);
  t.is(send(f.session, request(Op.BATCH_FORGET, [batch])), null);
  t.is(send(f.session, request(Op.GETATTR, [struct(GetattrIn, {})], { nodeid: y }))?.error, ENOENT);
}));

test('OPEN + READ at an offset, through a scattered reply', withFs((t, f) => {
  init(f.session);
  const data = Buffer.alloc(100000);
  for (let i = 0; i < data.length; i++) data[i] = i % 251;
  fs.writeFileSync(path.join(f.dir, 'r'), data);
  const nodeid = entryOf(lookup(f, 1, 'r')).nodeid;
  const o = send(f.session, request(Op.OPEN, [struct(OpenIn, { flags: 0 })], { nodeid }));
  t.is(o?.error, 0);
  const fh = OpenOut.decode(o?.body as Buffer, 0).fh;
  const rd = send(f.session, request(Op.READ, [struct(ReadIn, { fh, offset: 1000n, size: 9000 })], { nodeid }), 0, [16, 4096, 4096, 2000]);
  t.is(rd?.error, 0);
  t.is(rd?.len, 16 + 9000);
  t.is(Buffer.compare(rd?.body as Buffer, data.subarray(1000, 10000)), 0);
  const eof = send(f.session, request(Op.READ, [struct(ReadIn, { fh, offset: 200000n, size: 4096 })], { nodeid }));
  t.is(eof?.len, 16);
  t.is(send(f.session, request(Op.RELEASE, [struct(ReleaseIn, { fh })], { nodeid }))?.error, 0);
  t.is(send(f.session, request(Op.READ, [struct(ReadIn, { fh, offset: 0n, size: 10 })], { nodeid }))?.error, -9);
}));

interface DirEntry { name: string; off: bigint; nodeid: number }

function readDir(f: TestFs, plus: boolean, size: number): { entries: DirEntry[]; calls: number } {
  const o = send(f.session, request(Op.OPENDIR, [struct(OpenIn, {})]));
  const fh = OpenOut.decode(o?.body as Buffer, 0).fh;
  const entries: DirEntry[] = [];
  let off = 0n;
  let calls = 0;
  for (;;) {
    const a = send(f.session, request(plus ? Op.READDIRPLUS : Op.READDIR, [struct(ReadIn, { fh, offset: off, size })]));
    calls++;
    if (a === null || a.error !== 0) throw new Error(`readdir error ${a?.error}`);
    if (a.body.length === 0) break;
    let p = 0;
    while (p < a.body.length) {
      const dp = p + (plus ? ENTRY_OUT_SIZE : 0);
      const d = Dirent.decode(a.body, dp);
      const name = a.body.subarray(dp + Dirent.size, dp + Dirent.size + d.namelen).toString();
      const nodeid = plus ? Number(EntryOutHead.decode(a.body, p).nodeid) : 0;
      entries.push({ name, off: d.off, nodeid });
      off = d.off;
      p += direntAlign((plus ? DIRENTPLUS_HEAD_SIZE : Dirent.size) + d.namelen);
    }
  }
  send(f.session, request(Op.RELEASEDIR, [struct(ReleaseIn, { fh })]));
  return { entries, calls };
}

test('READDIR and READDIRPLUS of 10,000 entries resume from offsets across many calls', withFs((t, f) => {
  init(f.session);
  const names = new Set<string>();
  for (let i = 0; i < 10000; i++) {
    const n = `file-${i}-${'x'.repeat(i % 40)}`;
    names.add(n);
    fs.writeFileSync(path.join(f.dir, n), '');
  }
  const r = readDir(f, false, 4096);
  const got = r.entries.map((e) => e.name).filter((n) => n !== '.' && n !== '..');
  t.is(got.length, 10000);
  t.is(new Set(got).size, 10000);
  t.is([...names].every((n) => got.includes(n)), true);
  t.is(r.calls > 50, true, 'many calls were needed');
  const p = readDir(f, true, 4096);
  const plusNames = p.entries.filter((e) => e.name !== '.' && e.name !== '..');
  t.is(plusNames.length, 10000);
  t.is(plusNames.every((e) => e.nodeid > 1), true, 'every entry was looked up');
  t.is(p.entries.filter((e) => e.name === '.' || e.name === '..').every((e) => e.nodeid === 0), true);
  // The looked-up entries are live: GETATTR works on one.
  const one = plusNames[1234] as DirEntry;
  t.is(send(f.session, request(Op.GETATTR, [struct(GetattrIn, {})], { nodeid: one.nodeid }))?.error, 0);
}));

test('closeFuseServer releases every inode and handle fd of a session that saw no DESTROY', withFs((t, f) => {
  init(f.session);
  fs.writeFileSync(path.join(f.dir, 'a'), 'x');
  const nodeid = entryOf(lookup(f, 1, 'a')).nodeid;
  send(f.session, request(Op.OPEN, [struct(OpenIn, { flags: 0 })], { nodeid }));
  t.is(fuseServerFdCount(f.session), 2);
  closeFuseServer(f.session);
  t.is(fuseServerFdCount(f.session), 0);
  t.is(send(f.session, request(Op.GETATTR, [struct(GetattrIn, {})]))?.error, EIO, 'a new INIT is needed');
  init(f.session);
  t.is(lookup(f, 1, 'a').error, 0);
}));
