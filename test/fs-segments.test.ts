// The core over Segments, the virtqueue's path (src/fs/session.ts): the small part of a
// request is copied before it is used (a guest rewriting its request after the device took
// it changes nothing), and READ/WRITE move data by host address with preadv/pwritev,
// IOV_MAX ranges per call, into and out of more ranges than one call takes.
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import koffi from 'koffi';
import { Segments, type FuseSession } from '../src/fs/session.js';
import { Request, IOV_MAX } from '../src/fs/request.js';
import { parseName, newNameRef } from '../src/fs/names.js';
import { CreateIn, ENTRY_OUT_SIZE, Op, OpenOut, OutHeader, ReadIn, ReleaseIn, WriteIn, WriteOut } from '../src/fs/fuse-abi.js';
import { cstr, init, makeFs, request, struct } from './fs-helpers.js';

/** Segments over `bufs` with their real host addresses (what guest memory ranges carry). */
function addressed(bufs: Buffer[]): Segments {
  const s = new Segments();
  for (const b of bufs) s.push(b, 0, b.length, Number(koffi.address(b)));
  return s;
}

/** The session's Segments entry point (the FUSE core has one). */
function handleSegments(session: FuseSession, readable: Segments, writable: Segments): number {
  if (session.handleSegments === undefined) throw new Error('the FUSE core has no handleSegments');
  return session.handleSegments(readable, writable);
}

/** Cut `b` into copies of `size` bytes (the last one shorter). */
function chop(b: Buffer, size: number): Buffer[] {
  const out: Buffer[] = [];
  for (let i = 0; i < b.length; i += size) out.push(Buffer.from(b.subarray(i, i + size)));
  return out;
}

test('a request is copied at load: rewriting the transport buffer afterwards changes nothing', (t) => {
  const req = new Request(1 << 20);
  const raw = request(Op.LOOKUP, [cstr('innocent')]);
  const segs = new Segments().setBuffers([raw]);
  t.is(req.load(segs), null);
  // What a second vCPU could do after the name was checked: make it climb out.
  raw.write('../../etc\0', 40);
  const name = newNameRef();
  t.is(parseName(req, req.args, name), 0);
  t.is(name.buf.toString('latin1'), 'innocent\0');
  t.not(req.buf, raw, 'the header and arguments live in a buffer of the core');
});

test('a name without its NUL inside the arguments is refused even when the next bytes hold one', (t) => {
  const req = new Request(1 << 20);
  const raw = Buffer.concat([request(Op.LOOKUP, [Buffer.from('abc')]), Buffer.from([0])]);
  // Only the request's own 43 bytes are handed over; the NUL after them is not its.
  const segs = new Segments();
  segs.push(raw, 0, raw.length - 1, -1);
  t.is(req.load(segs), null);
  t.true(parseName(req, req.args, newNameRef()) < 0);
});

test('READ and WRITE by host address over more ranges than one preadv/pwritev takes', (t) => {
  const f = makeFs();
  t.teardown(() => f.cleanup());
  init(f.session);
  const size = (IOV_MAX + 476) * 16; // 1500 ranges of 16 bytes
  const data = Buffer.alloc(size);
  for (let i = 0; i < size; i++) data[i] = (i * 7 + (i >> 9)) & 0xff;

  // CREATE through Segments (no addresses needed for small replies).
  const createReq = request(Op.CREATE, [struct(CreateIn, { flags: fs.constants.O_RDWR, mode: 0o644 }), cstr('f')]);
  const out = [Buffer.alloc(OutHeader.size), Buffer.alloc(ENTRY_OUT_SIZE + OpenOut.size)];
  const n = handleSegments(f.session, addressed(chop(createReq, 24)), addressed(out));
  t.is(n, OutHeader.size + ENTRY_OUT_SIZE + OpenOut.size);
  t.is(out[0].readInt32LE(4), 0);
  const nodeid = out[1].readBigUInt64LE(0);
  const fh = out[1].readBigUInt64LE(ENTRY_OUT_SIZE);

  // WRITE: header and write_in in two ranges, the payload in 1500.
  const head = request(Op.WRITE, [struct(WriteIn, { fh, offset: 0n, size })], { nodeid });
  head.writeUInt32LE(head.length + size, 0);
  const wOut = [Buffer.alloc(OutHeader.size), Buffer.alloc(WriteOut.size)];
  const wn = handleSegments(f.session, addressed([head.subarray(0, 40), head.subarray(40), ...chop(data, 16)]), addressed(wOut));
  t.is(wn, OutHeader.size + WriteOut.size);
  t.is(wOut[0].readInt32LE(4), 0);
  t.is(wOut[1].readUInt32LE(0), size, 'every range written');
  t.true(fs.readFileSync(path.join(f.dir, 'f')).equals(data), 'the file holds the payload in order');

  // READ it back into 1500 ranges of 16 bytes after a separate out header.
  const rd = request(Op.READ, [struct(ReadIn, { fh, offset: 0n, size })], { nodeid });
  const dst = Array.from({ length: size / 16 }, () => Buffer.alloc(16));
  const rn = handleSegments(f.session, addressed([rd]), addressed([Buffer.alloc(OutHeader.size), ...dst]));
  t.is(rn, OutHeader.size + size);
  t.true(Buffer.concat(dst).equals(data), 'the data landed in every range, in order');

  // A READ at an offset, starting mid-range of a reply whose header shares the first range.
  const rd2 = request(Op.READ, [struct(ReadIn, { fh, offset: 5n, size: 100 })], { nodeid });
  const r2 = [Buffer.alloc(20), Buffer.alloc(7), Buffer.alloc(200)];
  const rn2 = handleSegments(f.session, addressed([rd2]), addressed(r2));
  t.is(rn2, OutHeader.size + 100);
  t.true(Buffer.concat(r2).subarray(OutHeader.size, OutHeader.size + 100).equals(data.subarray(5, 105)));

  const rel = request(Op.RELEASE, [struct(ReleaseIn, { fh })], { nodeid });
  t.is(handleSegments(f.session, addressed([rel]), addressed([Buffer.alloc(OutHeader.size)])), OutHeader.size);
});
