// The FUSE ABI codec: struct sizes against linux/fuse.h, encode/decode roundtrips of
// every struct, and the decoder facing truncated, oversized, inconsistent and random
// requests through handle() over a real passthrough of a temp dir.
import test from 'ava';
import fs from 'node:fs';
import * as abi from '../src/fs/fuse-abi.js';
import { GetattrIn, InHeader, Op, OutHeader, ReadIn, SetattrIn, type FieldType, type Struct } from '../src/fs/fuse-abi.js';
import { makeFs, init, send, request, struct, cstr, split } from './fs-helpers.js';

const EINVAL = -22;

// Sizes from /usr/include/linux/fuse.h (sizeof on x86_64/aarch64).
const expected: Record<string, number> = {
  InHeader: 40, OutHeader: 16, Attr: 88, EntryOutHead: 40, AttrOutHead: 16, InitIn: 64, InitOut: 64,
  ForgetIn: 8, ForgetOne: 16, BatchForgetIn: 8, GetattrIn: 16, MknodIn: 16, MkdirIn: 8, RenameIn: 8,
  Rename2In: 16, LinkIn: 8, SetattrIn: 88, OpenIn: 8, CreateIn: 16, OpenOut: 16, ReleaseIn: 24, FlushIn: 24,
  ReadIn: 40, WriteIn: 40, WriteOut: 8, Kstatfs: 80, FsyncIn: 16, SetxattrIn: 16, GetxattrIn: 8, GetxattrOut: 8,
  AccessIn: 8, InterruptIn: 8, FallocateIn: 32, LseekIn: 24, LseekOut: 8, CopyFileRangeIn: 56, SyncfsIn: 8,
  Dirent: 24, ExtHeader: 8, SuppGroupsHead: 4, Secctx: 8, SecctxHeader: 8,
};

type AnyStruct = Struct<Record<string, FieldType>>;
const structs = Object.entries(abi).filter(([, v]) => typeof v === 'object' && v !== null && 'encode' in v) as [string, AnyStruct][];

test('every struct has the size linux/fuse.h gives it', (t) => {
  t.true(structs.length >= Object.keys(expected).length);
  for (const [name, S] of structs) t.is(S.size, expected[name], name);
  t.is(abi.ENTRY_OUT_SIZE, 128);
  t.is(abi.ATTR_OUT_SIZE, 104);
  t.is(abi.DIRENTPLUS_HEAD_SIZE, 152);
});

function randomValue(type: FieldType): number | bigint {
  const r32 = () => Math.floor(Math.random() * 0x100000000);
  switch (type) {
    case 'u16': return Math.floor(Math.random() * 0x10000);
    case 'u32': return r32();
    case 'i32': return r32() - 0x80000000;
    case 'u64': return (BigInt(r32()) << 32n) | BigInt(r32());
    case 'i64': return BigInt.asIntN(64, (BigInt(r32()) << 32n) | BigInt(r32()));
    default: return 0;
  }
}

test('encode/decode roundtrip of every struct, at an unaligned offset', (t) => {
  for (const [name, S] of structs) {
    for (let round = 0; round < 20; round++) {
      const v: Record<string, number | bigint> = {};
      for (const [k, type] of Object.entries(S.fields)) v[k] = randomValue(type);
      const buf = Buffer.alloc(S.size + 11, 0xee);
      S.encode(buf, 3, v as Parameters<AnyStruct["encode"]>[2]);
      t.is(buf[2], 0xee, `${name} writes before its start`);
      t.is(buf[3 + S.size], 0xee, `${name} writes past its end`);
      t.deepEqual(S.decode(buf, 3), v, name);
    }
  }
});

test('offsets of hot-path fields match the header', (t) => {
  t.is(InHeader.off.unique, 8);
  t.is(InHeader.off.nodeid, 16);
  t.is(InHeader.off.totalExtlen, 36);
  t.is(SetattrIn.off.mode, 68);
  t.is(SetattrIn.off.uid, 76);
  t.is(abi.WriteIn.off.writeFlags, 20);
  t.is(abi.InitOut.off.maxPages, 28);
  t.is(abi.InitOut.off.flags2, 32);
  t.is(abi.CopyFileRangeIn.off.len, 40);
});

test('truncated, oversized and inconsistent requests get EINVAL with the right unique', (t) => {
  const f = makeFs();
  t.teardown(() => f.cleanup());
  init(f.session);
  const good = request(Op.LOOKUP, [cstr('name')], { unique: 77n });
  for (let n = 16; n < good.length; n++) {
    const a = send(f.session, good.subarray(0, n));
    t.is(a?.error, EINVAL, `prefix of ${n} bytes`);
    t.is(a?.unique, 77n);
  }
  t.is(f.session.handle([good.subarray(0, 10)], [Buffer.alloc(100)]) >= 0, true, 'under 16 bytes: no throw');
  // len field larger, smaller than the bytes; extension length beyond the request.
  const big = Buffer.from(good);
  big.writeUInt32LE(good.length + 100, 0);
  t.is(send(f.session, big)?.error, EINVAL);
  const small = Buffer.concat([good, Buffer.alloc(8)]);
  t.is(send(f.session, small)?.error, EINVAL);
  const ext = Buffer.from(good);
  ext.writeUInt16LE(1000, InHeader.off.totalExtlen);
  t.is(send(f.session, ext)?.error, EINVAL);
  // Arguments shorter than the fixed struct; a name without NUL.
  t.is(send(f.session, request(Op.GETATTR, [Buffer.alloc(8)]))?.error, EINVAL);
  t.is(send(f.session, request(Op.READ, [Buffer.alloc(ReadIn.size - 1)]))?.error, EINVAL);
  t.is(send(f.session, request(Op.LOOKUP, [Buffer.from('abc')]))?.error, EINVAL);
  t.is(send(f.session, request(Op.MKDIR, [Buffer.alloc(8), Buffer.from('x')]))?.error, EINVAL);
  // A request beyond the size limit.
  const huge = request(Op.SETXATTR, [Buffer.alloc(8 * 1024 * 1024)]);
  t.is(send(f.session, huge)?.error, EINVAL);
  // Unknown opcodes and the ENOSYS set.
  for (const op of [0, 7, 19, 99, 4096, Op.GETLK, Op.SETLK, Op.SETLKW, Op.IOCTL, Op.BMAP, Op.POLL, Op.SETUPMAPPING]) {
    t.is(send(f.session, request(op, [Buffer.alloc(64)]))?.error, -38, `opcode ${op}`);
  }
  t.is(send(f.session, request(Op.INTERRUPT, [Buffer.alloc(8)])), null, 'INTERRUPT has no reply');
  // A reply room too small for the answer: EIO header rather than an overrun.
  const a = send(f.session, request(Op.GETATTR, [struct(GetattrIn, {})]), 0, [16, 20]);
  t.is(a?.error, -5);
});

test('a request scattered over many one-byte segments decodes like a whole one', (t) => {
  const f = makeFs();
  t.teardown(() => f.cleanup());
  init(f.session);
  fs.writeFileSync(`${f.dir}/seg`, 'x');
  const req = request(Op.LOOKUP, [cstr('seg')]);
  const cuts = Array.from({ length: req.length - 1 }, (_, i) => i + 1);
  const a = send(f.session, split(req, ...cuts), 0, Array.from({ length: 200 }, () => 1));
  t.is(a?.error, 0);
  t.is(a?.len, 16 + abi.ENTRY_OUT_SIZE);
});

function openFds(): number {
  return fs.readdirSync('/proc/self/fd').length;
}

test('fuzz: thousands of random and mutated requests never throw and always get well-formed replies', (t) => {
  const f = makeFs({ xattr: true });
  t.teardown(() => f.cleanup());
  fs.mkdirSync(`${f.dir}/d`);
  fs.writeFileSync(`${f.dir}/d/file`, 'content');
  const baseFds = openFds();
  init(f.session);
  const seeds = [
    request(Op.LOOKUP, [cstr('d')]), request(Op.GETATTR, [struct(GetattrIn, {})], { nodeid: 2 }),
    request(Op.OPENDIR, [Buffer.alloc(8)]), request(Op.READDIRPLUS, [struct(ReadIn, { fh: 1n, size: 4096 })]),
    request(Op.READ, [struct(ReadIn, { fh: 2n, size: 100 })]), request(Op.SETATTR, [struct(SetattrIn, { valid: 1, mode: 0o755 })]),
    request(Op.RENAME2, [Buffer.alloc(16), cstr('a'), cstr('b')]), request(Op.BATCH_FORGET, [Buffer.alloc(40)]),
    request(Op.SETXATTR, [Buffer.alloc(8), cstr('user.x'), Buffer.from('v')]),
    request(Op.WRITE, [struct(abi.WriteIn, { fh: 1n, size: 4 }), Buffer.from('data')]),
  ];
  let replies = 0;
  for (let i = 0; i < 4000; i++) {
    let req: Buffer;
    if (i % 3 === 0) {
      req = Buffer.alloc(Math.floor(Math.random() * 200));
      for (let j = 0; j < req.length; j++) req[j] = Math.floor(Math.random() * 256);
      if (req.length >= 40 && i % 2 === 0) {
        req.writeUInt32LE(req.length, 0);
        req.writeUInt32LE(1 + Math.floor(Math.random() * 52), 4);
        req.writeUInt16LE(0, InHeader.off.totalExtlen);
      }
    } else {
      req = Buffer.from(seeds[i % seeds.length] as Buffer);
      const flips = 1 + Math.floor(Math.random() * 4);
      for (let j = 0; j < flips; j++) req[40 + Math.floor(Math.random() * (req.length - 40))] = Math.floor(Math.random() * 256);
      if (i % 7 === 0) req[16] = Math.floor(Math.random() * 6); // another small node id
    }
    if (req.length >= 8 && req.readUInt32LE(4) === Op.DESTROY) req.writeUInt32LE(Op.GETATTR, 4);
    const segs = req.length > 4 && i % 2 === 1 ? split(req, Math.floor(req.length / 3)) : [req];
    const out = [Buffer.alloc(16), Buffer.alloc(8192)];
    let n = 0;
    t.notThrows(() => {
      n = f.session.handle(segs, out);
    });
    if (n === 0) continue;
    replies++;
    const flat = Buffer.concat(out);
    const h = OutHeader.decode(flat, 0);
    t.is(h.len, n);
    t.true(h.error <= 0 && h.error > -4096, `error ${h.error}`);
    if (h.error < 0) t.is(n, 16);
    if (req.length >= 16) t.is(h.unique, req.readBigUInt64LE(8));
  }
  t.true(replies > 2000);
  // DESTROY releases every inode and handle: back to the fds we started with.
  const d = send(f.session, request(Op.DESTROY, []));
  t.is(d?.error, 0);
  t.true(f.session.destroyed);
  t.is(openFds(), baseFds);
});
