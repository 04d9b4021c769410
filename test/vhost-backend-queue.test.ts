// The split virtqueue and its chain walker against rings built by hand in a memfd that the
// test maps as the "driver": good chains (direct, indirect, zero copy), every malformed
// chain (each must fail alone, with a reason, and complete with length 0), ring-level
// breakage, EVENT_IDX and flag-based notification suppression, index wrap-around.
import test from 'ava';
import fs from 'node:fs';
import { GuestMemory } from '../src/vhost/guest-memory.js';
import { SplitQueue, type QueueEnv, VRING_AVAIL_F_NO_INTERRUPT, VRING_USED_F_NO_NOTIFY } from '../src/vhost/virtqueue.js';
import { DescriptorChain, VRING_DESC_F_NEXT as NEXT, VRING_DESC_F_WRITE as WRITE, VRING_DESC_F_INDIRECT as INDIRECT } from '../src/vhost/descriptor-chain.js';
import { memfdCreate, ftruncate, mmapFd, munmap, viewBuffer, PROT_READ, PROT_WRITE, MAP_SHARED } from '../src/sys/memory-calls.js';
import { eventfd, eventfdRead, closeFd } from '../src/sys/event-calls.js';
import type { Logger } from '../src/log.js';

const MiB = 2 ** 20;
const G = 0x40000000; // guest physical base of the test region
const U = 0x7f1000000000; // frontend virtual base of the same bytes
const DESC = 0x0;
const AVAIL = 0x8000;
const USED = 0x10000;
const DATA = 0x20000;
const TABLE = 0x80000; // indirect tables

interface Rig {
  q: SplitQueue;
  env: QueueEnv;
  mem: GuestMemory;
  drv: Driver;
  lines: string[];
  chain: DescriptorChain;
}

/** The guest driver's side of the ring: writes descriptors and avail entries, reads used. */
class Driver {
  availIdx = 0;
  constructor(
    readonly view: Buffer,
    readonly size: number,
  ) {}

  desc(i: number, addr: number, len: number, flags = 0, next = 0, table = DESC): void {
    const o = table + 16 * i;
    this.view.writeUInt32LE(addr % 0x100000000, o);
    this.view.writeUInt32LE(Math.floor(addr / 0x100000000), o + 4);
    this.view.writeUInt32LE(len, o + 8);
    this.view.writeUInt16LE(flags, o + 12);
    this.view.writeUInt16LE(next, o + 14);
  }

  offer(head: number): void {
    this.view.writeUInt16LE(head, AVAIL + 4 + 2 * (this.availIdx % this.size));
    this.availIdx = (this.availIdx + 1) & 0xffff;
    this.view.writeUInt16LE(this.availIdx, AVAIL + 2);
  }

  setAvailIdx(n: number): void {
    this.availIdx = n & 0xffff;
    this.view.writeUInt16LE(this.availIdx, AVAIL + 2);
  }

  usedIdx(): number {
    return this.view.readUInt16LE(USED + 2);
  }

  used(i: number): { id: number; len: number } {
    const o = USED + 4 + 8 * (i % this.size);
    return { id: this.view.readUInt32LE(o), len: this.view.readUInt32LE(o + 4) };
  }

  set usedEvent(v: number) {
    this.view.writeUInt16LE(v, AVAIL + 4 + 2 * this.size);
  }

  get availEvent(): number {
    return this.view.readUInt16LE(USED + 4 + 8 * this.size);
  }

  set availFlags(v: number) {
    this.view.writeUInt16LE(v, AVAIL);
  }

  get usedFlags(): number {
    return this.view.readUInt16LE(USED);
  }

  put(off: number, s: string): void {
    this.view.write(s, off);
  }
}

function captureLog(lines: string[]): Logger {
  const push = (l: string) => (m: string) => void lines.push(`${l}: ${m}`);
  return { error: push('error'), warn: push('warn'), info: push('info'), debug: push('debug'), trace: push('trace') };
}

function rig(t: { teardown(fn: () => void): void }, size = 16, regionSize = MiB): Rig {
  const fd = memfdCreate('vhost-backend-queue-test');
  ftruncate(fd, regionSize);
  const mapLen = Math.min(regionSize, MiB);
  const addr = mmapFd(mapLen, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  const view = viewBuffer(addr, mapLen);
  const mem = new GuestMemory(8);
  mem.add({ guestAddr: G, size: regionSize, userAddr: U, mmapOffset: 0 }, fs.openSync(`/proc/self/fd/${fd}`, 'r+'));
  const lines: string[] = [];
  const env: QueueEnv = { mem, log: captureLog(lines), eventIdx: false, walk: { indirect: true }, protocolFeatures: false };
  const q = new SplitQueue(1, env);
  q.setSize(size);
  q.setAddresses({ desc: U + DESC, avail: U + AVAIL, used: U + USED });
  q.setBase(0);
  q.started = true;
  t.teardown(() => {
    q.close();
    mem.clear();
    munmap(addr, mapLen);
    closeFd(fd);
  });
  return { q, env, mem, drv: new Driver(view, size), lines, chain: new DescriptorChain() };
}

test('a well-formed chain: readable then writable views of guest memory, zero copy', (t) => {
  const { q, drv, chain } = rig(t);
  t.is(q.whyNotReady(), 'ready');
  drv.put(DATA, 'hello');
  drv.put(DATA + 0x100, 'abc');
  drv.desc(0, G + DATA, 5, NEXT, 1);
  drv.desc(1, G + DATA + 0x100, 3, NEXT, 2);
  drv.desc(2, G + DATA + 0x1000, 100, WRITE | NEXT, 3);
  drv.desc(3, G + DATA + 0x2000, 50, WRITE);
  t.false(q.pop(chain), 'nothing offered yet');
  drv.offer(0);
  t.is(q.availableCount(), 1);
  t.true(q.pop(chain));
  t.is(chain.error, undefined);
  t.is(chain.head, 0);
  t.is(Buffer.concat(chain.readable).toString(), 'helloabc');
  t.deepEqual(chain.writable.map((b) => b.length), [100, 50]);
  t.is(chain.readableBytes, 8);
  t.is(chain.writableBytes, 150);
  // The views are guest memory itself: later driver writes show through, device writes land.
  drv.put(DATA, 'HELLO');
  t.is(chain.readable[0].toString(), 'HELLO');
  chain.writable[0].write('reply');
  t.is(drv.view.toString('utf8', DATA + 0x1000, DATA + 0x1005), 'reply');
  q.pushUsed(chain.head, 5);
  t.is(drv.usedIdx(), 0, 'not visible before publish');
  t.true(q.publish(), 'the guest wants an interrupt');
  t.is(drv.usedIdx(), 1);
  t.deepEqual(drv.used(0), { id: 0, len: 5 });
  t.false(q.pop(chain));
});

test('a chain through an indirect table', (t) => {
  const { q, drv, chain } = rig(t);
  drv.put(DATA, 'in-direct');
  drv.desc(0, G + DATA, 3, NEXT, 1, TABLE);
  drv.desc(1, G + DATA + 3, 6, NEXT, 2, TABLE);
  drv.desc(2, G + DATA + 0x1000, 64, WRITE, 0, TABLE);
  drv.desc(5, G + TABLE, 3 * 16, INDIRECT);
  drv.offer(5);
  t.true(q.pop(chain));
  t.is(chain.error, undefined);
  t.is(chain.head, 5);
  t.is(Buffer.concat(chain.readable).toString(), 'in-direct');
  t.is(chain.writableBytes, 64);
});

// Each case sets up descriptors and returns the head to offer; the chain must fail alone.
const malformed: [string, (d: Driver) => number, RegExp, Partial<QueueEnv>?][] = [
  ['loop', (d) => (d.desc(0, G + DATA, 8, NEXT, 1), d.desc(1, G + DATA, 8, NEXT, 0), 0), /longer than the queue.*loop/],
  ['next index >= queue size', (d) => (d.desc(0, G + DATA, 8, NEXT, 16), 0), /index 16 >= queue size 16/],
  ['head index >= queue size', () => 20, /index 20 >= queue size 16/],
  ['address outside memory', (d) => (d.desc(0, G + 2 * MiB, 8), 0), /outside guest memory/],
  ['address below memory', (d) => (d.desc(0, G - 8, 8), 0), /outside guest memory/],
  ['buffer runs off the end of memory', (d) => (d.desc(0, G + MiB - 10, 20), 0), /outside guest memory/],
  ['address beyond 2^53', (d) => (d.desc(0, 2 ** 60, 8), 0), /beyond guest memory/],
  ['address 2^64 - 1', (d) => (d.desc(0, 2 ** 64 - 4096, 8), 0), /beyond guest memory/],
  ['writable before readable', (d) => (d.desc(0, G + DATA, 8, WRITE | NEXT, 1), d.desc(1, G + DATA, 8), 0), /readable descriptor after a writable/],
  ['indirect inside indirect', (d) => (d.desc(0, G + TABLE + 0x100, 16, INDIRECT, 0, TABLE), d.desc(0, G + TABLE, 16, INDIRECT), 0), /indirect descriptor inside an indirect table/],
  ['indirect length not a multiple of 16', (d) => (d.desc(0, G + TABLE, 24, INDIRECT), 0), /not a positive multiple of 16/],
  ['indirect length 0', (d) => (d.desc(0, G + TABLE, 0, INDIRECT), 0), /not a positive multiple of 16/],
  ['indirect with NEXT', (d) => (d.desc(0, G + TABLE, 32, INDIRECT | NEXT, 1), 0), /indirect descriptor with NEXT/],
  ['loop inside an indirect table', (d) => (d.desc(0, G + DATA, 8, NEXT, 1, TABLE), d.desc(1, G + DATA, 8, NEXT, 0, TABLE), d.desc(0, G + TABLE, 32, INDIRECT), 0), /longer than its indirect table/],
  ['indirect next beyond its table', (d) => (d.desc(0, G + DATA, 8, NEXT, 2, TABLE), d.desc(0, G + TABLE, 32, INDIRECT), 0), /index 2 >= indirect table size 2/],
  ['indirect table outside memory', (d) => (d.desc(0, G + MiB - 16, 32, INDIRECT), 0), /indirect table .* outside guest memory/],
  ['indirect without INDIRECT_DESC', (d) => (d.desc(0, G + TABLE, 16, INDIRECT), 0), /INDIRECT_DESC was not negotiated/, { walk: { indirect: false } }],
  ['writable buffer outside memory', (d) => (d.desc(0, G + DATA, 8, NEXT, 1), d.desc(1, G + 4 * MiB, 8, WRITE), 0), /writable buffer .* outside guest memory/],
];

for (const [name, build, re, envPatch] of malformed) {
  test(`malformed chain fails alone: ${name}`, (t) => {
    const { q, env, drv, chain } = rig(t);
    Object.assign(env, envPatch ?? {});
    drv.put(DATA, 'data');
    // A good request before and after the bad one: both must be served normally.
    drv.desc(10, G + DATA, 4, 0);
    drv.offer(10);
    drv.offer(build(drv));
    drv.offer(10);
    t.true(q.pop(chain));
    t.is(chain.error, undefined);
    q.pushUsed(chain.head, 1);
    t.true(q.pop(chain));
    t.regex(chain.error ?? '', re);
    t.is(chain.readable.length + chain.writable.length, 0, 'no views of a bad chain');
    q.pushUsed(chain.head, 0);
    t.true(q.pop(chain));
    t.is(chain.error, undefined);
    t.is(Buffer.concat(chain.readable).toString(), 'data');
    q.pushUsed(chain.head, 1);
    q.publish();
    t.is(drv.usedIdx(), 3);
    t.is(drv.used(1).len, 0);
    t.false(q.broken);
  });
}

test('32-bit length overflow across a chain is refused (guest larger than 4 GiB)', (t) => {
  const { q, drv, chain } = rig(t, 16, 5 * 2 ** 30);
  drv.desc(0, G + 4096, 0xffffffff, WRITE | NEXT, 1);
  drv.desc(1, G + 4096, 2, WRITE);
  drv.offer(0);
  t.true(q.pop(chain));
  t.regex(chain.error ?? '', /writable length overflows 32 bits/);
  // The same 4 GiB buffer alone is fine, in windows of at most 1 GiB.
  drv.desc(2, G + 4096, 0xffffffff, WRITE);
  drv.offer(2);
  t.true(q.pop(chain));
  t.is(chain.error, undefined);
  t.is(chain.writableBytes, 0xffffffff);
  t.true(chain.writable.length >= 4);
});

test('an avail index that jumps past the queue size breaks the queue and signals err', (t) => {
  const { q, drv, chain, lines } = rig(t);
  const err = eventfd();
  q.replaceFd('errFd', err);
  drv.setAvailIdx(17);
  t.false(q.pop(chain));
  t.true(q.broken);
  t.is(q.whyNotReady(), 'broken');
  t.true(lines.some((l) => /more than the queue size 16/.test(l)));
  t.is(eventfdRead(err), 1n);
  // A restart (stop, then base and kick again) clears it.
  q.stop();
  q.setBase(17);
  q.started = true;
  t.false(q.broken);
  t.false(q.pop(chain));
});

test('EVENT_IDX: interrupts only when used->idx passes used_event; avail_event set on enable', (t) => {
  const { q, env, drv, chain } = rig(t);
  env.eventIdx = true;
  drv.desc(0, G + DATA, 4);
  for (let i = 0; i < 3; i++) drv.offer(0);
  drv.usedEvent = 1; // interrupt me once entry 1 is used (idx goes from 1 to 2)
  const step = (): boolean => {
    t.true(q.pop(chain));
    q.pushUsed(chain.head, 0);
    return q.publish();
  };
  t.false(step(), 'idx 1: not yet');
  t.true(step(), 'idx 2: passed used_event');
  t.false(step(), 'idx 3: used_event not moved');
  q.disableNotify();
  t.false(q.enableNotify(), 'nothing new');
  t.is(drv.availEvent, 3, 'kick me when entry 3 is made available');
  drv.offer(0);
  t.true(q.enableNotify(), 'an entry arrived: drain again');
  t.is(drv.usedFlags & VRING_USED_F_NO_NOTIFY, 0, 'flags untouched with EVENT_IDX');
});

test('without EVENT_IDX: NO_INTERRUPT suppresses calls, NO_NOTIFY set while draining', (t) => {
  const { q, drv, chain } = rig(t);
  const call = eventfd();
  q.replaceFd('callFd', call);
  drv.desc(0, G + DATA, 4);
  drv.offer(0);
  drv.offer(0);
  drv.availFlags = VRING_AVAIL_F_NO_INTERRUPT;
  q.disableNotify();
  t.is(drv.usedFlags & VRING_USED_F_NO_NOTIFY, VRING_USED_F_NO_NOTIFY);
  t.true(q.pop(chain));
  q.pushUsed(chain.head, 0);
  q.flush();
  t.is(eventfdRead(call), 0n, 'no interrupt wanted');
  drv.availFlags = 0;
  t.true(q.pop(chain));
  q.pushUsed(chain.head, 0);
  q.flush();
  t.is(eventfdRead(call), 1n, 'one interrupt for the batch');
  t.false(q.enableNotify());
  t.is(drv.usedFlags & VRING_USED_F_NO_NOTIFY, 0);
});

test('ring addresses outside memory: the queue waits, then works once memory covers them', (t) => {
  const { q, mem, drv, chain, lines } = rig(t);
  q.setAddresses({ desc: U + 2 * MiB, avail: U + AVAIL, used: U + USED });
  t.false(q.pop(chain));
  t.is(q.whyNotReady(), 'ring addresses outside guest memory');
  t.true(lines.some((l) => /not inside guest memory/.test(l)));
  q.setAddresses({ desc: U + MiB - 16 * 15, avail: U + AVAIL, used: U + USED });
  t.false(q.ready(), 'a table that runs off the end of the region');
  q.setAddresses({ desc: U + DESC, avail: U + AVAIL, used: U + USED });
  t.true(q.ready());
  mem.clear();
  t.false(q.ready(), 'memory removed: views dropped');
  drv.desc(0, G + DATA, 4);
  drv.offer(0);
  t.false(q.pop(chain));
});

test('disabled, stopped and restarted queues; indices wrap at 2^16', (t) => {
  const { q, drv, chain } = rig(t);
  drv.desc(0, G + DATA, 4);
  q.explicitEnable = false;
  drv.offer(0);
  t.false(q.pop(chain), 'disabled');
  q.explicitEnable = true;
  t.true(q.pop(chain));
  q.pushUsed(chain.head, 0);
  q.flush();
  t.is(q.stop(), 1, 'GET_VRING_BASE: the next avail index');
  t.false(q.pop(chain), 'stopped');
  // Restart near the wrap point.
  q.setBase(65534);
  drv.setAvailIdx(65534);
  drv.view.fill(0, USED, USED + 4);
  drv.view.writeUInt16LE(65534, USED + 2);
  q.started = true;
  for (let i = 0; i < 4; i++) drv.offer(0);
  let n = 0;
  while (q.pop(chain)) {
    q.pushUsed(chain.head, 7);
    n++;
  }
  q.flush();
  t.is(n, 4);
  t.is(drv.usedIdx(), 2);
  t.deepEqual(drv.used(1), { id: 0, len: 7 });
  t.is(q.stop(), 2);
});
