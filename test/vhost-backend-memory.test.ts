// Guest memory translation against real memfd mappings: bounds, overflow, region and
// window crossings, mmap offsets, validation of bad regions, and a 6 GiB sparse guest.
import test from 'ava';
import fs from 'node:fs';
import { GuestMemory, GuestMemoryError, WINDOW_BYTES, WINDOW_OVERLAP } from '../src/vhost/guest-memory.js';
import { memfdCreate, ftruncate } from '../src/sys/memory-calls.js';
import { eventfd } from '../src/sys/event-calls.js';

const GiB = 2 ** 30;
const MiB = 2 ** 20;

/** A memfd of `size` bytes; returns its fd (kept by the test) and a way to hand out dups. */
function memfd(size: number): { fd: number; dup: () => number } {
  const fd = memfdCreate('vhost-backend-memory-test');
  ftruncate(fd, size);
  return { fd, dup: () => fs.openSync(`/proc/self/fd/${fd}`, 'r+') };
}

function fdOpen(fd: number): boolean {
  try {
    fs.fstatSync(fd);
    return true;
  } catch {
    return false;
  }
}

function concat(segs: Buffer[]): Buffer {
  return Buffer.concat(segs);
}

test('translates guest and user addresses inside one region, shared with the file', (t) => {
  const m = memfd(MiB);
  t.teardown(() => fs.closeSync(m.fd));
  const mem = new GuestMemory(8);
  t.teardown(() => mem.clear());
  const dup = m.dup();
  mem.add({ guestAddr: 0x100000, size: MiB, userAddr: 0x7f0000000000, mmapOffset: 0 }, dup);
  t.false(fdOpen(dup), 'the region fd is closed once mapped');
  fs.writeSync(m.fd, Buffer.from('hello guest'), 0, 11, 0x1234);
  const segs: Buffer[] = [];
  t.true(mem.guestSegments(0x101234, 11, segs));
  t.is(segs.length, 1);
  t.is(segs[0].toString(), 'hello guest');
  t.is(mem.userSlice(0x7f0000001234, 5)?.toString(), 'hello');
  // Writes through the view land in the file: zero copy, MAP_SHARED.
  segs[0].write('HELLO');
  const back = Buffer.alloc(5);
  fs.readSync(m.fd, back, 0, 5, 0x1234);
  t.is(back.toString(), 'HELLO');
});

test('refuses ranges that leave guest memory, without overflow', (t) => {
  const m = memfd(MiB);
  t.teardown(() => fs.closeSync(m.fd));
  const mem = new GuestMemory(8);
  t.teardown(() => mem.clear());
  mem.add({ guestAddr: 0x100000, size: MiB, userAddr: 0x200000, mmapOffset: 0 }, m.dup());
  const segs: Buffer[] = [];
  t.true(mem.guestSegments(0x100000, MiB, segs), 'the whole region');
  segs.length = 0;
  t.false(mem.guestSegments(0x100000, MiB + 1, segs), 'one byte past the end');
  t.is(segs.length, 0, 'nothing left behind on failure');
  t.false(mem.guestSegments(0xfffff, 2, segs), 'one byte before the start');
  t.false(mem.guestSegments(0x1fffff, 0xffffffff, segs), 'huge length at the last byte');
  t.false(mem.guestSegments(2 ** 53, 1, segs), 'address at 2^53');
  t.false(mem.guestSegments(Number.MAX_SAFE_INTEGER, 1, segs), 'address near 2^53');
  t.false(mem.guestSegments(0, 0x100001, segs), 'starts below the region');
  t.true(mem.guestSegments(0x1fffff, 1, segs), 'the last byte');
  t.true(mem.guestSegments(0x300000, 0, segs), 'zero length is fine anywhere');
  t.is(mem.guestSlice(0x1fffff, 2), undefined);
  t.is(mem.userSlice(0x200000 + MiB, 1), undefined);
  t.is(mem.userSlice(0x1fffff, 1), undefined);
});

test('a buffer spanning two adjacent regions becomes two segments; a gap is refused', (t) => {
  const a = memfd(64 * 1024);
  const b = memfd(3 * 4096 + 64 * 1024);
  t.teardown(() => {
    fs.closeSync(a.fd);
    fs.closeSync(b.fd);
  });
  fs.writeSync(a.fd, Buffer.from('ABCD'), 0, 4, 64 * 1024 - 4);
  // Region 2 maps b at file offset 3 pages: the offset is honoured.
  fs.writeSync(b.fd, Buffer.from('EFGH'), 0, 4, 3 * 4096);
  const mem = new GuestMemory(8);
  t.teardown(() => mem.clear());
  mem.add({ guestAddr: 0x10000, size: 64 * 1024, userAddr: 0x1000000, mmapOffset: 0 }, a.dup());
  mem.add({ guestAddr: 0x20000, size: 64 * 1024, userAddr: 0x3000000, mmapOffset: 3 * 4096 }, b.dup());
  const segs: Buffer[] = [];
  t.true(mem.guestSegments(0x20000 - 4, 8, segs));
  t.is(segs.length, 2);
  t.is(concat(segs).toString(), 'ABCDEFGH');
  t.is(mem.guestSlice(0x20000 - 4, 8), undefined, 'not contiguous');
  mem.remove({ guestAddr: 0x20000, size: 64 * 1024, userAddr: 0x3000000, mmapOffset: 0 });
  segs.length = 0;
  t.false(mem.guestSegments(0x20000 - 4, 8, segs), 'second region gone');
  const c = memfd(64 * 1024);
  t.teardown(() => fs.closeSync(c.fd));
  mem.add({ guestAddr: 0x30000, size: 64 * 1024, userAddr: 0x5000000, mmapOffset: 0 }, c.dup());
  t.false(mem.guestSegments(0x20000 - 4, 8, segs), 'a gap between regions');
  t.false(mem.guestSegments(0x30000 - 4, 8, segs));
});

test('bad regions are refused with a reason and their fds closed', (t) => {
  const m = memfd(MiB);
  t.teardown(() => fs.closeSync(m.fd));
  const mem = new GuestMemory(2);
  t.teardown(() => mem.clear());
  mem.add({ guestAddr: 0x100000, size: 0x10000, userAddr: 0x900000, mmapOffset: 0 }, m.dup());
  const cases: [string, { guestAddr: number; size: number; userAddr: number; mmapOffset: number }, RegExp][] = [
    ['zero size', { guestAddr: 0x400000, size: 0, userAddr: 0xa00000, mmapOffset: 0 }, /zero size/],
    ['guest overlap', { guestAddr: 0x10f000, size: 0x2000, userAddr: 0xa00000, mmapOffset: 0 }, /overlaps guest/],
    ['user overlap', { guestAddr: 0x400000, size: 0x2000, userAddr: 0x90f000, mmapOffset: 0 }, /overlaps user/],
    ['beyond the file', { guestAddr: 0x400000, size: 2 * MiB, userAddr: 0xa00000, mmapOffset: 0 }, /file is only/],
    ['offset beyond the file', { guestAddr: 0x400000, size: 0x1000, userAddr: 0xa00000, mmapOffset: MiB }, /file is only/],
    ['end beyond 2^53', { guestAddr: Number.MAX_SAFE_INTEGER - 10, size: 0x1000, userAddr: 0xa00000, mmapOffset: 0 }, /2\^53/],
    ['unsafe number', { guestAddr: 2 ** 60, size: 0x1000, userAddr: 0xa00000, mmapOffset: 0 }, /out of range/],
  ];
  for (const [name, spec, re] of cases) {
    const dup = m.dup();
    const err = t.throws(() => mem.add(spec, dup), { instanceOf: GuestMemoryError }, name);
    t.regex(err?.message ?? '', re, name);
    t.false(fdOpen(dup), `${name}: fd closed`);
  }
  t.is(mem.regionCount, 1);
  // An eventfd is not memory.
  t.throws(() => mem.add({ guestAddr: 0x400000, size: 0x1000, userAddr: 0xa00000, mmapOffset: 0 }, eventfd()), {
    instanceOf: GuestMemoryError,
    message: /not a file/,
  });
  mem.add({ guestAddr: 0x400000, size: 0x1000, userAddr: 0xa00000, mmapOffset: 0 }, m.dup());
  t.throws(() => mem.add({ guestAddr: 0x800000, size: 0x1000, userAddr: 0xc00000, mmapOffset: 0 }, m.dup()), { message: /too many regions/ });
});

test('replace() validates the new table as a whole and keeps the old one on error', (t) => {
  const m = memfd(MiB);
  t.teardown(() => fs.closeSync(m.fd));
  const mem = new GuestMemory(8);
  t.teardown(() => mem.clear());
  mem.replace([{ guestAddr: 0, size: 0x10000, userAddr: 0x100000, mmapOffset: 0 }], [m.dup()]);
  const gen = mem.generation;
  const fds = [m.dup(), m.dup()];
  t.throws(
    () =>
      mem.replace(
        [
          { guestAddr: 0x40000, size: 0x10000, userAddr: 0x200000, mmapOffset: 0 },
          { guestAddr: 0x48000, size: 0x10000, userAddr: 0x300000, mmapOffset: 0x10000 },
        ],
        fds,
      ),
    { instanceOf: GuestMemoryError, message: /overlaps guest/ },
  );
  t.false(fdOpen(fds[0]) || fdOpen(fds[1]), 'all fds closed');
  t.is(mem.generation, gen);
  t.truthy(mem.guestSlice(0, 16), 'old table still there');
  mem.replace([{ guestAddr: 0x40000, size: 0x10000, userAddr: 0x200000, mmapOffset: 0 }], [m.dup()]);
  t.is(mem.guestSlice(0, 16), undefined);
  t.truthy(mem.guestSlice(0x40000, 16));
  t.true(mem.generation > gen);
});

test('a 6 GiB sparse guest: addresses past 4 GiB, window crossings, rings never split', (t) => {
  const size = 6 * GiB;
  const m = memfd(size);
  t.teardown(() => fs.closeSync(m.fd));
  const mem = new GuestMemory(8);
  t.teardown(() => mem.clear());
  const base = 0x100000000; // guest RAM above 4 GiB, as QEMU places it
  mem.add({ guestAddr: base, size, userAddr: 0x7e0000000000, mmapOffset: 0 }, m.dup());
  const put = (off: number, s: string): void => void fs.writeSync(m.fd, Buffer.from(s), 0, s.length, off);
  put(0, 'first');
  put(4 * GiB + 123, 'past-4G');
  put(size - 4, 'last');
  t.is(mem.guestSlice(base, 5)?.toString(), 'first');
  t.is(mem.guestSlice(base + 4 * GiB + 123, 7)?.toString(), 'past-4G');
  t.is(mem.guestSlice(base + size - 4, 4)?.toString(), 'last');
  t.is(mem.guestSlice(base + size - 4, 5), undefined);
  // A 1 MiB object anywhere is contiguous (windows overlap by 1 MiB).
  const step = WINDOW_BYTES - WINDOW_OVERLAP;
  for (const k of [1, 2, 3, 4, 5]) {
    const at = k * step - 100;
    put(at, 'straddle');
    const s = mem.guestSlice(base + at, WINDOW_OVERLAP);
    t.truthy(s, `window boundary ${k}`);
    t.is(s?.subarray(0, 8).toString(), 'straddle');
  }
  // A 3 GiB buffer spans several windows and comes back as consecutive segments.
  const segs: Buffer[] = [];
  put(GiB + 5, 'X');
  put(4 * GiB - 1, 'Y');
  t.true(mem.guestSegments(base + GiB, 3 * GiB, segs));
  t.true(segs.length >= 3);
  t.true(segs.every((s) => s.length <= WINDOW_BYTES));
  t.is(segs.reduce((n, s) => n + s.length, 0), 3 * GiB);
  t.is(segs[0][5], 'X'.charCodeAt(0));
  const lastSeg = segs[segs.length - 1];
  t.is(lastSeg[lastSeg.length - 1], 'Y'.charCodeAt(0));
  segs.length = 0;
  t.false(mem.guestSegments(base + 5 * GiB, 2 * GiB, segs), 'runs past the end');
});
