// The channel between the device loop (the owner of the FUSE state and of every vhost-user
// message) and one queue thread (--queue-threads): a SharedArrayBuffer read and written
// with Atomics only, plus two eventfds to wake either side from its epoll_wait. Neither
// side runs a JS event loop while serving, so postMessage is never used after start-up.
//
// Commands go owner -> thread (CMD, SEQ; the thread answers ACK = SEQ when done); chains the
// thread does not serve itself go thread -> owner in the forward ring (descriptor heads),
// and their used lengths come back in the return ring (head, length pairs). Both rings are
// single-producer single-consumer with free-running 32-bit indices.
import { MAX_QUEUE_SIZE } from './descriptor-chain.js';
import type { QueueProgress } from './virtqueue.js';
import type { SharedRegion } from './guest-memory.js';
import type { WalkOptions } from './descriptor-chain.js';

export const Cmd = { NONE: 0, SERVE: 1, PAUSE: 2, DROP_PRIVILEGES: 3, EXIT: 4 } as const;

// Int32 indices of the control block.
export const C = {
  /** Set by the thread once its module is loaded and it waits for commands. */
  READY: 0,
  CMD: 1,
  SEQ: 2,
  ACK: 3,
  /** Non-zero when the last command failed (its message is in the config area). */
  FAILED: 4,
  CONFIG_LEN: 5,
  // The ring's progress, written by the thread when it pauses.
  LAST_AVAIL: 8,
  USED_IDX: 9,
  SIGNALLED: 10,
  SINCE_SIGNAL: 11,
  /** Bits: the ring broke, the kick fd hung up, the call fd could not be written. */
  LOST: 12,
  FWD_WRITE: 16,
  FWD_READ: 17,
  RET_WRITE: 18,
  RET_READ: 19,
  /** Chains the thread served itself / handed to the owner (for the log and tests). */
  SERVED: 20,
  FORWARDED: 21,
} as const;
export const LOST_BROKEN = 1;
export const LOST_KICK = 2;
export const LOST_CALL = 4;

const CONTROL_WORDS = 32;
/** Ring capacity: every chain of the largest queue can be in flight at once. */
export const RING_ENTRIES = MAX_QUEUE_SIZE;
const CONFIG_BYTES = 64 * 1024;

export const CHANNEL_BYTES = 4 * (CONTROL_WORDS + RING_ENTRIES + 2 * RING_ENTRIES) + CONFIG_BYTES;

/** What a thread needs to serve one ring: its layout, descriptors and the memory table. */
export interface QueueAssignment {
  index: number;
  size: number;
  addrs: { desc: number; avail: number; used: number };
  kickFd: number;
  callFd: number;
  errFd: number;
  eventIdx: boolean;
  walk: WalkOptions;
  regions: SharedRegion[];
  progress: QueueProgress;
  readonly: boolean;
}

export class QueueChannel {
  readonly ctl: Int32Array;
  readonly fwd: Int32Array;
  readonly ret: Int32Array;
  private readonly config: Uint8Array;

  constructor(readonly buffer: SharedArrayBuffer = new SharedArrayBuffer(CHANNEL_BYTES)) {
    let at = 0;
    this.ctl = new Int32Array(buffer, at, CONTROL_WORDS);
    at += 4 * CONTROL_WORDS;
    this.fwd = new Int32Array(buffer, at, RING_ENTRIES);
    at += 4 * RING_ENTRIES;
    this.ret = new Int32Array(buffer, at, 2 * RING_ENTRIES);
    at += 8 * RING_ENTRIES;
    this.config = new Uint8Array(buffer, at, CONFIG_BYTES);
  }

  writeConfig(value: unknown): void {
    const bytes = Buffer.from(JSON.stringify(value));
    if (bytes.length > this.config.length) throw new RangeError(`queue thread config of ${bytes.length} bytes`);
    this.config.set(bytes);
    Atomics.store(this.ctl, C.CONFIG_LEN, bytes.length);
  }

  readConfig(): unknown {
    const n = Atomics.load(this.ctl, C.CONFIG_LEN);
    return JSON.parse(Buffer.from(this.config.buffer, this.config.byteOffset, n).toString());
  }

  /** Thread: hand a chain to the owner. */
  pushForward(head: number): void {
    const w = Atomics.load(this.ctl, C.FWD_WRITE);
    Atomics.store(this.fwd, w & (RING_ENTRIES - 1), head);
    Atomics.store(this.ctl, C.FWD_WRITE, (w + 1) | 0);
  }

  /** Owner: the next forwarded head, or -1. */
  popForward(): number {
    const r = Atomics.load(this.ctl, C.FWD_READ);
    if (r === Atomics.load(this.ctl, C.FWD_WRITE)) return -1;
    const head = Atomics.load(this.fwd, r & (RING_ENTRIES - 1));
    Atomics.store(this.ctl, C.FWD_READ, (r + 1) | 0);
    return head;
  }

  /** Owner: a forwarded chain's used length. */
  pushReturn(head: number, len: number): void {
    const w = Atomics.load(this.ctl, C.RET_WRITE);
    const i = 2 * (w & (RING_ENTRIES - 1));
    Atomics.store(this.ret, i, head);
    Atomics.store(this.ret, i + 1, len);
    Atomics.store(this.ctl, C.RET_WRITE, (w + 1) | 0);
    Atomics.notify(this.ctl, C.RET_WRITE);
  }

  /** Thread: the next returned (head, len) into out[0..1]; false when none. */
  popReturn(out: Int32Array): boolean {
    const r = Atomics.load(this.ctl, C.RET_READ);
    if (r === Atomics.load(this.ctl, C.RET_WRITE)) return false;
    const i = 2 * (r & (RING_ENTRIES - 1));
    out[0] = Atomics.load(this.ret, i);
    out[1] = Atomics.load(this.ret, i + 1);
    Atomics.store(this.ctl, C.RET_READ, (r + 1) | 0);
    return true;
  }
}
