// Malformed descriptor chains and hostile FUSE requests. Each case publishes one bad chain on
// a running device; the daemon must fail that request (or return nothing for it), keep
// serving the next good request on the same queue, never write outside the buffers it was
// given (a canary area at the bottom of guest memory must stay intact: wrapped addresses
// land there) and never crash. Also: names that try to climb out of the shared directory.
import test, { type ExecutionContext } from 'ava';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { withDaemon, openFs, crashSigns, MARKER, type Env } from './frontend/harness.js';
import { waitExit } from './frontend/daemons.js';
import { REQUEST, type VirtioFsFrontend } from './frontend/virtio-fs.js';
import { DESC_F_NEXT, DESC_F_WRITE, DESC_F_INDIRECT, DESC_SIZE, type SplitQueue } from './frontend/split-ring.js';
import { FuseError, type FuseClient } from './frontend/fuse-client.js';
import * as F from './frontend/fuse-requests.js';

const MiB = 2 ** 20;
const MEM = 64 * MiB;
const QSIZE = 16;
const CANARY = MiB; // [0, 1 MiB) of guest memory: never handed to the device
const SCRATCH = 48 * MiB; // hand-built chains put their buffers from here

interface Ctx {
  env: Env;
  fe: VirtioFsFrontend;
  c: FuseClient;
  q: SplitQueue;
  node: bigint;
  fh: bigint;
}

async function setup(t: ExecutionContext): Promise<Ctx> {
  const env = await withDaemon(t, [], (s) => fs.writeFileSync(path.join(s, 'data'), Buffer.alloc(64 * 1024, 0x41)));
  const { fe, c } = openFs(env, t, { regions: [{ gpa: 0, size: MEM }], queueSize: QSIZE, ringAtLeast: CANARY, bufAtLeast: CANARY, slotBytes: 256 * 1024, timeoutMs: 4000 });
  fe.mem.write(0, Buffer.alloc(CANARY, 0x5a));
  const e = c.lookup(F.ROOT_ID, 'data');
  return { env, fe, c, q: fe.queues[REQUEST], node: e.nodeid, fh: c.open(e.nodeid) };
}

/** A READ of 4 KiB of the file, whose header goes at `gpa`. */
function readReq(x: Ctx, gpa: number): { gpa: number; len: number } {
  const r = F.request(F.Op.READ, x.node, [F.rwIn(x.fh, 0, 4096)]);
  x.fe.mem.write(gpa, r);
  return { gpa, len: r.length };
}

/** Descriptor ids for hand-built chains: the top of the table, kept out of the free list. */
function ids(x: Ctx, n: number): number[] {
  const out = Array.from({ length: n }, (_, i) => QSIZE - 1 - i);
  x.q.track(out[0], out);
  return out;
}

async function afterBadChain(t: ExecutionContext, x: Ctx): Promise<void> {
  x.q.wait(1000); // whatever comes back for the bad chain (possibly nothing)
  const log = x.env.d.log();
  t.deepEqual(crashSigns(log), [], log.slice(-2000));
  t.is(x.env.d.exitCode, undefined, `daemon still running (exit ${x.env.d.exitCode})`);
  const a = x.c.getattr(x.node);
  t.is(a.size, 64n * 1024n, 'a good request on the same queue works afterwards');
  t.true(x.fe.mem.read(0, CANARY).equals(Buffer.alloc(CANARY, 0x5a)), 'nothing written into the canary area');
  x.fe.close();
  t.is(await waitExit(x.env.d, 20000), 0);
}

function chainCase(title: string, build: (x: Ctx) => void): void {
  test.serial(title, async (t) => {
    const x = await setup(t);
    build(x);
    x.q.publish(true);
    await afterBadChain(t, x);
  });
}

chainCase('descriptor loop', (x) => {
  const [a, b] = ids(x, 2);
  const r = readReq(x, SCRATCH);
  x.q.writeDesc(a, r.gpa, r.len, DESC_F_NEXT, b);
  x.q.writeDesc(b, SCRATCH + 4096, 4096, DESC_F_WRITE | DESC_F_NEXT, a);
  x.q.pushAvail(a);
});

chainCase('head index >= queue size in the avail ring', (x) => {
  x.q.pushAvail(QSIZE + 3);
});

chainCase('next index >= queue size', (x) => {
  const [a] = ids(x, 1);
  const r = readReq(x, SCRATCH);
  x.q.writeDesc(a, r.gpa, r.len, DESC_F_NEXT, QSIZE + 7);
  x.q.pushAvail(a);
});

chainCase('readable buffer outside guest memory', (x) => {
  const [a, b] = ids(x, 2);
  x.q.writeDesc(a, 1n << 40n, 80, DESC_F_NEXT, b);
  x.q.writeDesc(b, SCRATCH + 4096, 4096, DESC_F_WRITE, 0);
  x.q.pushAvail(a);
});

chainCase('writable buffer outside guest memory', (x) => {
  const [a, b, c] = ids(x, 3);
  const r = readReq(x, SCRATCH);
  x.q.writeDesc(a, r.gpa, r.len, DESC_F_NEXT, b);
  x.q.writeDesc(b, SCRATCH + 4096, 16, DESC_F_WRITE | DESC_F_NEXT, c);
  x.q.writeDesc(c, 1n << 40n, 4096, DESC_F_WRITE, 0);
  x.q.pushAvail(a);
});

chainCase('writable buffer straddling the end of guest memory', (x) => {
  const [a, b] = ids(x, 2);
  const r = readReq(x, SCRATCH);
  x.q.writeDesc(a, r.gpa, r.len, DESC_F_NEXT, b);
  x.q.writeDesc(b, MEM - 100, 4096 + 16, DESC_F_WRITE, 0);
  x.q.pushAvail(a);
});

chainCase('writable length overflow: addr + len wraps past 2^64 into the canary', (x) => {
  const [a, b] = ids(x, 2);
  const r = readReq(x, SCRATCH);
  x.q.writeDesc(a, r.gpa, r.len, DESC_F_NEXT, b);
  x.q.writeDesc(b, (1n << 64n) - 2048n, 4096 + 16, DESC_F_WRITE, 0);
  x.q.pushAvail(a);
});

chainCase('readable length overflow: addr + len wraps past 2^64', (x) => {
  const [a, b] = ids(x, 2);
  x.q.writeDesc(a, (1n << 64n) - 16n, 80, DESC_F_NEXT, b);
  x.q.writeDesc(b, SCRATCH + 4096, 4096, DESC_F_WRITE, 0);
  x.q.pushAvail(a);
});

chainCase('chain total length over 4 GiB (two 0xffffffff-byte buffers)', (x) => {
  const [a, b, c] = ids(x, 3);
  const r = readReq(x, SCRATCH);
  x.q.writeDesc(a, r.gpa, r.len, DESC_F_NEXT, b);
  x.q.writeDesc(b, CANARY, 0xffffffff, DESC_F_WRITE | DESC_F_NEXT, c);
  x.q.writeDesc(c, CANARY, 0xffffffff, DESC_F_WRITE, 0);
  x.q.pushAvail(a);
});

chainCase('writable descriptor before the readable one', (x) => {
  const [a, b] = ids(x, 2);
  const r = readReq(x, SCRATCH);
  x.q.writeDesc(a, SCRATCH + 4096, 4096 + 16, DESC_F_WRITE | DESC_F_NEXT, b);
  x.q.writeDesc(b, r.gpa, r.len, 0, 0);
  x.q.pushAvail(a);
});

chainCase('only writable descriptors (no request at all)', (x) => {
  const [a] = ids(x, 1);
  x.q.writeDesc(a, SCRATCH + 4096, 4096, DESC_F_WRITE, 0);
  x.q.pushAvail(a);
});

chainCase('empty readable descriptor (0 bytes of request)', (x) => {
  const [a, b] = ids(x, 2);
  x.q.writeDesc(a, SCRATCH, 0, DESC_F_NEXT, b);
  x.q.writeDesc(b, SCRATCH + 4096, 4096, DESC_F_WRITE, 0);
  x.q.pushAvail(a);
});

function indirect(x: Ctx, entries: { addr: number | bigint; len: number; flags: number; next: number }[], at = SCRATCH + 64 * 1024): number {
  const t = Buffer.alloc(entries.length * DESC_SIZE);
  entries.forEach((e, i) => {
    t.writeBigUInt64LE(BigInt(e.addr), i * DESC_SIZE);
    t.writeUInt32LE(e.len, i * DESC_SIZE + 8);
    t.writeUInt16LE(e.flags, i * DESC_SIZE + 12);
    t.writeUInt16LE(e.next, i * DESC_SIZE + 14);
  });
  x.fe.mem.write(at, t);
  return at;
}

chainCase('indirect table longer than the queue', (x) => {
  const [a] = ids(x, 1);
  const r = readReq(x, SCRATCH);
  const n = QSIZE * 2;
  const ents = [{ addr: r.gpa, len: r.len, flags: DESC_F_NEXT, next: 1 }];
  for (let i = 1; i < n; i++) ents.push({ addr: SCRATCH + 8192 + i * 512, len: 512, flags: DESC_F_WRITE | (i + 1 < n ? DESC_F_NEXT : 0), next: i + 1 });
  const tbl = indirect(x, ents);
  x.q.writeDesc(a, tbl, n * DESC_SIZE, DESC_F_INDIRECT, 0);
  x.q.pushAvail(a);
});

chainCase('loop inside an indirect table', (x) => {
  const [a] = ids(x, 1);
  const r = readReq(x, SCRATCH);
  const tbl = indirect(x, [
    { addr: r.gpa, len: r.len, flags: DESC_F_NEXT, next: 1 },
    { addr: SCRATCH + 8192, len: 4096, flags: DESC_F_WRITE | DESC_F_NEXT, next: 0 },
  ]);
  x.q.writeDesc(a, tbl, 2 * DESC_SIZE, DESC_F_INDIRECT, 0);
  x.q.pushAvail(a);
});

chainCase('indirect descriptor inside an indirect table', (x) => {
  const [a] = ids(x, 1);
  const r = readReq(x, SCRATCH);
  const inner = indirect(x, [{ addr: SCRATCH + 8192, len: 4096, flags: DESC_F_WRITE, next: 0 }], SCRATCH + 128 * 1024);
  const tbl = indirect(x, [
    { addr: r.gpa, len: r.len, flags: DESC_F_NEXT, next: 1 },
    { addr: inner, len: DESC_SIZE, flags: DESC_F_INDIRECT, next: 0 },
  ]);
  x.q.writeDesc(a, tbl, 2 * DESC_SIZE, DESC_F_INDIRECT, 0);
  x.q.pushAvail(a);
});

chainCase('indirect table length not a multiple of 16', (x) => {
  const [a] = ids(x, 1);
  const r = readReq(x, SCRATCH);
  const tbl = indirect(x, [
    { addr: r.gpa, len: r.len, flags: DESC_F_NEXT, next: 1 },
    { addr: SCRATCH + 8192, len: 4096 + 16, flags: DESC_F_WRITE, next: 0 },
  ]);
  x.q.writeDesc(a, tbl, 24, DESC_F_INDIRECT, 0);
  x.q.pushAvail(a);
});

chainCase('indirect table of length 0', (x) => {
  const [a] = ids(x, 1);
  x.q.writeDesc(a, SCRATCH + 64 * 1024, 0, DESC_F_INDIRECT, 0);
  x.q.pushAvail(a);
});

chainCase('indirect table outside guest memory', (x) => {
  const [a] = ids(x, 1);
  x.q.writeDesc(a, 1n << 40n, 2 * DESC_SIZE, DESC_F_INDIRECT, 0);
  x.q.pushAvail(a);
});

chainCase('indirect table whose next index points past its end', (x) => {
  const [a] = ids(x, 1);
  const r = readReq(x, SCRATCH);
  const tbl = indirect(x, [
    { addr: r.gpa, len: r.len, flags: DESC_F_NEXT, next: 1 },
    { addr: SCRATCH + 8192, len: 4096 + 16, flags: DESC_F_WRITE | DESC_F_NEXT, next: 9 },
  ]);
  x.q.writeDesc(a, tbl, 2 * DESC_SIZE, DESC_F_INDIRECT, 0);
  x.q.pushAvail(a);
});

// FUSE-level lies inside a well-formed chain. `strict`: the reply must be an error; otherwise
// a success is allowed too (virtiofsd trusts the header's len and truncates a READ to fit).
function fuseCase(title: string, request: (x: Ctx) => Buffer, strict = true, replyLen = 4096): void {
  test.serial(title, async (t) => {
    const x = await setup(t);
    const r = x.fe.call([request(x)], [F.OUT_HEADER, replyLen]);
    if (strict) t.true(r === undefined || r.header.error < 0, `the daemon answered success: len ${String(r?.header.len)}`);
    else t.true(r === undefined || r.header.error <= 0);
    if (r !== undefined) t.true(r.usedLen <= F.OUT_HEADER + replyLen && r.header.len === r.usedLen, 'reply fits and says its length');
    await afterBadChain(t, x);
  });
}

fuseCase('FUSE request shorter than its in header', () => Buffer.alloc(10));
fuseCase('in header len larger than the request bytes', (x) => F.request(F.Op.READ, x.node, [F.rwIn(x.fh, 0, 4096)], { len: 100000 }), false);
fuseCase('in header len smaller than the header', (x) => F.request(F.Op.GETATTR, x.node, [F.getattrIn()], { len: 8 }), false);
fuseCase('READ args cut short', (x) => F.request(F.Op.READ, x.node, [Buffer.alloc(10)]));
fuseCase('unknown FUSE opcode', (x) => F.request(4242, x.node, [Buffer.alloc(16)]));
fuseCase('LOOKUP name without its NUL terminator', () => F.request(F.Op.LOOKUP, F.ROOT_ID, [Buffer.from('data')]));
fuseCase('GETATTR of a nodeid never handed out', () => F.request(F.Op.GETATTR, 0xdead_beefn, [F.getattrIn()]));
fuseCase('READ with a file handle never handed out', (x) => F.request(F.Op.READ, x.node, [F.rwIn(0xbad_f00dn, 0, 4096)]));
fuseCase('READ larger than the writable buffers', (x) => F.request(F.Op.READ, x.node, [F.rwIn(x.fh, 0, 1 << 20)]), false, 512);

// Names that try to leave the shared directory. The marker file sits in its parent.
test.serial('LOOKUP ".." on the root and names with "/" never reach outside the shared dir', async (t) => {
  const x = await setup(t);
  fs.symlinkSync('..', path.join(x.env.shared, 'up'));
  fs.symlinkSync(path.join(x.env.parent, MARKER), path.join(x.env.shared, 'abs'));
  const rootIno = BigInt(fs.statSync(x.env.shared).ino);
  const parentIno = BigInt(fs.statSync(x.env.parent).ino);
  const noMarker = (dir: bigint, how: string): void => {
    const err = t.throws(() => x.c.lookup(dir, MARKER), undefined, `${how}: the marker outside was reachable`);
    t.true(err instanceof FuseError, String(err));
  };
  // ".." on the root: an error, or the root itself - never the parent.
  try {
    const up = x.c.lookup(F.ROOT_ID, '..');
    t.not(up.attr.ino, parentIno, 'LOOKUP(root, "..") returned the parent of the shared dir');
    t.is(up.attr.ino, rootIno);
    noMarker(up.nodeid, '".." of root');
    try {
      const up2 = x.c.lookup(up.nodeid, '..');
      t.not(up2.attr.ino, parentIno);
      noMarker(up2.nodeid, '"../.."');
    } catch (e) {
      t.true(e instanceof FuseError);
    }
  } catch (e) {
    t.true(e instanceof FuseError, String(e));
  }
  for (const name of ['../' + MARKER, '/' + MARKER, 'up/' + MARKER, '']) {
    t.throws(() => x.c.lookup(F.ROOT_ID, name), undefined, `LOOKUP "${name}" succeeded`);
  }
  try {
    t.is(x.c.lookup(F.ROOT_ID, '.').attr.ino, rootIno, 'LOOKUP "." is the root itself');
  } catch (e) {
    t.true(e instanceof FuseError, String(e));
  }
  // Symlinks are not followed on the host: looking up through them fails.
  noMarker(x.c.lookup(F.ROOT_ID, 'up').nodeid, 'symlink "up"');
  const abs = x.c.lookup(F.ROOT_ID, 'abs');
  t.is(abs.attr.mode & 0o170000, 0o120000, 'a symlink is reported as a symlink');
  // Creating through ".." or a slash must not create anything outside.
  t.throws(() => x.c.create(F.ROOT_ID, '../escape'));
  t.throws(() => x.c.mkdir(F.ROOT_ID, '../escape-dir'));
  t.throws(() => x.c.create(F.ROOT_ID, 'up/escape2'));
  t.deepEqual(fs.readdirSync(x.env.parent).sort(), [MARKER, 'shared'].sort(), 'nothing appeared next to the shared dir');
  t.is(fs.readFileSync(path.join(x.env.parent, MARKER), 'utf8'), 'must stay unreachable\n');
  await afterBadChain(t, x);
});
