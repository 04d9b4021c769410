// One split virtqueue as the backend sees it: its configuration from the vhost-user
// messages (size, ring addresses, base index, kick/call/err eventfds, enable), the rings
// resolved to views of guest memory, popping available chains, batching used entries and
// deciding when the guest needs an interrupt (EVENT_IDX or the NO_INTERRUPT flag) and when
// we want kicks (avail_event or the NO_NOTIFY flag). Ring indices and event fields are read
// and written with Atomics, which are sequentially consistent and so also give the memory
// barriers the virtio ordering rules ask for.
import { eventfdWrite, closeFd } from '../sys/event-calls.js';
import type { Logger } from '../log.js';
import type { GuestMemory } from './guest-memory.js';
import { DescriptorChain, walkChain, DESC_SIZE, MAX_QUEUE_SIZE, type WalkOptions } from './descriptor-chain.js';

// struct virtq_avail: le16 flags, le16 idx, le16 ring[N], le16 used_event (u16 indices).
const AVAIL_FLAGS = 0;
const AVAIL_IDX = 1;
const AVAIL_RING = 2;
// struct virtq_used: le16 flags, le16 idx, {le32 id, le32 len} ring[N], le16 avail_event.
const USED_FLAGS = 0;
const USED_IDX = 1;
const USED_RING_U32 = 1; // ring[i].id at u32 index 1 + 2i, .len at 2 + 2i

export const VRING_AVAIL_F_NO_INTERRUPT = 1;
export const VRING_USED_F_NO_NOTIFY = 1;

/** Byte sizes of the three parts of a split ring of n entries (event fields included). */
export function ringSizes(n: number): { desc: number; avail: number; used: number } {
  return { desc: DESC_SIZE * n, avail: 6 + 2 * n, used: 6 + 8 * n };
}

/** Alignment the virtio spec requires of each part. */
export const RING_ALIGN = { desc: 16, avail: 2, used: 4 } as const;

/** Frontend virtual addresses of the ring parts (SET_VRING_ADDR). */
export interface RingAddresses {
  desc: number;
  avail: number;
  used: number;
}

/** What all queues of a device share: memory, negotiated ring features, logging. */
export interface QueueEnv {
  mem: GuestMemory;
  log: Logger;
  /** VIRTIO_RING_F_EVENT_IDX negotiated. */
  eventIdx: boolean;
  /** Options for the chain walker (INDIRECT_DESC negotiated). */
  walk: WalkOptions;
  /** VHOST_USER_F_PROTOCOL_FEATURES negotiated: rings start disabled until SET_VRING_ENABLE. */
  protocolFeatures: boolean;
}

/** What moves in a ring while it is served (SplitQueue.progress()). */
export interface QueueProgress {
  lastAvail: number;
  usedIdx: number;
  signalledUsed: number;
  sinceSignal: number;
  broken: boolean;
}

/** Force an interrupt after this many completions without one, so u16 comparisons never wrap. */
const SIGNAL_WRAP_GUARD = 0x8000;

export class SplitQueue {
  size = 0;
  addrs: RingAddresses | undefined;
  kickFd = -1;
  callFd = -1;
  errFd = -1;
  /** Set by SET_VRING_KICK, cleared by GET_VRING_BASE (the spec's started/stopped). */
  started = false;
  /** SET_VRING_ENABLE's value, or undefined for the default implied by protocol features. */
  explicitEnable: boolean | undefined;
  /** A guest broke the ring's rules; ignored until the ring is restarted. */
  broken = false;
  /** Completions pushed but not yet published in used->idx. */
  pendingUsed = 0;
  /** Completions published since the last interrupt decision (publish()). */
  undecided = 0;

  private lastAvail = 0;
  private usedIdx = 0;
  private signalledUsed = 0;
  private sinceSignal = 0;
  private desc: Buffer | undefined;
  /** The descriptor table as 32-bit words, when its view is 4-aligned (it is 16-aligned in guest memory). */
  private descWords: Uint32Array | undefined;
  private avail: Uint16Array | undefined;
  private used16: Uint16Array | undefined;
  private used32: Uint32Array | undefined;
  private resolvedGen = -1;
  private unresolvedLogged = -1;

  constructor(
    readonly index: number,
    private readonly env: QueueEnv,
  ) {}

  get enabled(): boolean {
    return this.explicitEnable ?? !this.env.protocolFeatures;
  }

  /** SET_VRING_BASE: where the next available entry is (and, in order, the next used one). */
  setBase(base: number): void {
    this.lastAvail = base & 0xffff;
    this.usedIdx = this.lastAvail;
    this.signalledUsed = this.lastAvail;
    this.sinceSignal = 0;
    this.pendingUsed = 0;
    this.undecided = 0;
  }

  /** Guest physical address of the used ring while the frontend wants its writes logged, else -1. */
  logUsed = -1;

  setAddresses(addrs: RingAddresses): void {
    this.addrs = addrs;
    this.invalidate();
  }

  setSize(n: number): void {
    this.size = n;
    this.invalidate();
  }

  /** Drop cached ring views (memory table changed, or the ring was reconfigured). */
  invalidate(): void {
    this.resolvedGen = -1;
    this.desc = undefined;
    this.descWords = undefined;
    this.avail = undefined;
    this.used16 = undefined;
    this.used32 = undefined;
  }

  /**
   * A queue thread's copy of a ring (queue-worker.ts) borrows the owner's descriptors: it
   * never closes them, it only stops using one, and reports that when handing back.
   */
  borrowedFds = false;

  replaceFd(which: 'kickFd' | 'callFd' | 'errFd', fd: number): void {
    if (this[which] >= 0 && !this.borrowedFds) closeFd(this[which]);
    this[which] = fd;
  }

  /** The ring's moving state, to hand the queue to another thread and back (all completions flushed first). */
  progress(): QueueProgress {
    return { lastAvail: this.lastAvail, usedIdx: this.usedIdx, signalledUsed: this.signalledUsed, sinceSignal: this.sinceSignal, broken: this.broken };
  }

  /** Take over the moving state another thread's copy of this ring reported. */
  adoptProgress(p: QueueProgress): void {
    this.lastAvail = p.lastAvail & 0xffff;
    this.usedIdx = p.usedIdx & 0xffff;
    this.signalledUsed = p.signalledUsed & 0xffff;
    this.sinceSignal = p.sinceSignal;
    this.broken = p.broken;
    this.pendingUsed = 0;
    this.undecided = 0;
  }

  /**
   * Walk the chain at `head` again (a queue thread popped it and hands it to the owner):
   * the guest's descriptors are read afresh and checked as pop() checks them.
   */
  walkHead(head: number, chain: DescriptorChain): void {
    if (!this.ready()) {
      chain.reset(head);
      chain.error = `queue ${this.index} is not ready`;
      return;
    }
    walkChain(this.env.mem, this.desc as Buffer, this.size, head, this.env.walk, chain, this.descWords);
  }

  /** GET_VRING_BASE: stop the ring and return the index of the next available entry. */
  stop(): number {
    this.started = false;
    this.broken = false;
    this.replaceFd('kickFd', -1);
    this.replaceFd('callFd', -1);
    this.replaceFd('errFd', -1);
    this.invalidate();
    return this.lastAvail;
  }

  /** Stop and forget everything (RESET_OWNER / disconnect). */
  reset(): void {
    this.stop();
    this.size = 0;
    this.addrs = undefined;
    this.explicitEnable = undefined;
    this.setBase(0);
  }

  /** True when the rings can be used now: started, enabled, configured and inside memory. */
  ready(): boolean {
    if (!this.started || this.broken || !this.enabled || this.size === 0 || this.addrs === undefined) return false;
    if (this.resolvedGen === this.env.mem.generation) return true;
    return this.resolve();
  }

  /** Why ready() is false (for logs and tests). */
  whyNotReady(): string {
    if (!this.started) return 'not started';
    if (this.broken) return 'broken';
    if (!this.enabled) return 'disabled';
    if (this.size === 0) return 'no size';
    if (this.addrs === undefined) return 'no addresses';
    return this.ready() ? 'ready' : 'ring addresses outside guest memory';
  }

  private resolve(): boolean {
    this.invalidate();
    const a = this.addrs;
    if (a === undefined) return false;
    const mem = this.env.mem;
    const sz = ringSizes(this.size);
    const desc = mem.userSlice(a.desc, sz.desc);
    const avail = mem.userSlice(a.avail, sz.avail);
    const used = mem.userSlice(a.used, sz.used);
    if (desc === undefined || avail === undefined || used === undefined || avail.byteOffset % 2 !== 0 || used.byteOffset % 4 !== 0) {
      if (this.unresolvedLogged !== mem.generation) {
        this.unresolvedLogged = mem.generation;
        this.env.log.warn(`queue ${this.index}: ring addresses desc 0x${a.desc.toString(16)} avail 0x${a.avail.toString(16)} used 0x${a.used.toString(16)} (size ${this.size}) are not inside guest memory`);
      }
      return false;
    }
    this.desc = desc;
    this.descWords = desc.byteOffset % 4 === 0 ? new Uint32Array(desc.buffer, desc.byteOffset, sz.desc / 4) : undefined;
    this.avail = new Uint16Array(avail.buffer, avail.byteOffset, sz.avail / 2);
    this.used16 = new Uint16Array(used.buffer, used.byteOffset, sz.used / 2);
    this.used32 = new Uint32Array(used.buffer, used.byteOffset, (sz.used - 2) / 4);
    this.resolvedGen = mem.generation;
    return true;
  }

  /** Mark the ring broken (the guest broke a ring-level rule) and tell the frontend. */
  markBroken(reason: string): void {
    this.broken = true;
    this.env.log.error(`queue ${this.index}: ${reason}; the queue is stopped until it is reset`);
    try {
      if (this.errFd >= 0) eventfdWrite(this.errFd);
    } catch {
      this.replaceFd('errFd', -1);
    }
  }

  /**
   * Take the next available chain into `chain`. Returns false when there is none (or the
   * ring is unusable). A malformed chain still returns true, with chain.error set: the
   * caller completes it with length 0.
   */
  pop(chain: DescriptorChain): boolean {
    if (!this.ready()) return false;
    const avail = this.avail as Uint16Array;
    const idx = Atomics.load(avail, AVAIL_IDX);
    if (idx === this.lastAvail) return false;
    const pending = (idx - this.lastAvail) & 0xffff;
    if (pending > this.size) {
      this.markBroken(`avail index ${idx} is ${pending} entries ahead of ${this.lastAvail}, more than the queue size ${this.size}`);
      return false;
    }
    const head = Atomics.load(avail, AVAIL_RING + (this.lastAvail & (this.size - 1)));
    this.lastAvail = (this.lastAvail + 1) & 0xffff;
    walkChain(this.env.mem, this.desc as Buffer, this.size, head, this.env.walk, chain, this.descWords);
    return true;
  }

  /** Number of entries the driver has made available that we have not taken yet. */
  availableCount(): number {
    if (!this.ready()) return 0;
    return (Atomics.load(this.avail as Uint16Array, AVAIL_IDX) - this.lastAvail) & 0xffff;
  }

  /** Put a completion in the used ring; it becomes visible at publish(). */
  pushUsed(head: number, len: number): void {
    const used32 = this.used32;
    if (used32 === undefined) return;
    const slot = this.usedIdx & (this.size - 1);
    used32[USED_RING_U32 + 2 * slot] = head;
    used32[USED_RING_U32 + 2 * slot + 1] = len;
    this.usedIdx = (this.usedIdx + 1) & 0xffff;
    this.pendingUsed++;
  }

  /**
   * Make pushed completions visible in used->idx at once, without deciding about an
   * interrupt: a driver that is awake (reaping, or polling) takes them from the ring.
   */
  exposeUsed(): void {
    if (this.pendingUsed === 0 || this.used16 === undefined) return;
    Atomics.store(this.used16, USED_IDX, this.usedIdx);
    this.sinceSignal += this.pendingUsed;
    this.undecided += this.pendingUsed;
    this.pendingUsed = 0;
  }

  /**
   * Publish pending completions in used->idx; returns true when the guest wants an
   * interrupt for the completions published since the last decision.
   */
  publish(): boolean {
    this.exposeUsed();
    if (this.undecided === 0 || this.used16 === undefined || this.avail === undefined) return false;
    this.undecided = 0;
    let wanted: boolean;
    if (this.sinceSignal >= SIGNAL_WRAP_GUARD) wanted = true;
    else if (this.env.eventIdx) {
      const event = Atomics.load(this.avail, AVAIL_RING + this.size);
      // vring_need_event: did used->idx move past used_event since we last signalled?
      wanted = ((this.usedIdx - event - 1) & 0xffff) < ((this.usedIdx - this.signalledUsed) & 0xffff);
    } else {
      wanted = (Atomics.load(this.avail, AVAIL_FLAGS) & VRING_AVAIL_F_NO_INTERRUPT) === 0;
    }
    if (wanted) {
      this.signalledUsed = this.usedIdx;
      this.sinceSignal = 0;
    }
    return wanted;
  }

  /** Interrupt the guest (write the call eventfd). */
  signal(): void {
    if (this.callFd < 0) return;
    try {
      eventfdWrite(this.callFd);
    } catch (err) {
      // Not an eventfd we can write: the guest would wait for ever either way; say so once.
      this.env.log.error(`queue ${this.index}: cannot signal the call descriptor (${(err as Error).message}); dropped`);
      this.replaceFd('callFd', -1);
    }
  }

  /** Publish and interrupt if the guest wants it. */
  flush(): void {
    if (this.publish()) this.signal();
  }

  /** While draining the ring, ask the driver not to kick (no-op with EVENT_IDX). */
  disableNotify(): void {
    if (this.env.eventIdx || !this.ready()) return;
    const used16 = this.used16 as Uint16Array;
    Atomics.store(used16, USED_FLAGS, Atomics.load(used16, USED_FLAGS) | VRING_USED_F_NO_NOTIFY);
  }

  /**
   * Ask for kicks again; returns true when entries arrived meanwhile (the caller drains
   * again, since the driver may have skipped the kick).
   */
  enableNotify(): boolean {
    if (!this.ready()) return false;
    const used16 = this.used16;
    const avail = this.avail;
    if (used16 === undefined || avail === undefined) return false;
    if (this.env.eventIdx) Atomics.store(used16, 2 + 4 * this.size, this.lastAvail);
    else Atomics.store(used16, USED_FLAGS, Atomics.load(used16, USED_FLAGS) & ~VRING_USED_F_NO_NOTIFY);
    return Atomics.load(avail, AVAIL_IDX) !== this.lastAvail;
  }

  /** Close every descriptor this queue owns. */
  close(): void {
    this.stop();
  }
}

/** Valid queue sizes: powers of two from 1 to max. */
export function validQueueSize(n: number, max = MAX_QUEUE_SIZE): boolean {
  return Number.isInteger(n) && n >= 1 && n <= max && (n & (n - 1)) === 0;
}
