// FsOptions as the core applies them: --cache open flags and timeouts, --writeback
// (write-only opens become read-write), --announce-submounts (FUSE_ATTR_SUBMOUNT on a
// directory with another mount id), --no-readdirplus, --allow-direct-io.
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import {
  Attr, EntryOutHead, FOPEN, FUSE_ATTR_SUBMOUNT, InitFlag, Op, OpenIn, OpenOut, ReadIn,
} from '../src/fs/fuse-abi.js';
import { makeFs, init, initOut, send, request, struct, cstr, type Answer } from './fs-helpers.js';

const O_WRONLY = 1;
const O_DIRECT = process.arch === 'arm64' ? 0o200000 : 0o40000;

function ok(a: Answer | null): Answer {
  if (a === null || a.error !== 0) throw new Error(`error ${a?.error}`);
  return a;
}

function openFlagsFor(opts: object, flags = 0): { fopen: number; entryValid: bigint } {
  const f = makeFs(opts);
  try {
    init(f.session);
    fs.writeFileSync(path.join(f.dir, 'f'), 'abc');
    const e = ok(send(f.session, request(Op.LOOKUP, [cstr('f')])));
    const nodeid = Number(EntryOutHead.decode(e.body, 0).nodeid);
    const o = ok(send(f.session, request(Op.OPEN, [struct(OpenIn, { flags })], { nodeid })));
    return { fopen: OpenOut.decode(o.body, 0).openFlags, entryValid: EntryOutHead.decode(e.body, 0).entryValid };
  } finally {
    f.cleanup();
  }
}

test('--cache: open flags and entry timeouts as virtiofsd sets them', (t) => {
  const never = openFlagsFor({ cache: 'never' });
  t.is(never.fopen & FOPEN.DIRECT_IO, FOPEN.DIRECT_IO);
  t.is(never.entryValid, 0n);
  const always = openFlagsFor({ cache: 'always' });
  t.is(always.fopen & FOPEN.KEEP_CACHE, FOPEN.KEEP_CACHE);
  t.is(always.entryValid, 86400n);
  const auto = openFlagsFor({ cache: 'auto' });
  t.is(auto.fopen, 0);
  t.is(auto.entryValid, 1n);
  t.is(openFlagsFor({ cache: 'metadata' }).fopen & FOPEN.DIRECT_IO, FOPEN.DIRECT_IO);
  t.is(openFlagsFor({ cache: 'auto', allowDirectIo: true }, O_DIRECT).fopen & FOPEN.DIRECT_IO, FOPEN.DIRECT_IO);
});

test('--writeback: offered only when set; a write-only open can then be read', (t) => {
  const f = makeFs({ writeback: true });
  t.teardown(() => f.cleanup());
  t.truthy(initOut(init(f.session)).flags & InitFlag.WRITEBACK_CACHE);
  fs.writeFileSync(path.join(f.dir, 'w'), 'readable');
  const nodeid = Number(EntryOutHead.decode(ok(send(f.session, request(Op.LOOKUP, [cstr('w')]))).body, 0).nodeid);
  const fh = OpenOut.decode(ok(send(f.session, request(Op.OPEN, [struct(OpenIn, { flags: O_WRONLY })], { nodeid }))).body, 0).fh;
  const r = ok(send(f.session, request(Op.READ, [struct(ReadIn, { fh, offset: 0n, size: 100 })], { nodeid })));
  t.is(r.body.toString(), 'readable');
  const plain = makeFs();
  t.teardown(() => plain.cleanup());
  t.is(initOut(init(plain.session)).flags & InitFlag.WRITEBACK_CACHE, 0);
});

test('--no-readdirplus: READDIRPLUS is not offered', (t) => {
  const f = makeFs({ readdirplus: false });
  t.teardown(() => f.cleanup());
  t.is(initOut(init(f.session)).flags & (InitFlag.DO_READDIRPLUS | InitFlag.READDIRPLUS_AUTO), 0);
});

test('--announce-submounts: a mount point inside the share carries FUSE_ATTR_SUBMOUNT', (t) => {
  for (const announce of [true, false]) {
    const f = makeFs({ announceSubmounts: announce });
    const sub = path.join(f.dir, 'sub');
    fs.mkdirSync(sub);
    fs.mkdirSync(path.join(f.dir, 'plain'));
    execFileSync('mount', ['-t', 'tmpfs', 'tmpfs', sub]);
    try {
      const o = initOut(init(f.session));
      t.is((o.flags & InitFlag.SUBMOUNTS) !== 0, announce);
      const e = ok(send(f.session, request(Op.LOOKUP, [cstr('sub')])));
      t.is(Attr.decode(e.body, EntryOutHead.size).flags & FUSE_ATTR_SUBMOUNT, announce ? FUSE_ATTR_SUBMOUNT : 0);
      const p = ok(send(f.session, request(Op.LOOKUP, [cstr('plain')])));
      t.is(Attr.decode(p.body, EntryOutHead.size).flags, 0);
    } finally {
      // DESTROY closes the O_PATH fds that keep the tmpfs busy.
      send(f.session, request(Op.DESTROY, []));
      execFileSync('umount', [sub]);
      f.cleanup();
    }
  }
});
