// The open handles as queue threads see them (--queue-threads): a table in a
// SharedArrayBuffer from fh to (fd, node id), written only by the thread that owns the FUSE
// state (HandleTable publishes on open and withdraws on release) and read by the queue
// threads that serve READ and WRITE themselves. A reader pins a slot while it uses the fd;
// release withdraws the slot first and then waits until no reader holds it before the fd
// is closed, so a read can never land on a file whose fd number was reused. All accesses
// are Atomics (sequentially consistent): a reader that pins after the withdrawal sees it on
// its re-check and backs out, one that pinned before is waited for.

/** Slots in the table (fh modulo this); a handle whose slot is taken is served by the owner. */
export const SHARED_HANDLE_SLOTS = 1 << 14;
// Int32 fields of one slot.
const F_FH = 0;
const F_FD = 1;
const F_NODE_LO = 2;
const F_NODE_HI = 3;
const F_USERS = 4;
const SLOT_WORDS = 8;
/** How long release waits for a reader per round (ms); readers hold a slot for one preadv/pwritev. */
const RELEASE_WAIT_MS = 5;

export class SharedHandles {
  private readonly w: Int32Array;

  constructor(readonly buffer: SharedArrayBuffer = new SharedArrayBuffer(SHARED_HANDLE_SLOTS * SLOT_WORDS * 4)) {
    if (buffer.byteLength !== SHARED_HANDLE_SLOTS * SLOT_WORDS * 4) throw new RangeError(`shared handle table: ${buffer.byteLength} bytes`);
    this.w = new Int32Array(buffer);
  }

  private static slot(fh: number): number {
    return (fh & (SHARED_HANDLE_SLOTS - 1)) * SLOT_WORDS;
  }

  /** Owner: make `fh` readable by queue threads (skipped when its slot is taken; fh < 2^31). */
  publish(fh: number, fd: number, nodeid: number): void {
    if (fh <= 0 || fh > 0x7fffffff) return;
    const s = SharedHandles.slot(fh);
    if (Atomics.load(this.w, s + F_FH) !== 0) return;
    Atomics.store(this.w, s + F_FD, fd);
    Atomics.store(this.w, s + F_NODE_LO, nodeid | 0);
    Atomics.store(this.w, s + F_NODE_HI, Math.floor(nodeid / 0x100000000) | 0);
    // Last: a reader that sees fh sees the fields above (sequentially consistent stores).
    Atomics.store(this.w, s + F_FH, fh);
  }

  /** Owner: take `fh` back before its fd is closed; returns once no queue thread uses it. */
  withdraw(fh: number): void {
    if (fh <= 0 || fh > 0x7fffffff) return;
    const s = SharedHandles.slot(fh);
    if (Atomics.load(this.w, s + F_FH) !== fh) return;
    Atomics.store(this.w, s + F_FH, 0);
    for (;;) {
      const users = Atomics.load(this.w, s + F_USERS);
      if (users === 0) return;
      Atomics.wait(this.w, s + F_USERS, users, RELEASE_WAIT_MS);
    }
  }

  /**
   * Queue thread: the fd of handle `fh` opened on node `nodeid`, pinned until unpin(fh); -1
   * when this table does not have it (the request then goes to the owner, which knows).
   */
  pin(fh: number, nodeid: number): number {
    if (fh <= 0 || fh > 0x7fffffff) return -1;
    const s = SharedHandles.slot(fh);
    if (Atomics.load(this.w, s + F_FH) !== fh) return -1;
    Atomics.add(this.w, s + F_USERS, 1);
    if (Atomics.load(this.w, s + F_FH) !== fh ||
      Atomics.load(this.w, s + F_NODE_LO) !== (nodeid | 0) || Atomics.load(this.w, s + F_NODE_HI) !== (Math.floor(nodeid / 0x100000000) | 0)) {
      this.unpin(fh);
      return -1;
    }
    return Atomics.load(this.w, s + F_FD);
  }

  unpin(fh: number): void {
    const s = SharedHandles.slot(fh);
    Atomics.sub(this.w, s + F_USERS, 1);
    Atomics.notify(this.w, s + F_USERS);
  }
}
