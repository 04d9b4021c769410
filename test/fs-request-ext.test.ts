// Request extensions (request-ext.ts) through the core: a well-formed fuse_supp_groups
// record is accepted, and every malformed extension area (misaligned, a record shorter
// than its header, one running past the request, an unknown type, the same type twice,
// total_extlen larger than the request) fails that request with EINVAL and leaves the
// session serving.
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { constants as osConstants } from 'node:os';
import { FUSE_EXT_GROUPS, InHeader, InitFlag, InitFlag2, InitIn, InitOut, MkdirIn, Op } from '../src/fs/fuse-abi.js';
import { extensionAreaProblem } from '../src/fs/request-ext.js';
import { cstr, makeFs, request, send, struct } from './fs-helpers.js';

const E = osConstants.errno;

/** INIT with INIT_EXT and a flags2 word (the 64-byte 7.38 fuse_init_in). */
function initExt(session: Parameters<typeof send>[0], flags2: number): void {
  const a = send(session, request(Op.INIT, [struct(InitIn, { major: 7, minor: 38, maxReadahead: 131072, flags: 0xffffffff, flags2 })]));
  if (a === null || a.error !== 0) throw new Error('INIT failed');
}

/** One extension record: header (size, type) then payload, padded to 8. */
function record(type: number, payload: Buffer, size?: number): Buffer {
  const len = (8 + payload.length + 7) & ~7;
  const b = Buffer.alloc(len);
  b.writeUInt32LE(size ?? len, 0);
  b.writeUInt32LE(type, 4);
  payload.copy(b, 8);
  return b;
}

function groups(...gids: number[]): Buffer {
  const b = Buffer.alloc(4 + 4 * gids.length);
  b.writeUInt32LE(gids.length, 0);
  gids.forEach((g, i) => b.writeUInt32LE(g, 4 + 4 * i));
  return b;
}

/** MKDIR of `name` with `ext` appended and total_extlen = extUnits (default ext.length / 8). */
function mkdirWithExt(name: string, ext: Buffer, extUnits?: number): Buffer {
  const r = request(Op.MKDIR, [struct(MkdirIn, { mode: 0o755, umask: 0 }), cstr(name), ext]);
  r.writeUInt16LE(extUnits ?? ext.length / 8, InHeader.off.totalExtlen);
  return r;
}

test('a well-formed supplementary-group extension is accepted; malformed areas are EINVAL', (t) => {
  const f = makeFs();
  try {
    initExt(f.session, 1 << 2);
    const ok = send(f.session, mkdirWithExt('good', record(FUSE_EXT_GROUPS, groups(0))));
    t.is(ok?.error, 0);
    t.true(fs.statSync(path.join(f.dir, 'good')).isDirectory());
    const bad: [string, Buffer, number?][] = [
      ['misaligned total', Buffer.alloc(8), 2], // claims 16 bytes, the request has 8 after the name... and the name moves
      ['record shorter than its header', record(FUSE_EXT_GROUPS, groups(0), 4)],
      ['record running past the request', record(FUSE_EXT_GROUPS, groups(0), 64)],
      ['unknown type', record(99, groups(0))],
      ['the same type twice', Buffer.concat([record(FUSE_EXT_GROUPS, groups(0)), record(FUSE_EXT_GROUPS, groups(0))])],
      ['size not a multiple of 8', record(FUSE_EXT_GROUPS, groups(0), 12)],
      ['total_extlen past the request', record(FUSE_EXT_GROUPS, groups(0)), 200],
    ];
    for (const [what, ext, units] of bad) {
      const a = send(f.session, mkdirWithExt(`bad-${what.replace(/ /g, '-')}`, ext, units));
      t.is(a?.error, -E.EINVAL, what);
      t.false(fs.existsSync(path.join(f.dir, `bad-${what.replace(/ /g, '-')}`)), `${what}: nothing created`);
    }
    // Still serving.
    t.is(send(f.session, mkdirWithExt('after', Buffer.alloc(0)))?.error, 0);
  } finally {
    f.cleanup();
  }
});

test('extensionAreaProblem names the offending record', (t) => {
  t.is(extensionAreaProblem(record(FUSE_EXT_GROUPS, groups(1)), 0, 16), null);
  t.regex(extensionAreaProblem(record(40, groups(1)), 0, 16) ?? '', /unknown type 40/);
  t.regex(extensionAreaProblem(record(FUSE_EXT_GROUPS, groups(1), 24), 0, 16) ?? '', /runs past the request/);
  t.regex(extensionAreaProblem(Buffer.alloc(12), 0, 12) ?? '', /not a multiple of 8/);
});

test('without INIT_EXT negotiated an INIT still agrees no flags2', (t) => {
  const f = makeFs();
  try {
    const a = send(f.session, request(Op.INIT, [struct(InitIn, { major: 7, minor: 38, maxReadahead: 131072, flags: InitFlag.ASYNC_READ, flags2: 0xffffffff })]));
    t.is(a?.error, 0);
    t.is(a?.body.readUInt32LE(InitOut.off.flags2), 0);
  } finally {
    f.cleanup();
  }
});

test('INIT: ASYNC_DIO and SUBMOUNTS offered by default, CREATE_SUPP_GROUP always with INIT_EXT, DIRECT_IO_ALLOW_MMAP only with --allow-mmap', (t) => {
  const agreed = (opts: Parameters<typeof makeFs>[0]): [number, number] => {
    const f = makeFs(opts);
    try {
      const a = send(f.session, request(Op.INIT, [struct(InitIn, { major: 7, minor: 38, maxReadahead: 131072, flags: 0xffffffff, flags2: 0xffffffff })]));
      if (a === null || a.error !== 0) throw new Error('INIT failed');
      return [a.body.readUInt32LE(InitOut.off.flags), a.body.readUInt32LE(InitOut.off.flags2)];
    } finally {
      f.cleanup();
    }
  };
  const [flags, flags2] = agreed({});
  t.not(flags & InitFlag.ASYNC_DIO, 0);
  t.not(flags & InitFlag.SUBMOUNTS, 0);
  t.is(flags2 & (InitFlag2.CREATE_SUPP_GROUP | InitFlag2.DIRECT_IO_ALLOW_MMAP), InitFlag2.CREATE_SUPP_GROUP);
  t.is(agreed({ announceSubmounts: false })[0] & InitFlag.SUBMOUNTS, 0);
  t.not(agreed({ allowMmap: true })[1] & InitFlag2.DIRECT_IO_ALLOW_MMAP, 0);
});

test('a fuse_supp_groups record whose nr_groups disagrees with its length is EINVAL', (t) => {
  const f = makeFs();
  try {
    initExt(f.session, InitFlag2.CREATE_SUPP_GROUP);
    const lying = Buffer.alloc(8);
    lying.writeUInt32LE(5, 0);
    t.is(send(f.session, mkdirWithExt('lying', record(FUSE_EXT_GROUPS, lying)))?.error, -E.EINVAL);
    t.false(fs.existsSync(path.join(f.dir, 'lying')));
    const two = groups(0, 0);
    t.is(send(f.session, mkdirWithExt('two', record(FUSE_EXT_GROUPS, two)))?.error, 0);
  } finally {
    f.cleanup();
  }
});
