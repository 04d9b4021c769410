// A virtio-fs device as a VMM drives it, without a guest: connect to a vhost-user-fs
// backend, negotiate features, share memfd guest memory, start the hiprio queue and the
// request queues, then move FUSE requests as descriptor chains through them, one at a time
// or pipelined at a chosen queue depth.
import { GuestMemory, type RegionSpec } from './guest-memory.js';
import { SplitQueue, allocRing, type Buf, type Used } from './split-ring.js';
import { VhostUserClient, Req, Feature, ProtocolFeature, encodeMemTable, encodeRegion, u64, vringState, vringAddr } from './vhost-user.js';
import { parseOutHeader, type OutHeader, OUT_HEADER } from './fuse-requests.js';
import { closeFd } from './sys-calls.js';

export interface FrontendOptions {
  socketPath: string;
  regions?: RegionSpec[];
  queueSize?: number;
  /** Request queues after the hiprio queue (QEMU's num-request-queues). */
  requestQueues?: number;
  eventIdx?: boolean;
  /** Send every request chain through an indirect descriptor table. */
  indirect?: boolean;
  /** Region and minimum offset for the rings and for the request buffers. */
  ringRegion?: number;
  ringAtLeast?: number;
  bufRegion?: number;
  bufAtLeast?: number;
  /** Bytes reserved per in-flight request, for the request and for the reply each. */
  slotBytes?: number;
  /** Share memory with GET_MAX_MEM_SLOTS + ADD_MEM_REG (CONFIGURE_MEM_SLOTS) instead of SET_MEM_TABLE. */
  memSlots?: boolean;
  /**
   * Replies are views of guest memory, valid until the next complete() (no copy: for the
   * bench, where copying 1 MiB replies made the load generator the bottleneck).
   */
  viewReplies?: boolean;
  /** Count replies that carry another request's unique (mismatchedReplies) instead of throwing (the bench). */
  countMismatches?: boolean;
  /** Stop after the vhost-user handshake (no queues started) for protocol tests. */
  noQueues?: boolean;
  timeoutMs?: number;
}

export interface FuseReply {
  header: OutHeader;
  /** Bytes after the out header. */
  body: Buffer;
  /** used.len reported by the device. */
  usedLen: number;
}

interface Slot {
  inGpa: number;
  outGpa: number;
}

interface Pending {
  slot: Slot;
  replyLens: number[];
  tag: number;
  /** The request's fuse_in_header.unique (undefined when it has fewer than 16 bytes). */
  unique: bigint | undefined;
}

/** unique of a request given as parts (the header may be split across them). */
function uniqueOf(parts: readonly Buffer[]): bigint | undefined {
  if (parts.length > 0 && (parts[0] as Buffer).length >= 16) return (parts[0] as Buffer).readBigUInt64LE(8);
  const first = Buffer.concat(parts.slice(0, 16)).subarray(0, 16);
  return first.length === 16 ? first.readBigUInt64LE(8) : undefined;
}

export interface Completion {
  tag: number;
  reply: FuseReply | undefined;
}

export const HIPRIO = 0;
export const REQUEST = 1;

export class VirtioFsFrontend {
  readonly vu: VhostUserClient;
  readonly mem: GuestMemory;
  readonly queues: SplitQueue[] = [];
  features = 0n;
  backendFeatures = 0n;
  backendProtocolFeatures = 0n;
  queueNum = 0;
  maxMemSlots = 0;
  /** Used elements whose head the frontend did not submit through enqueue(). */
  readonly stray: (Used & { queue: number })[] = [];
  /** Replies whose unique was not their request's (counted instead of thrown with countMismatches). */
  mismatchedReplies = 0;
  private readonly slotBytes: number;
  private readonly freeSlots: Slot[][] = [];
  private readonly pending: Map<number, Pending>[] = [];
  private readonly opts: FrontendOptions;
  private readonly heldSlots: { queue: number; slot: Slot }[] = [];

  constructor(opts: FrontendOptions) {
    this.opts = opts;
    this.slotBytes = opts.slotBytes ?? (1 << 20) + 64 * 1024;
    this.mem = new GuestMemory(opts.regions ?? [{ gpa: 0, size: 256 << 20 }]);
    try {
      // The first reply may wait for the daemon to finish starting (slow on a loaded machine).
      this.vu = new VhostUserClient(opts.socketPath, Math.max(opts.timeoutMs ?? 10000, 30000));
    } catch (e) {
      this.mem.close();
      throw e;
    }
  }

  /** Connect and start the device; throws (after closing everything) on failure. */
  static open(opts: FrontendOptions): VirtioFsFrontend {
    const fe = new VirtioFsFrontend(opts);
    try {
      fe.handshake();
      if (opts.noQueues !== true) {
        fe.setMemTable();
        fe.startQueues();
      }
    } catch (e) {
      fe.close();
      throw e;
    }
    return fe;
  }

  handshake(): void {
    const vu = this.vu;
    this.backendFeatures = vu.getU64(Req.GET_FEATURES);
    if ((this.backendFeatures & Feature.PROTOCOL_FEATURES) !== 0n) {
      this.backendProtocolFeatures = vu.getU64(Req.GET_PROTOCOL_FEATURES);
      const want = ProtocolFeature.MQ | ProtocolFeature.REPLY_ACK | ProtocolFeature.CONFIG | ProtocolFeature.CONFIGURE_MEM_SLOTS;
      const pf = this.backendProtocolFeatures & want;
      vu.set(Req.SET_PROTOCOL_FEATURES, u64(pf), [], false);
      vu.protocolFeatures = pf;
      if ((pf & ProtocolFeature.MQ) !== 0n) this.queueNum = Number(vu.getU64(Req.GET_QUEUE_NUM));
    }
    vu.setOk(Req.SET_OWNER);
    let f = this.backendFeatures & (Feature.VERSION_1 | Feature.PROTOCOL_FEATURES | Feature.RING_INDIRECT_DESC);
    if (this.opts.eventIdx !== false) f |= this.backendFeatures & Feature.RING_EVENT_IDX;
    this.features = f;
    vu.setOk(Req.SET_FEATURES, u64(f));
  }

  setMemTable(): void {
    if (this.opts.memSlots === true) {
      // cloud-hypervisor style: one ADD_MEM_REG per region instead of a SET_MEM_TABLE.
      if ((this.vu.protocolFeatures & ProtocolFeature.CONFIGURE_MEM_SLOTS) === 0n) throw new Error('backend lacks CONFIGURE_MEM_SLOTS');
      this.maxMemSlots = Number(this.vu.getU64(Req.GET_MAX_MEM_SLOTS));
      for (const r of this.mem.regions) this.addMemReg(r);
      return;
    }
    const regions = this.mem.regions.map((r) => ({ gpa: r.gpa, size: r.size, uaddr: r.uaddr, mmapOffset: r.mmapOffset }));
    this.vu.setOk(Req.SET_MEM_TABLE, encodeMemTable(regions), this.mem.regions.map((r) => r.fd));
  }

  /** ADD_MEM_REG (or REM_MEM_REG with `remove`) for one region; returns the ack status. */
  memReg(r: { gpa: number; size: number; uaddr: number; mmapOffset: number; fd: number }, remove = false): bigint {
    const p = Buffer.alloc(8 + 32);
    encodeRegion({ gpa: r.gpa, size: r.size, uaddr: r.uaddr, mmapOffset: r.mmapOffset }, p, 8);
    return this.vu.set(remove ? Req.REM_MEM_REG : Req.ADD_MEM_REG, p, remove ? [] : [r.fd]);
  }

  private addMemReg(r: { gpa: number; size: number; uaddr: number; mmapOffset: number; fd: number }): void {
    const st = this.memReg(r);
    if (st !== 0n) throw new Error(`ADD_MEM_REG refused (status ${st})`);
  }

  get eventIdx(): boolean {
    return (this.features & Feature.RING_EVENT_IDX) !== 0n;
  }

  startQueues(): void {
    const size = this.opts.queueSize ?? 128;
    const n = 1 + (this.opts.requestQueues ?? 1);
    for (let i = 0; i < n; i++) {
      const layout = allocRing(this.mem, size, this.opts.ringRegion ?? 0, this.opts.ringAtLeast ?? 0);
      const q = new SplitQueue(this.mem, i, size, layout, this.eventIdx);
      this.queues.push(q);
      this.freeSlots.push([]);
      this.pending.push(new Map());
      this.startQueue(q);
    }
  }

  startQueue(q: SplitQueue, base = 0): void {
    const vu = this.vu;
    const m = this.mem;
    vu.setOk(Req.SET_VRING_NUM, vringState(q.index, q.size));
    vu.setOk(Req.SET_VRING_BASE, vringState(q.index, base));
    vu.setOk(Req.SET_VRING_ADDR, vringAddr(q.index, m.uaddrOf(q.layout.desc), m.uaddrOf(q.layout.used), m.uaddrOf(q.layout.avail)));
    vu.setOk(Req.SET_VRING_KICK, u64(q.index), [q.kickFd]);
    vu.setOk(Req.SET_VRING_CALL, u64(q.index), [q.callFd]);
    if ((this.features & Feature.PROTOCOL_FEATURES) !== 0n) vu.setOk(Req.SET_VRING_ENABLE, vringState(q.index, 1));
  }

  /**
   * What a VMM does when the guest resets the device (reboot): renegotiate, send the memory
   * table again and start every queue afresh on new rings. Call after RESET_OWNER/RESET_DEVICE.
   */
  restartDevice(): void {
    for (const q of this.queues) q.close();
    this.queues.length = 0;
    this.freeSlots.length = 0;
    this.pending.length = 0;
    this.handshake();
    this.setMemTable();
    this.startQueues();
  }

  /** GET_VRING_BASE: stops the ring; returns the backend's next avail index. */
  getVringBase(index: number): number {
    const p = this.vu.get(Req.GET_VRING_BASE, vringState(index, 0));
    return p.readUInt32LE(4);
  }

  private slot(queue: number): Slot {
    const free = this.freeSlots[queue];
    const s = free.pop();
    if (s !== undefined) return s;
    const region = this.opts.bufRegion ?? 0;
    const atLeast = this.opts.bufAtLeast ?? 0;
    // hiprio only carries FORGET/BATCH_FORGET (and INTERRUPT): small slots will do.
    const bytes = queue === HIPRIO ? Math.min(this.slotBytes, 64 * 1024) : this.slotBytes;
    return {
      inGpa: this.mem.alloc(bytes, 4096, region, atLeast),
      outGpa: this.mem.alloc(bytes, 4096, region, atLeast),
    };
  }

  /**
   * Queue a request without publishing it: `parts` become device-readable descriptors (one
   * each), `replyLens` device-writable ones (none: a request without reply, like FORGET).
   */
  enqueue(parts: readonly Buffer[], replyLens: readonly number[], queue = REQUEST, tag = 0): number {
    const q = this.queues[queue];
    const slot = this.slot(queue);
    const out: Buf[] = [];
    let o = slot.inGpa;
    for (const p of parts) {
      if (o + p.length > slot.inGpa + this.slotBytes || (queue === HIPRIO && o + p.length > slot.inGpa + 64 * 1024)) throw new RangeError('request larger than a slot');
      this.mem.write(o, p);
      out.push({ gpa: o, len: p.length });
      o += p.length;
    }
    const inb: Buf[] = [];
    let w = slot.outGpa;
    for (const l of replyLens) {
      inb.push({ gpa: w, len: l });
      w += l;
    }
    if (w > slot.outGpa + (queue === HIPRIO ? Math.min(this.slotBytes, 64 * 1024) : this.slotBytes)) throw new RangeError('reply larger than a slot');
    const head = q.add(out, inb, this.opts.indirect === true);
    this.pending[queue].set(head, { slot, replyLens: [...replyLens], tag, unique: replyLens.length > 0 ? uniqueOf(parts) : undefined });
    return head;
  }

  /** Turn a used element into the reply it carries (undefined for a request without reply). */
  private finish(queue: number, u: Used): Completion | undefined {
    const p = this.pending[queue].get(u.id);
    if (p === undefined) {
      // A hand-built chain (robustness tests) coming back late, or a device bug: count it.
      this.stray.push({ queue, ...u });
      return undefined;
    }
    this.pending[queue].delete(u.id);
    // Zero-copy replies are views of the slot: keep it until the next complete()/reap() of this queue.
    if (this.opts.viewReplies === true) this.heldSlots.push({ queue, slot: p.slot });
    else this.freeSlots[queue].push(p.slot);
    const cap = p.replyLens.reduce((a, b) => a + b, 0);
    // No writable bytes, or the device returned the chain without writing (a failed request).
    if (cap === 0 || u.len === 0) return { tag: p.tag, reply: undefined };
    if (u.len > cap) throw new Error(`queue ${queue}: used.len ${u.len} exceeds the ${cap} writable bytes`);
    const raw = this.opts.viewReplies === true && this.mem.slices(p.slot.outGpa, u.len).length === 1 ? this.mem.view(p.slot.outGpa, u.len) : this.mem.read(p.slot.outGpa, u.len);
    const header = parseOutHeader(raw);
    // A reply always names its request: another unique means the device completed a chain
    // twice or with another chain's reply (caught once as a bench CREATE with a 16-byte body).
    if (p.unique !== undefined && raw.length >= OUT_HEADER && header.unique !== p.unique) {
      this.mismatchedReplies++;
      if (this.opts.countMismatches !== true) throw new Error(`queue ${queue}: the completion of head ${u.id} (len ${u.len}) carries unique ${header.unique}; the request on that chain had ${p.unique}`);
    }
    return { tag: p.tag, reply: { header, body: raw.subarray(OUT_HEADER), usedLen: u.len } };
  }

  inFlight(queue = REQUEST): number {
    return this.pending[queue].size;
  }

  /** Wait for at least one completion on `queue`. */
  complete(queue = REQUEST, timeoutMs = this.opts.timeoutMs ?? 10000): Completion[] {
    this.releaseHeld(queue);
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const used = this.queues[queue].wait(Math.max(0, deadline - Date.now()));
      if (used.length === 0) throw new Error(`queue ${queue}: no completion within ${timeoutMs} ms (${this.inFlight(queue)} in flight)`);
      const done = used.map((u) => this.finish(queue, u)).filter((c): c is Completion => c !== undefined);
      if (done.length > 0) return done;
    }
  }

  /** Free the slots of `queue` whose replies the caller has had since the last complete(). */
  private releaseHeld(queue: number): void {
    let k = 0;
    for (const h of this.heldSlots) {
      if (h.queue === queue) this.freeSlots[queue].push(h.slot);
      else this.heldSlots[k++] = h;
    }
    this.heldSlots.length = k;
  }

  /** Completions already on the used ring of `queue`, without waiting. */
  reap(queue = REQUEST): Completion[] {
    this.releaseHeld(queue);
    return this.queues[queue]
      .poll()
      .map((u) => this.finish(queue, u))
      .filter((c): c is Completion => c !== undefined);
  }

  /** One request, one reply. */
  call(parts: readonly Buffer[], replyLens: readonly number[], queue = REQUEST): FuseReply | undefined {
    this.enqueue(parts, replyLens, queue);
    this.queues[queue].publish();
    const c = this.complete(queue);
    if (c.length !== 1) throw new Error(`expected one completion, got ${c.length}`);
    return c[0].reply;
  }

  /**
   * Run `count` requests keeping up to `depth` in flight; `make(i)` builds request i and
   * `check(i, reply)` sees its reply. Returns when all have completed.
   */
  pipeline(
    count: number,
    depth: number,
    make: (i: number) => { parts: Buffer[]; replyLens: number[] },
    check: (i: number, reply: FuseReply | undefined) => void = () => undefined,
    queue = REQUEST,
  ): void {
    let next = 0;
    let done = 0;
    while (done < count) {
      let added = 0;
      while (next < count && this.inFlight(queue) < depth) {
        const r = make(next);
        this.enqueue(r.parts, r.replyLens, queue, next);
        next++;
        added++;
      }
      if (added > 0) this.queues[queue].publish();
      for (const c of this.complete(queue)) {
        check(c.tag, c.reply);
        done++;
      }
    }
  }

  /**
   * One request with caller-placed buffers: each `outs` item is written at its guest address
   * and becomes one readable descriptor; `ins` are the writable descriptors. The reply is
   * gathered from `ins` in order.
   */
  callAt(outs: readonly { gpa: number; data: Buffer }[], ins: readonly Buf[], queue = REQUEST, timeoutMs = 10000): FuseReply {
    const q = this.queues[queue];
    for (const o of outs) this.mem.write(o.gpa, o.data);
    const head = q.add(outs.map((o) => ({ gpa: o.gpa, len: o.data.length })), ins);
    q.publish();
    const used = q.waitN(1, timeoutMs);
    if (used.length !== 1 || used[0].id !== head) throw new Error(`unexpected completion ${JSON.stringify(used)}`);
    let left = used[0].len;
    const parts: Buffer[] = [];
    for (const b of ins) {
      if (left <= 0) break;
      const n = Math.min(left, b.len);
      parts.push(this.mem.read(b.gpa, n));
      left -= n;
    }
    const raw = Buffer.concat(parts);
    return { header: parseOutHeader(raw), body: raw.subarray(OUT_HEADER), usedLen: used[0].len };
  }

  close(): void {
    this.vu.close();
    for (const q of this.queues) q.close();
    this.mem.close();
  }
}

export function closeAll(fds: number[]): void {
  for (const fd of fds) closeFd(fd);
}
