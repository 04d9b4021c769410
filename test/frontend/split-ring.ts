// The driver side of a virtio split virtqueue, placed in guest memory: descriptor table,
// available ring (driver -> device) and used ring (device -> driver), with EVENT_IDX
// notification suppression both ways and optional indirect descriptor tables. Kick and
// call are real eventfds handed to the backend. Raw descriptor/avail writes are public so
// robustness tests can build malformed chains.
import { GuestMemory } from './guest-memory.js';
import { eventfd, eventfdWrite, eventfdRead, Epoll, closeFd } from '../../src/sys/event-calls.js';

// struct virtq_desc { le64 addr; le32 len; le16 flags; le16 next; }
export const DESC_SIZE = 16;
export const DESC_F_NEXT = 1;
export const DESC_F_WRITE = 2;
export const DESC_F_INDIRECT = 4;
// avail: le16 flags, le16 idx, le16 ring[N], le16 used_event
// used:  le16 flags, le16 idx, { le32 id, le32 len } ring[N], le16 avail_event
export const USED_ELEM_SIZE = 8;
export const USED_F_NO_NOTIFY = 1;
export const AVAIL_F_NO_INTERRUPT = 1;

export interface Buf {
  gpa: number;
  len: number;
}

export interface Used {
  id: number;
  len: number;
}

export interface RingLayout {
  desc: number;
  avail: number;
  used: number;
}

export function ringBytes(size: number): { desc: number; avail: number; used: number } {
  return { desc: DESC_SIZE * size, avail: 6 + 2 * size, used: 6 + USED_ELEM_SIZE * size };
}

/** Allocate the three ring parts of a queue of `size` entries in region `regionIndex`. */
export function allocRing(mem: GuestMemory, size: number, regionIndex = 0, atLeast = 0): RingLayout {
  const b = ringBytes(size);
  return {
    desc: mem.alloc(b.desc, 4096, regionIndex, atLeast),
    avail: mem.alloc(b.avail, 64, regionIndex),
    used: mem.alloc(b.used, 4096, regionIndex),
  };
}

const fenceCell = new Int32Array(new SharedArrayBuffer(4));

/** A full memory barrier (lock-prefixed read-modify-write on x86). */
export function fence(): void {
  Atomics.add(fenceCell, 0, 1);
}

/** vring_need_event from the virtio spec: has `event` been crossed moving old -> next? */
export function needEvent(event: number, next: number, old: number): boolean {
  return ((next - event - 1) & 0xffff) < ((next - old) & 0xffff);
}

export class SplitQueue {
  readonly kickFd = eventfd(0);
  readonly callFd = eventfd(0);
  readonly desc: Buffer;
  readonly avail: Buffer;
  readonly used: Buffer;
  /** Next avail index to publish (free-running u16). */
  availIdx = 0;
  private publishedIdx = 0;
  /** Next used index to consume. */
  lastUsed = 0;
  kicks = 0;
  lastDecision = { ev: 0, next: 0, old: 0 };
  interrupts = 0;
  missedInterrupts = 0;
  private readonly free: number[] = [];
  /** Descriptor ids of each in-flight chain, by head id. */
  private readonly chains = new Map<number, number[]>();
  private readonly epoll = new Epoll(4);

  constructor(
    readonly mem: GuestMemory,
    readonly index: number,
    readonly size: number,
    readonly layout: RingLayout,
    readonly eventIdx: boolean,
  ) {
    const b = ringBytes(size);
    this.desc = mem.view(layout.desc, b.desc);
    this.avail = mem.view(layout.avail, b.avail);
    this.used = mem.view(layout.used, b.used);
    this.desc.fill(0);
    this.avail.fill(0);
    this.used.fill(0);
    for (let i = size - 1; i >= 0; i--) this.free.push(i);
    this.epoll.add(this.callFd, 1);
  }

  get freeCount(): number {
    return this.free.length;
  }

  writeDesc(i: number, addr: number | bigint, len: number, flags: number, next: number): void {
    const o = i * DESC_SIZE;
    this.desc.writeBigUInt64LE(BigInt.asUintN(64, BigInt(addr)), o);
    this.desc.writeUInt32LE(len >>> 0, o + 8);
    this.desc.writeUInt16LE(flags, o + 12);
    this.desc.writeUInt16LE(next & 0xffff, o + 14);
  }

  /** Put `head` in the next avail slot (not yet visible to the device: call publish()). */
  pushAvail(head: number): void {
    this.avail.writeUInt16LE(head & 0xffff, 4 + 2 * (this.availIdx % this.size));
    this.availIdx = (this.availIdx + 1) & 0xffff;
  }

  /**
   * Add a chain: `out` buffers are device-readable, `inb` device-writable. With `indirect`,
   * one ring descriptor points to a table allocated in guest memory. Returns the head id.
   */
  add(out: readonly Buf[], inb: readonly Buf[], indirect = false): number {
    const all = [...out.map((b) => ({ ...b, w: false })), ...inb.map((b) => ({ ...b, w: true }))];
    if (indirect) {
      const id = this.take(1)[0];
      const table = this.indirectTable(id, all.length);
      all.forEach((b, k) => {
        const o = k * DESC_SIZE;
        table.buf.writeBigUInt64LE(BigInt(b.gpa), o);
        table.buf.writeUInt32LE(b.len, o + 8);
        table.buf.writeUInt16LE((b.w ? DESC_F_WRITE : 0) | (k + 1 < all.length ? DESC_F_NEXT : 0), o + 12);
        table.buf.writeUInt16LE(k + 1 < all.length ? k + 1 : 0, o + 14);
      });
      this.writeDesc(id, table.gpa, all.length * DESC_SIZE, DESC_F_INDIRECT, 0);
      this.chains.set(id, [id]);
      this.pushAvail(id);
      return id;
    }
    const ids = this.take(all.length);
    all.forEach((b, k) => {
      const last = k + 1 === all.length;
      this.writeDesc(ids[k], b.gpa, b.len, (b.w ? DESC_F_WRITE : 0) | (last ? 0 : DESC_F_NEXT), last ? 0 : ids[k + 1]);
    });
    this.chains.set(ids[0], ids);
    this.pushAvail(ids[0]);
    return ids[0];
  }

  /** One indirect table per head descriptor: a head is used by one chain at a time. */
  private readonly tables = new Map<number, { gpa: number; buf: Buffer; cap: number }>();

  private indirectTable(head: number, n: number): { gpa: number; buf: Buffer } {
    const t = this.tables.get(head);
    if (t !== undefined && t.cap >= n) return t;
    const cap = Math.max(n, 8);
    const region = this.mem.regions.indexOf(this.mem.regionOf(this.layout.desc));
    const gpa = this.mem.alloc(cap * DESC_SIZE, 16, region);
    const nt = { gpa, buf: this.mem.view(gpa, cap * DESC_SIZE), cap };
    this.tables.set(head, nt);
    return nt;
  }

  private take(n: number): number[] {
    if (n > this.free.length) throw new Error(`queue ${this.index}: ${n} descriptors wanted, ${this.free.length} free`);
    return this.free.splice(this.free.length - n, n);
  }

  /** Register a hand-built chain so poll() can free it; `ids` are the descriptors it uses. */
  track(head: number, ids: number[]): void {
    for (const id of ids) {
      const k = this.free.indexOf(id);
      if (k >= 0) this.free.splice(k, 1);
    }
    this.chains.set(head, ids);
  }

  /** Make pushed chains visible and kick the device unless it asked not to be. */
  publish(forceKick = false): void {
    const old = this.publishedIdx;
    const next = this.availIdx;
    if (this.eventIdx) this.avail.writeUInt16LE(this.lastUsed, 4 + 2 * this.size); // used_event
    // A full barrier between publishing avail.idx and reading avail_event / used.flags (the
    // spec's mb()): x86 may otherwise let the load pass the store, and a device that has
    // just set avail_event would never hear of this request. Atomics on a view of mmap'd
    // memory (not a SharedArrayBuffer) are not enough: a locked add on a SharedArrayBuffer is.
    this.avail.writeUInt16LE(next, 2);
    fence();
    this.publishedIdx = next;
    let kick: boolean;
    if (this.eventIdx) {
      const ev = this.used.readUInt16LE(4 + USED_ELEM_SIZE * this.size);
      this.lastDecision = { ev, next, old };
      kick = needEvent(ev, next, old);
    }
    else kick = (this.used.readUInt16LE(0) & USED_F_NO_NOTIFY) === 0;
    if (kick || forceKick) this.kick();
  }

  kick(): void {
    this.kicks++;
    eventfdWrite(this.kickFd);
  }

  usedIdx(): number {
    return this.used.readUInt16LE(2);
  }

  /** Collect completed chains (frees their descriptors). */
  poll(): Used[] {
    const out: Used[] = [];
    const idx = this.usedIdx();
    while (this.lastUsed !== idx) {
      const o = 4 + USED_ELEM_SIZE * (this.lastUsed % this.size);
      const id = this.used.readUInt32LE(o);
      const len = this.used.readUInt32LE(o + 4);
      const ids = this.chains.get(id);
      if (ids !== undefined) {
        this.chains.delete(id);
        for (const d of ids) this.free.push(d);
      }
      out.push({ id, len });
      this.lastUsed = (this.lastUsed + 1) & 0xffff;
    }
    // Ask for an interrupt at the next used entry. The fence orders that store before the
    // caller's next read of used.idx: otherwise a completion landing in between could see
    // the old used_event, skip the interrupt, and leave us asleep (a lost wake-up).
    if (this.eventIdx) {
      this.avail.writeUInt16LE(this.lastUsed, 4 + 2 * this.size);
      fence();
    }
    return out;
  }

  /**
   * Wait until at least one chain completes or `timeoutMs` passes (returns [] then). Waits on
   * the call eventfd; re-checks the used ring after arming used_event to close the race.
   */
  wait(timeoutMs = 10000): Used[] {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const got = this.poll();
      if (got.length > 0) return got;
      const left = deadline - Date.now();
      if (left <= 0) return [];
      if (this.epoll.wait(Math.min(left, 1000)) > 0) {
        if (eventfdRead(this.callFd) > 0n) this.interrupts++;
      } else if (this.usedIdx() !== this.lastUsed) {
        // Completed, yet no interrupt came for a whole second: the device missed a signal.
        this.missedInterrupts++;
      }
    }
  }

  /** Wait until `count` chains have completed in total; throws on timeout. */
  waitN(count: number, timeoutMs = 10000): Used[] {
    const all: Used[] = [];
    const deadline = Date.now() + timeoutMs;
    while (all.length < count) {
      const got = this.wait(Math.max(0, deadline - Date.now()));
      if (got.length === 0) throw new Error(`queue ${this.index}: ${all.length}/${count} completions before timeout`);
      all.push(...got);
    }
    return all;
  }

  close(): void {
    this.epoll.close();
    closeFd(this.kickFd);
    closeFd(this.callFd);
  }
}
