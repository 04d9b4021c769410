// A guest names a handle together with its node; the core must not let a handle opened
// on one file act on another node's request, and a request whose reply cannot be
// delivered must not leave a lookup or a handle behind that the guest never learns of.
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { Attr, AttrOutHead, EntryOutHead, FATTR, FUSE_GETATTR_FH, GetattrIn, OpenIn, OpenOut, Op, ReadIn, SetattrIn, OutHeader } from '../src/fs/fuse-abi.js';
import { fuseServerFdCount } from '../src/fs/fuse-server.js';
import { makeFs, init, send, request, struct, cstr } from './fs-helpers.js';

function setup(t: import('ava').ExecutionContext) {
  const f = makeFs();
  t.teardown(() => f.cleanup());
  init(f.session);
  fs.writeFileSync(path.join(f.dir, 'a'), 'contents of a');
  fs.writeFileSync(path.join(f.dir, 'b'), 'b is a longer file than a, by far');
  const lookup = (name: string): bigint => {
    const r = send(f.session, request(Op.LOOKUP, [cstr(name)]));
    if (r === null || r.error !== 0) throw new Error(`lookup ${name}`);
    return EntryOutHead.decode(r.body, 0).nodeid;
  };
  const open = (nodeid: bigint, flags = 2): bigint => {
    const r = send(f.session, request(Op.OPEN, [struct(OpenIn, { flags })], { nodeid }));
    if (r === null || r.error !== 0) throw new Error(`open ${nodeid}: ${r?.error}`);
    return OpenOut.decode(r.body, 0).fh;
  };
  return { f, a: lookup('a'), b: lookup('b'), open };
}

test("a handle named with another node's id is not used for that node", (t) => {
  const { f, a, b, open } = setup(t);
  const fhB = open(b);
  // GETATTR of a with b's handle: a's attributes, not b's.
  const g = send(f.session, request(Op.GETATTR, [struct(GetattrIn, { getattrFlags: FUSE_GETATTR_FH, fh: fhB })], { nodeid: a }));
  t.is(g?.error, 0);
  t.is(Attr.decode(g!.body, AttrOutHead.size).size, BigInt('contents of a'.length));
  // SETATTR size on a with b's handle: a is truncated, b is left alone.
  const s = send(f.session, request(Op.SETATTR, [struct(SetattrIn, { valid: FATTR.SIZE | FATTR.FH, fh: fhB, size: 3n })], { nodeid: a }));
  t.is(s?.error, 0);
  t.is(fs.readFileSync(path.join(f.dir, 'a'), 'utf8'), 'con');
  t.is(fs.readFileSync(path.join(f.dir, 'b'), 'utf8'), 'b is a longer file than a, by far');
  // READ naming node a with b's handle: refused, nothing of b comes back.
  const r = send(f.session, request(Op.READ, [struct(ReadIn, { fh: fhB, offset: 0n, size: 4096 })], { nodeid: a }));
  t.is(r?.error, -9, 'EBADF');
  t.is(r?.len, OutHeader.size);
  // The matching pair still works.
  const ok = send(f.session, request(Op.READ, [struct(ReadIn, { fh: fhB, offset: 0n, size: 4096 })], { nodeid: b }));
  t.is(ok?.body.toString(), 'b is a longer file than a, by far');
});

test('LOOKUP, OPEN and MKDIR with no room for their reply fail before taking anything', (t) => {
  const { f, a } = setup(t);
  const before = fuseServerFdCount(f.session);
  const tiny = OutHeader.size + 8;
  const l = send(f.session, request(Op.LOOKUP, [cstr('b')]), tiny);
  t.is(l?.error, -5, 'EIO');
  const o = send(f.session, request(Op.OPEN, [struct(OpenIn, { flags: 0 })], { nodeid: a }), tiny);
  t.is(o?.error, -5, 'EIO');
  const m = send(f.session, request(Op.MKDIR, [Buffer.alloc(8), cstr('newdir')]), tiny);
  t.is(m?.error, -5, 'EIO');
  t.false(fs.existsSync(path.join(f.dir, 'newdir')), 'nothing was created for a reply that could not be sent');
  t.is(fuseServerFdCount(f.session), before, 'no lookup or handle was left behind');
});
