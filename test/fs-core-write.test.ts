// The modifying side of the FUSE core through handle(): MKDIR, CREATE, WRITE/READ past
// 4 GiB, SETATTR, SYMLINK/READLINK, LINK, MKNOD, UNLINK/RMDIR, RENAME2 flags, TMPFILE,
// FALLOCATE, LSEEK, COPY_FILE_RANGE, STATFS, xattrs, caller credentials, --readonly.
import test, { type ExecutionContext } from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import {
  Attr, AttrOutHead, CopyFileRangeIn, CreateIn, ENTRY_OUT_SIZE, EntryOutHead, FATTR, FallocateIn, GetxattrIn,
  GetxattrOut, Kstatfs, LinkIn, LseekIn, LseekOut, MkdirIn, MknodIn, Op, OpenIn, OpenOut, ReadIn, Rename2In,
  RenameIn, SetattrIn, SetxattrIn, SETXATTR_IN_COMPAT_SIZE, WriteIn, WriteOut, AccessIn, FlushIn, FsyncIn, ReleaseIn, RENAME_EXCHANGE, RENAME_NOREPLACE, RENAME_WHITEOUT,
} from '../src/fs/fuse-abi.js';
import { makeFs, init, send, request, struct, cstr, split, type TestFs, type Answer, type ReqOpts } from './fs-helpers.js';

const O_RDWR = 2;
const O_WRONLY = 1;

function withFs(fn: (t: ExecutionContext, f: TestFs) => void, opts = {}): (t: ExecutionContext) => void {
  return (t) => {
    const f = makeFs(opts);
    try {
      init(f.session);
      fn(t, f);
    } finally {
      f.cleanup();
    }
  };
}

function ok(a: Answer | null): Answer {
  if (a === null) throw new Error('no reply');
  if (a.error !== 0) throw new Error(`error ${a.error}`);
  return a;
}

const nodeOf = (a: Answer): number => Number(EntryOutHead.decode(a.body, 0).nodeid);
const attrOfEntry = (a: Answer) => Attr.decode(a.body, EntryOutHead.size);

function create(f: TestFs, parent: number, name: string, mode = 0o644, o: ReqOpts = {}): { nodeid: number; fh: bigint; a: Answer } {
  const a = ok(send(f.session, request(Op.CREATE, [struct(CreateIn, { flags: O_RDWR, mode: 0o100000 | mode }), cstr(name)], { nodeid: parent, ...o })));
  return { nodeid: nodeOf(a), fh: OpenOut.decode(a.body, ENTRY_OUT_SIZE).fh, a };
}

function write(f: TestFs, nodeid: bigint | number, fh: bigint, offset: bigint, data: Buffer, segs?: number[]): Answer | null {
  const req = request(Op.WRITE, [struct(WriteIn, { fh, offset, size: data.length }), data], { nodeid });
  return send(f.session, segs ? split(req, ...segs) : req);
}

test('MKDIR, CREATE, WRITE and READ at 5 GiB (sparse), with scattered requests', withFs((t, f) => {
  const d = ok(send(f.session, request(Op.MKDIR, [struct(MkdirIn, { mode: 0o755 }), cstr('dir')])));
  t.is(attrOfEntry(d).mode, 0o040755);
  const { nodeid, fh } = create(f, nodeOf(d), 'big');
  const data = Buffer.from('x'.repeat(10000) + 'end');
  const off = 5n * 1024n ** 3n;
  // Header split mid-struct, payload over three segments.
  const w = ok(write(f, nodeid, fh, off, data, [10, 60, 90, 5000]));
  t.is(WriteOut.decode(w.body, 0).size, data.length);
  const st = fs.statSync(path.join(f.dir, 'dir', 'big'));
  t.is(st.size, Number(off) + data.length);
  t.true(st.blocks * 512 < 1024 * 1024, 'sparse');
  const r = ok(send(f.session, request(Op.READ, [struct(ReadIn, { fh, offset: off + 9990n, size: 100 })], { nodeid }), 0, [16, 7, 100]));
  t.is(r.body.toString(), 'xxxxxxxxxxend');
  const hostFd = fs.openSync(path.join(f.dir, 'dir', 'big'), 'r');
  const b = Buffer.alloc(3);
  fs.readSync(hostFd, b, 0, 3, Number(off) + 10000);
  fs.closeSync(hostFd);
  t.is(b.toString(), 'end');
}));

test('WRITE with a size that disagrees with its payload is EINVAL', withFs((t, f) => {
  const { fh } = create(f, 1, 'w');
  const req = request(Op.WRITE, [struct(WriteIn, { fh, offset: 0n, size: 100 }), Buffer.alloc(50)]);
  t.is(send(f.session, req)?.error, -22);
}));

test('SETATTR: mode, size, times (incl. NOW), through a handle too', withFs((t, f) => {
  const { nodeid, fh } = create(f, 1, 's');
  const set = (v: Parameters<typeof SetattrIn.encode>[2]) => send(f.session, request(Op.SETATTR, [struct(SetattrIn, v)], { nodeid }));
  let a = ok(set({ valid: FATTR.MODE, mode: 0o4711 }));
  t.is(Attr.decode(a.body, AttrOutHead.size).mode, 0o104711);
  a = ok(set({ valid: FATTR.SIZE, size: 123456n }));
  t.is(Attr.decode(a.body, AttrOutHead.size).size, 123456n);
  ok(set({ valid: FATTR.SIZE | FATTR.FH, fh, size: 10n }));
  t.is(fs.statSync(path.join(f.dir, 's')).size, 10);
  ok(set({ valid: FATTR.ATIME | FATTR.MTIME, atime: 1000n, atimensec: 5, mtime: 2000n, mtimensec: 7 }));
  const st = fs.statSync(path.join(f.dir, 's'), { bigint: true });
  t.is(st.mtimeNs, 2000n * 1000000000n + 7n);
  t.is(st.atimeNs, 1000n * 1000000000n + 5n);
  ok(set({ valid: FATTR.MTIME_NOW | FATTR.MTIME }));
  t.true(fs.statSync(path.join(f.dir, 's')).mtimeMs > Date.now() - 60000);
  ok(set({ valid: FATTR.UID | FATTR.GID, uid: 1234, gid: 4321 }));
  t.is(fs.statSync(path.join(f.dir, 's')).uid, 1234);
  t.is(fs.statSync(path.join(f.dir, 's')).gid, 4321);
}));

test('SYMLINK, READLINK, LINK, MKNOD fifo, UNLINK, RMDIR', withFs((t, f) => {
  const s = ok(send(f.session, request(Op.SYMLINK, [cstr('ln'), cstr('/etc/passwd')])));
  t.is(fs.readlinkSync(path.join(f.dir, 'ln')), '/etc/passwd');
  const rl = ok(send(f.session, request(Op.READLINK, [], { nodeid: nodeOf(s) })));
  t.is(rl.body.toString(), '/etc/passwd');
  // Attributes of the link itself, never of its (host) target.
  t.is(attrOfEntry(s).mode & 0o170000, 0o120000);
  const { nodeid } = create(f, 1, 'orig');
  const l = ok(send(f.session, request(Op.LINK, [struct(LinkIn, { oldnodeid: BigInt(nodeid) }), cstr('hard')])));
  t.is(nodeOf(l), nodeid);
  t.is(attrOfEntry(l).nlink, 2);
  const n = ok(send(f.session, request(Op.MKNOD, [struct(MknodIn, { mode: 0o010644 }), cstr('fifo')])));
  t.true(fs.lstatSync(path.join(f.dir, 'fifo')).isFIFO());
  t.is(attrOfEntry(n).mode, 0o010644);
  ok(send(f.session, request(Op.UNLINK, [cstr('hard')])));
  t.false(fs.existsSync(path.join(f.dir, 'hard')));
  ok(send(f.session, request(Op.MKDIR, [struct(MkdirIn, { mode: 0o700 }), cstr('d')])));
  ok(send(f.session, request(Op.RMDIR, [cstr('d')])));
  t.false(fs.existsSync(path.join(f.dir, 'd')));
  t.is(send(f.session, request(Op.UNLINK, [cstr('..')]))?.error, -22);
  t.is(send(f.session, request(Op.MKDIR, [struct(MkdirIn, { mode: 0o700 }), cstr('a/b')]))?.error, -22);
}));

test('RENAME and RENAME2 with NOREPLACE, EXCHANGE, WHITEOUT', withFs((t, f) => {
  fs.writeFileSync(path.join(f.dir, 'a'), 'A');
  fs.writeFileSync(path.join(f.dir, 'b'), 'B');
  const r2 = (flags: number, from: string, to: string) =>
    send(f.session, request(Op.RENAME2, [struct(Rename2In, { newdir: 1n, flags }), cstr(from), cstr(to)]));
  t.is(r2(RENAME_NOREPLACE, 'a', 'b')?.error, -17);
  ok(r2(RENAME_EXCHANGE, 'a', 'b'));
  t.is(fs.readFileSync(path.join(f.dir, 'a'), 'utf8'), 'B');
  ok(r2(RENAME_WHITEOUT, 'a', 'c'));
  t.true(fs.lstatSync(path.join(f.dir, 'a')).isCharacterDevice(), 'whiteout left behind');
  ok(send(f.session, request(Op.RENAME, [struct(RenameIn, { newdir: 1n }), cstr('c'), cstr('d')])));
  t.is(fs.readFileSync(path.join(f.dir, 'd'), 'utf8'), 'B');
  t.is(r2(0x80, 'b', 'e')?.error, -22);
}));

test('TMPFILE, FALLOCATE, LSEEK SEEK_DATA/SEEK_HOLE, COPY_FILE_RANGE, STATFS', withFs((t, f) => {
  const tmp = ok(send(f.session, request(Op.TMPFILE, [struct(CreateIn, { flags: O_RDWR, mode: 0o100600 }), cstr('/')])));
  t.is(attrOfEntry(tmp).nlink, 0);
  const { nodeid, fh } = create(f, 1, 'f');
  ok(send(f.session, request(Op.FALLOCATE, [struct(FallocateIn, { fh, offset: 2097152n, length: 65536n })], { nodeid })));
  t.is(fs.statSync(path.join(f.dir, 'f')).size, 2097152 + 65536);
  ok(write(f, nodeid, fh, 1048576n, Buffer.alloc(4096, 1)));
  const seek = (offset: bigint, whence: number) => send(f.session, request(Op.LSEEK, [struct(LseekIn, { fh, offset, whence })], { nodeid }));
  const d = ok(seek(0n, 3));
  t.is(LseekOut.decode(d.body, 0).offset, 1048576n);
  const h = ok(seek(1048576n, 4));
  t.is(LseekOut.decode(h.body, 0).offset, 1048576n + 4096n);
  ok(write(f, nodeid, fh, 0n, Buffer.from('copy me')));
  const c2 = create(f, 1, 'g');
  const c = ok(send(f.session, request(Op.COPY_FILE_RANGE, [struct(CopyFileRangeIn, {
    fhIn: fh, offIn: 0n, nodeidOut: BigInt(c2.nodeid), fhOut: c2.fh, offOut: 3n, len: 7n,
  })], { nodeid })));
  t.is(WriteOut.decode(c.body, 0).size, 7);
  t.is(fs.readFileSync(path.join(f.dir, 'g')).subarray(3).toString(), 'copy me');
  const sf = ok(send(f.session, request(Op.STATFS, [])));
  const k = Kstatfs.decode(sf.body, 0);
  t.true(k.blocks > 0n);
  t.is(k.namelen, 255);
}));

test('xattrs: ENOSYS without --xattr', withFs((t, f) => {
  t.is(send(f.session, request(Op.LISTXATTR, [struct(GetxattrIn, { size: 0 })]))?.error, -38);
}));

test('xattrs with --xattr: set, size probe, get, ERANGE, list, remove', withFs((t, f) => {
  const { nodeid } = create(f, 1, 'x');
  const value = Buffer.from('some value');
  ok(send(f.session, request(Op.SETXATTR, [struct(SetxattrIn, { size: value.length }).subarray(0, SETXATTR_IN_COMPAT_SIZE), cstr('user.k'), value], { nodeid })));
  const probe = ok(send(f.session, request(Op.GETXATTR, [struct(GetxattrIn, { size: 0 }), cstr('user.k')], { nodeid })));
  t.is(GetxattrOut.decode(probe.body, 0).size, value.length);
  const got = ok(send(f.session, request(Op.GETXATTR, [struct(GetxattrIn, { size: 100 }), cstr('user.k')], { nodeid })));
  t.is(got.body.toString(), 'some value');
  t.is(send(f.session, request(Op.GETXATTR, [struct(GetxattrIn, { size: 3 }), cstr('user.k')], { nodeid }))?.error, -34);
  const list = ok(send(f.session, request(Op.LISTXATTR, [struct(GetxattrIn, { size: 1000 })], { nodeid })));
  t.true(list.body.toString().split('\0').includes('user.k'));
  ok(send(f.session, request(Op.REMOVEXATTR, [cstr('user.k')], { nodeid })));
  t.is(send(f.session, request(Op.GETXATTR, [struct(GetxattrIn, { size: 0 }), cstr('user.k')], { nodeid }))?.error, -61);
}, { xattr: true }));

test('creation runs with the caller uid/gid; the device thread gets its ids back', withFs((t, f) => {
  fs.chmodSync(f.dir, 0o777);
  create(f, 1, 'owned', 0o644, { uid: 1000, gid: 1001 });
  ok(send(f.session, request(Op.MKDIR, [struct(MkdirIn, { mode: 0o755 }), cstr('odir')], { uid: 1000, gid: 1001 })));
  for (const n of ['owned', 'odir']) {
    const st = fs.statSync(path.join(f.dir, n));
    t.is(st.uid, 1000);
    t.is(st.gid, 1001);
  }
  t.is(process.geteuid?.(), 0);
  // The caller's permissions apply: uid 1000 cannot create in a root-owned 0755 dir.
  fs.mkdirSync(path.join(f.dir, 'locked'), { mode: 0o755 });
  const locked = ok(send(f.session, request(Op.LOOKUP, [cstr('locked')])));
  t.is(send(f.session, request(Op.MKDIR, [struct(MkdirIn, { mode: 0o755 }), cstr('no')], { nodeid: nodeOf(locked), uid: 1000, gid: 1000 }))?.error, -13);
  fs.writeFileSync(path.join(f.dir, 'after'), 'root still');
  t.is(fs.statSync(path.join(f.dir, 'after')).uid, 0);
}));

test('a WRITE with FUSE_WRITE_KILL_SUIDGID by another user clears the setuid bit', withFs((t, f) => {
  const p = path.join(f.dir, 'suid');
  fs.writeFileSync(p, 'abc');
  fs.chmodSync(p, 0o4777);
  const nodeid = nodeOf(ok(send(f.session, request(Op.LOOKUP, [cstr('suid')]))));
  const fh = OpenOut.decode(ok(send(f.session, request(Op.OPEN, [struct(OpenIn, { flags: O_WRONLY })], { nodeid }))).body, 0).fh;
  const data = Buffer.from('zz');
  ok(send(f.session, request(Op.WRITE, [struct(WriteIn, { fh, offset: 0n, size: 2, writeFlags: 4 }), data], { nodeid, uid: 1000, gid: 1000 })));
  t.is(fs.statSync(p).mode & 0o7777, 0o777);
}));

test('--readonly: every modifying request is EROFS, reads work', withFs((t, f) => {
  fs.writeFileSync(path.join(f.dir, 'r'), 'data');
  const nodeid = nodeOf(ok(send(f.session, request(Op.LOOKUP, [cstr('r')]))));
  const erofs = -30;
  t.is(send(f.session, request(Op.MKDIR, [struct(MkdirIn, { mode: 0o755 }), cstr('d')]))?.error, erofs);
  t.is(send(f.session, request(Op.CREATE, [struct(CreateIn, { flags: O_RDWR, mode: 0o644 }), cstr('c')]))?.error, erofs);
  t.is(send(f.session, request(Op.UNLINK, [cstr('r')]))?.error, erofs);
  t.is(send(f.session, request(Op.SETATTR, [struct(SetattrIn, { valid: FATTR.MODE, mode: 0o600 })], { nodeid }))?.error, erofs);
  t.is(send(f.session, request(Op.OPEN, [struct(OpenIn, { flags: O_RDWR })], { nodeid }))?.error, erofs);
  t.is(send(f.session, request(Op.RENAME, [struct(RenameIn, { newdir: 1n }), cstr('r'), cstr('s')]))?.error, erofs);
  t.is(send(f.session, request(Op.SYMLINK, [cstr('l'), cstr('r')]))?.error, erofs);
  t.is(send(f.session, request(Op.LINK, [struct(LinkIn, { oldnodeid: BigInt(nodeid) }), cstr('h')]))?.error, erofs);
  t.is(send(f.session, request(Op.MKNOD, [struct(MknodIn, { mode: 0o010644 }), cstr('p')]))?.error, erofs);
  t.is(send(f.session, request(Op.TMPFILE, [struct(CreateIn, { flags: O_RDWR, mode: 0o644 }), cstr('/')]))?.error, erofs);
  const o = ok(send(f.session, request(Op.OPEN, [struct(OpenIn, { flags: 0 })], { nodeid })));
  const fh = OpenOut.decode(o.body, 0).fh;
  t.is(ok(send(f.session, request(Op.READ, [struct(ReadIn, { fh, offset: 0n, size: 10 })], { nodeid }))).body.toString(), 'data');
  t.is(send(f.session, request(Op.WRITE, [struct(WriteIn, { fh, offset: 0n, size: 1 }), Buffer.from('x')], { nodeid }))?.error, erofs);
  t.is(send(f.session, request(Op.FALLOCATE, [struct(FallocateIn, { fh, offset: 0n, length: 10n })], { nodeid }))?.error, erofs);
  t.is(fs.readFileSync(path.join(f.dir, 'r'), 'utf8'), 'data');
}, { readonly: true }));

test('CREATE with O_EXCL on an existing name is EEXIST; LINK as another uid', withFs((t, f) => {
  fs.writeFileSync(path.join(f.dir, 'e'), '');
  const O_EXCL = 0o200;
  const a = send(f.session, request(Op.CREATE, [struct(CreateIn, { flags: O_RDWR | O_EXCL | 0o100, mode: 0o644 }), cstr('e')]));
  t.is(a?.error, -17);
  fs.chmodSync(f.dir, 0o777);
  const { nodeid } = create(f, 1, 'mine', 0o644, { uid: 1000, gid: 1000 });
  ok(send(f.session, request(Op.LINK, [struct(LinkIn, { oldnodeid: BigInt(nodeid) }), cstr('mine2')], { uid: 1000, gid: 1000 })));
  t.is(fs.statSync(path.join(f.dir, 'mine')).nlink, 2);
}));

test('xattrs of a symlink go through the O_PATH fd, never its target', withFs((t, f) => {
  fs.writeFileSync(path.join(f.dir, 'target'), '');
  fs.symlinkSync('target', path.join(f.dir, 'sl'));
  const nodeid = nodeOf(ok(send(f.session, request(Op.LOOKUP, [cstr('sl')]))));
  const v = Buffer.from('on-link');
  ok(send(f.session, request(Op.SETXATTR, [struct(SetxattrIn, { size: v.length }).subarray(0, SETXATTR_IN_COMPAT_SIZE), cstr('trusted.t'), v], { nodeid })));
  const got = ok(send(f.session, request(Op.GETXATTR, [struct(GetxattrIn, { size: 64 }), cstr('trusted.t')], { nodeid })));
  t.is(got.body.toString(), 'on-link');
  const list = ok(send(f.session, request(Op.LISTXATTR, [struct(GetxattrIn, { size: 0 })], { nodeid })));
  t.true(GetxattrOut.decode(list.body, 0).size >= 10);
  const tNode = nodeOf(ok(send(f.session, request(Op.LOOKUP, [cstr('target')]))));
  t.is(send(f.session, request(Op.GETXATTR, [struct(GetxattrIn, { size: 64 }), cstr('trusted.t')], { nodeid: tNode }))?.error, -61);
  ok(send(f.session, request(Op.REMOVEXATTR, [cstr('trusted.t')], { nodeid })));
}, { xattr: true }));

test('OPEN of anything but a regular file is refused (a guest never opens host devices or fifos)', withFs((t, f) => {
  ok(send(f.session, request(Op.MKNOD, [struct(MknodIn, { mode: 0o020600, rdev: (1 << 8) | 3 }), cstr('null')])));
  ok(send(f.session, request(Op.MKNOD, [struct(MknodIn, { mode: 0o010600 }), cstr('fifo')])));
  t.true(fs.lstatSync(path.join(f.dir, 'null')).isCharacterDevice());
  t.is(fs.lstatSync(path.join(f.dir, 'null')).rdev, fs.statSync('/dev/null').rdev, 'rdev encoding round-trips');
  for (const [name, err] of [['null', -6], ['fifo', -6]] as const) {
    const nodeid = nodeOf(ok(send(f.session, request(Op.LOOKUP, [cstr(name)]))));
    t.is(send(f.session, request(Op.OPEN, [struct(OpenIn, { flags: O_RDWR })], { nodeid }))?.error, err, name);
  }
  t.is(send(f.session, request(Op.OPEN, [struct(OpenIn, { flags: 0 })], { nodeid: 1 }))?.error, -21);
  ok(send(f.session, request(Op.SYNCFS, [Buffer.alloc(8)])));
}));

test('ACCESS checks the caller against the mode bits; FLUSH, FSYNC, FSYNCDIR, RELEASEDIR succeed', withFs((t, f) => {
  const p = path.join(f.dir, 'acc');
  fs.writeFileSync(p, '');
  fs.chmodSync(p, 0o640);
  fs.chownSync(p, 1000, 2000);
  const nodeid = nodeOf(ok(send(f.session, request(Op.LOOKUP, [cstr('acc')]))));
  const access = (mask: number, uid: number, gid: number) =>
    send(f.session, request(Op.ACCESS, [struct(AccessIn, { mask })], { nodeid, uid, gid }))?.error;
  t.is(access(6, 1000, 1000), 0, 'owner rw');
  t.is(access(1, 1000, 1000), -13, 'owner has no x');
  t.is(access(4, 1500, 2000), 0, 'group r');
  t.is(access(2, 1500, 2000), -13, 'group no w');
  t.is(access(4, 1500, 1500), -13, 'other nothing');
  t.is(access(6, 0, 0), 0, 'root rw');
  t.is(access(1, 0, 0), -13, 'root needs some x bit');
  t.is(access(0, 1500, 1500), 0, 'F_OK');
  const fh = OpenOut.decode(ok(send(f.session, request(Op.OPEN, [struct(OpenIn, { flags: O_RDWR })], { nodeid }))).body, 0).fh;
  ok(send(f.session, request(Op.FLUSH, [struct(FlushIn, { fh })], { nodeid })));
  ok(send(f.session, request(Op.FSYNC, [struct(FsyncIn, { fh, fsyncFlags: 1 })], { nodeid })));
  const dh = OpenOut.decode(ok(send(f.session, request(Op.OPENDIR, [struct(OpenIn, {})]))).body, 0).fh;
  ok(send(f.session, request(Op.FSYNCDIR, [struct(FsyncIn, { fh: dh })])));
  ok(send(f.session, request(Op.RELEASEDIR, [struct(ReleaseIn, { fh: dh })])));
  t.is(send(f.session, request(Op.FSYNCDIR, [struct(FsyncIn, { fh: dh })]))?.error, -9);
}));
