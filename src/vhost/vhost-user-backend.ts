// The vhost-user-fs backend's control plane: one handler per front-end request, keeping the
// negotiated features, the guest memory table and every queue's configuration. Requests
// are untrusted: a well-framed request that is wrong (bad size for its type, missing or
// extra descriptors, an unknown queue, overlapping memory, rings outside memory, a feature
// we did not offer) fails alone, with a log line and, when the frontend asked (NEED_REPLY),
// a non-zero REPLY_ACK; only a request whose mandatory reply cannot be given closes the
// connection. What the backend offers: virtio VERSION_1, INDIRECT_DESC, EVENT_IDX and
// protocol features MQ, REPLY_ACK, CONFIGURE_MEM_SLOTS, and CONFIG only when a tag is set
// (QEMU 7.1 to 8.0 abort on a vhost-user-fs backend that offers CONFIG). With a device-state
// handler (the daemon always has one) it also offers what live migration takes: LOG_ALL
// with LOG_SHMFD (dirty-page logging, dirty-log.ts; QEMU blocks migration without LOG_ALL)
// and DEVICE_STATE (SET_DEVICE_STATE_FD moves the handler's state through a pipe,
// state-transfer.ts; CHECK_DEVICE_STATE then says whether it worked).
import type { Logger } from '../log.js';
import { closeFd } from '../sys/event-calls.js';
import { GuestMemory, GuestMemoryError, describeRegion, type RegionSpec } from './guest-memory.js';
import { SplitQueue, validQueueSize, ringSizes, RING_ALIGN, type QueueEnv } from './virtqueue.js';
import { DirtyLog } from './dirty-log.js';
import { readState, writeState } from './state-transfer.js';
import {
  Req, Feature, ProtocolFeature, FLAG_NEED_REPLY, VRING_STATE, VRING_ADDR, VRING_ADDR_F_LOG, VRING_FD_INDEX_MASK, VRING_FD_NOFD,
  MEM_TABLE, MEM_REGION, SINGLE_MEM_REGION, CONFIG, U64, VIRTIO_FS_CONFIG, LOG_BASE, DEVICE_STATE_XFER, StateDirection,
  STATE_PHASE_STOPPED, DEVICE_STATE_NOFD, requestName, decodeVringState, decodeVringAddr, readSafeU64,
  decodeRegion, decodeConfigAccess, encodeConfigAccess, encodeVringState, encodeVirtioFsConfig, encodeU64, type Message,
} from './vhost-user-protocol.js';

export const OFFERED_FEATURES = Feature.VERSION_1 | Feature.RING_INDIRECT_DESC | Feature.RING_EVENT_IDX | Feature.PROTOCOL_FEATURES;
const BASE_PROTOCOL_FEATURES = ProtocolFeature.MQ | ProtocolFeature.REPLY_ACK | ProtocolFeature.CONFIGURE_MEM_SLOTS;
/** What a backend with a device-state handler adds: migration. */
export const MIGRATION_FEATURES = Feature.LOG_ALL;
export const MIGRATION_PROTOCOL_FEATURES = ProtocolFeature.LOG_SHMFD | ProtocolFeature.DEVICE_STATE;

/** The backend's internal state for live migration (the FUSE session's tables). */
export interface DeviceStateHandler {
  /** The state to send (the device is stopped); a string says why there is none. */
  save(): Buffer | string;
  /** Take a received state: undefined when it is in place, else why it failed. */
  load(data: Buffer): string | undefined;
}

/** A SET_DEVICE_STATE_FD accepted and to be run once its reply is out. */
type PendingTransfer = { direction: 'save'; fd: number; data: Buffer } | { direction: 'load'; fd: number };

/** Memory slots we tell the frontend it may use (ADD_MEM_REG). */
export const MAX_MEM_SLOTS = 509;

export interface BackendOptions {
  log: Logger;
  tag?: string;
  /** Queues in total: the hiprio queue plus request queues. */
  numQueues: number;
  /** num_request_queues in the config space (GET_CONFIG). */
  configRequestQueues: number;
  queueSizeMax: number;
  /** Live migration of the backend's state; without it DEVICE_STATE and LOG_ALL are not offered. */
  deviceState?: DeviceStateHandler;
}

/** The device loop's view of kick descriptors coming and going. */
export interface KickWatcher {
  watch(queue: number, fd: number): void;
  unwatch(queue: number, fd: number): void;
}

/** What became of one request: answered (or acked), or the connection must close. */
export type HandleOutcome = { close: false } | { close: true; reason: string };

/** A reply the handler produced: 'ack' means a REPLY_ACK status if the frontend asked. */
type Result = { ok: true; reply?: Buffer | bigint } | { ok: false; reason: string; reply?: Buffer; close?: boolean };

const OK: Result = { ok: true };
const fail = (reason: string): Result => ({ ok: false, reason });

function hexFeatures(v: bigint): string {
  return '0x' + v.toString(16);
}

export class VhostUserBackend {
  readonly mem: GuestMemory;
  readonly queues: SplitQueue[];
  readonly env: QueueEnv;
  ackedFeatures = 0n;
  ackedProtocolFeatures = 0n;
  private readonly offeredProtocol: bigint;
  readonly offeredFeatures: bigint;
  private readonly config: Buffer | undefined;
  /** Dirty-page log (live migration). */
  readonly dirtyLog = new DirtyLog();
  private pending: PendingTransfer | undefined;
  /** Outcome of the last state transfer: undefined none yet, '' success, else why it failed. */
  private transferOutcome: string | undefined;

  constructor(
    private readonly opts: BackendOptions,
    private readonly kicks: KickWatcher,
  ) {
    this.mem = new GuestMemory(MAX_MEM_SLOTS);
    this.env = { mem: this.mem, log: opts.log, eventIdx: false, walk: { indirect: false }, protocolFeatures: false };
    this.queues = Array.from({ length: opts.numQueues }, (_, i) => new SplitQueue(i, this.env));
    const migration = opts.deviceState !== undefined;
    this.offeredFeatures = OFFERED_FEATURES | (migration ? MIGRATION_FEATURES : 0n);
    this.offeredProtocol = BASE_PROTOCOL_FEATURES | (opts.tag !== undefined ? ProtocolFeature.CONFIG : 0n) | (migration ? MIGRATION_PROTOCOL_FEATURES : 0n);
    this.config = opts.tag !== undefined ? encodeVirtioFsConfig(opts.tag, opts.configRequestQueues) : undefined;
  }

  /**
   * Handle one request; `send` writes a reply. Descriptors in msg.fds are consumed (kept by
   * the backend or closed) whatever the outcome.
   */
  handle(msg: Message, send: (request: number, payload: Buffer | bigint) => void): HandleOutcome {
    const name = requestName(msg.request);
    let r: Result;
    try {
      r = this.dispatch(msg);
    } catch (err) {
      r = fail(`internal error: ${(err as Error).message}`);
    }
    if (msg.fds.length > 0) {
      // Anything not taken by a handler (extra descriptors, failed requests) is closed here.
      for (const fd of msg.fds) closeFd(fd);
      msg.fds.length = 0;
    }
    if (!r.ok) {
      this.opts.log.warn(`${name}: ${r.reason}`);
      if (r.close === true) return { close: true, reason: `${name}: ${r.reason}` };
    } else {
      this.opts.log.debug(`${name} ok`);
    }
    if (r.reply !== undefined) send(msg.request, r.reply);
    else if ((msg.flags & FLAG_NEED_REPLY) !== 0) send(msg.request, r.ok ? 0n : 1n);
    // The state moves only now: the frontend touches its end of the pipe after the reply.
    if (this.pending !== undefined) this.runTransfer(this.pending);
    return { close: false };
  }

  private runTransfer(t: PendingTransfer): void {
    this.pending = undefined;
    const started = Date.now();
    try {
      if (t.direction === 'save') {
        writeState(t.fd, t.data);
        this.transferOutcome = '';
        this.opts.log.info(`migration: sent ${t.data.length} bytes of state in ${Date.now() - started} ms`);
      } else {
        const data = readState(t.fd);
        const why = (this.opts.deviceState as DeviceStateHandler).load(data);
        this.transferOutcome = why ?? '';
        if (why === undefined) this.opts.log.info(`migration: loaded ${data.length} bytes of state in ${Date.now() - started} ms`);
        else this.opts.log.error(`migration: the state could not be loaded: ${why}`);
      }
    } catch (err) {
      this.transferOutcome = (err as Error).message;
      this.opts.log.error(`migration: ${(err as Error).message}`);
    }
  }

  /** Take exactly `want` descriptors out of msg.fds (or none, when allowed), or say what is wrong. */
  private takeFds(msg: Message, want: number, alsoAllowNone = false): number[] | string {
    if (msg.fds.length === want || (alsoAllowNone && msg.fds.length === 0)) return msg.fds.splice(0);
    return `expected ${want} descriptor(s), got ${msg.fds.length}`;
  }

  private sizeIs(msg: Message, bytes: number): string | undefined {
    return msg.size === bytes ? undefined : `payload of ${msg.size} bytes, expected ${bytes}`;
  }

  private noFds(msg: Message): string | undefined {
    return msg.fds.length === 0 ? undefined : `unexpected ${msg.fds.length} descriptor(s)`;
  }

  private queue(index: number): SplitQueue | undefined {
    return index < this.queues.length ? this.queues[index] : undefined;
  }

  private dispatch(msg: Message): Result {
    const p = msg.payload;
    switch (msg.request) {
      case Req.GET_FEATURES:
        return { ok: true, reply: this.offeredFeatures };
      case Req.GET_PROTOCOL_FEATURES:
        return { ok: true, reply: this.offeredProtocol };
      case Req.GET_QUEUE_NUM:
        return { ok: true, reply: BigInt(this.queues.length) };
      case Req.GET_MAX_MEM_SLOTS:
        return { ok: true, reply: BigInt(MAX_MEM_SLOTS) };
      case Req.SET_FEATURES:
        return this.setFeatures(msg);
      case Req.SET_PROTOCOL_FEATURES: {
        const bad = this.sizeIs(msg, U64.bytes) ?? this.noFds(msg);
        if (bad !== undefined) return fail(bad);
        const v = p.readBigUInt64LE(0);
        if ((v & ~this.offeredProtocol) !== 0n) return fail(`protocol features ${hexFeatures(v)} include some not offered (${hexFeatures(this.offeredProtocol)})`);
        this.ackedProtocolFeatures = v;
        return OK;
      }
      case Req.SET_OWNER:
        return this.noFds(msg) === undefined ? OK : fail(`unexpected descriptors`);
      case Req.RESET_OWNER:
        this.resetRings();
        return OK;
      case Req.SET_MEM_TABLE:
        return this.setMemTable(msg);
      case Req.ADD_MEM_REG:
        return this.addMemReg(msg);
      case Req.REM_MEM_REG:
        return this.remMemReg(msg);
      case Req.SET_VRING_NUM:
      case Req.SET_VRING_BASE:
      case Req.SET_VRING_ENABLE:
        return this.setVringState(msg);
      case Req.SET_VRING_ADDR:
        return this.setVringAddr(msg);
      case Req.GET_VRING_BASE:
        return this.getVringBase(msg);
      case Req.SET_VRING_KICK:
      case Req.SET_VRING_CALL:
      case Req.SET_VRING_ERR:
        return this.setVringFd(msg);
      case Req.GET_CONFIG:
        return this.getConfig(msg);
      case Req.SET_CONFIG:
        return fail('the virtio-fs config space is read-only');
      case Req.SET_LOG_BASE:
        return this.setLogBase(msg);
      case Req.SET_LOG_FD: {
        // An optional eventfd to tell the frontend the log changed; QEMU reads the log itself.
        const fds = this.takeFds(msg, 1, true);
        if (typeof fds === 'string') return fail(fds);
        for (const fd of fds) closeFd(fd);
        return OK;
      }
      case Req.SET_DEVICE_STATE_FD:
        return this.setDeviceStateFd(msg);
      case Req.CHECK_DEVICE_STATE:
        return this.checkDeviceState(msg);
      default:
        return fail('not supported');
    }
  }

  private setFeatures(msg: Message): Result {
    const bad = this.sizeIs(msg, U64.bytes) ?? this.noFds(msg);
    if (bad !== undefined) return fail(bad);
    const v = msg.payload.readBigUInt64LE(0);
    if ((v & ~this.offeredFeatures) !== 0n) return fail(`features ${hexFeatures(v)} include some not offered (${hexFeatures(this.offeredFeatures)})`);
    const logging = (v & Feature.LOG_ALL) !== 0n;
    if (logging !== this.dirtyLog.enabled) this.opts.log.info(`dirty-page logging ${logging ? 'on (migration started)' : 'off'}`);
    this.dirtyLog.enabled = logging;
    this.ackedFeatures = v;
    this.env.eventIdx = (v & Feature.RING_EVENT_IDX) !== 0n;
    this.env.walk.indirect = (v & Feature.RING_INDIRECT_DESC) !== 0n;
    this.env.protocolFeatures = (v & Feature.PROTOCOL_FEATURES) !== 0n;
    for (const q of this.queues) q.invalidate();
    return OK;
  }

  private setMemTable(msg: Message): Result {
    const p = msg.payload;
    if (msg.size < MEM_TABLE.regions) return fail(`payload of ${msg.size} bytes is too short`);
    const count = p.readUInt32LE(MEM_TABLE.count);
    if (count > MEM_TABLE.maxRegions) return fail(`${count} regions (at most ${MEM_TABLE.maxRegions})`);
    const need = MEM_TABLE.regions + count * MEM_REGION.bytes;
    if (msg.size < need || msg.size > MEM_TABLE.regions + MEM_TABLE.maxRegions * MEM_REGION.bytes) {
      return fail(`payload of ${msg.size} bytes does not fit ${count} regions`);
    }
    const specs: RegionSpec[] = [];
    for (let i = 0; i < count; i++) {
      const r = decodeRegion(p, MEM_TABLE.regions + i * MEM_REGION.bytes);
      if (r === undefined) return fail(`region ${i}: a value is beyond 2^53`);
      specs.push(r);
    }
    const fds = this.takeFds(msg, count);
    if (typeof fds === 'string') return fail(fds);
    try {
      this.mem.replace(specs, fds);
    } catch (err) {
      if (err instanceof GuestMemoryError || (err as Error).name === 'SysError') return fail((err as Error).message);
      throw err;
    }
    this.logProtection(`memory table: ${this.describeTable() || 'empty'}`, 'info');
    return OK;
  }

  private singleRegion(msg: Message): RegionSpec | string {
    const bad = this.sizeIs(msg, SINGLE_MEM_REGION.bytes);
    if (bad !== undefined) return bad;
    return decodeRegion(msg.payload, SINGLE_MEM_REGION.region) ?? 'a value is beyond 2^53';
  }

  private addMemReg(msg: Message): Result {
    const spec = this.singleRegion(msg);
    if (typeof spec === 'string') return fail(spec);
    const fds = this.takeFds(msg, 1);
    if (typeof fds === 'string') return fail(fds);
    try {
      this.mem.add(spec, fds[0]);
    } catch (err) {
      if (err instanceof GuestMemoryError || (err as Error).name === 'SysError') return fail((err as Error).message);
      throw err;
    }
    this.logProtection(`added region ${describeRegion(spec)}; table: ${this.describeTable()}`, 'debug');
    return OK;
  }

  /** The table's regions with how each is kept from shrinking under us (sealed, guarded, unprotected). */
  private describeTable(): string {
    const prot = this.mem.protections();
    return this.mem.list().map((r, i) => `${describeRegion(r)} (${prot[i]})`).join('; ');
  }

  private logProtection(line: string, level: 'info' | 'debug'): void {
    this.opts.log[level](line);
    const why = this.mem.unprotectedReason();
    if (why !== undefined) this.opts.log.warn(`guest memory: a region cannot be sealed against shrinking and ${why}; a frontend that shrinks its file would kill the daemon`);
  }

  private remMemReg(msg: Message): Result {
    const spec = this.singleRegion(msg);
    if (typeof spec === 'string') return fail(spec);
    // The spec lets a frontend attach one (useless) descriptor: it is closed unused.
    const fds = this.takeFds(msg, 1, true);
    if (typeof fds === 'string') return fail(fds);
    for (const fd of fds) closeFd(fd);
    if (!this.mem.remove(spec)) return fail(`no region ${describeRegion(spec)}`);
    this.opts.log.debug(`removed region ${describeRegion(spec)}`);
    return OK;
  }

  private setVringState(msg: Message): Result {
    const bad = this.sizeIs(msg, VRING_STATE.bytes) ?? this.noFds(msg);
    if (bad !== undefined) return fail(bad);
    const s = decodeVringState(msg.payload);
    const q = this.queue(s.index);
    if (q === undefined) return fail(`no queue ${s.index} (we have ${this.queues.length})`);
    if (msg.request === Req.SET_VRING_NUM) {
      if (!validQueueSize(s.num, this.opts.queueSizeMax)) return fail(`queue ${s.index}: size ${s.num} is not a power of two from 1 to ${this.opts.queueSizeMax}`);
      q.setSize(s.num);
    } else if (msg.request === Req.SET_VRING_BASE) {
      if (s.num > 0xffff) return fail(`queue ${s.index}: base ${s.num} does not fit a split ring index`);
      q.setBase(s.num);
    } else {
      if (s.num > 1) return fail(`queue ${s.index}: enable value ${s.num}`);
      q.explicitEnable = s.num === 1;
    }
    return OK;
  }

  private setVringAddr(msg: Message): Result {
    const bad = this.sizeIs(msg, VRING_ADDR.bytes) ?? this.noFds(msg);
    if (bad !== undefined) return fail(bad);
    const a = decodeVringAddr(msg.payload);
    const q = this.queue(a.index);
    if (q === undefined) return fail(`no queue ${a.index} (we have ${this.queues.length})`);
    if (a.desc === undefined || a.used === undefined || a.avail === undefined) return fail(`queue ${a.index}: a ring address is beyond 2^53`);
    if (a.desc % RING_ALIGN.desc !== 0 || a.avail % RING_ALIGN.avail !== 0 || a.used % RING_ALIGN.used !== 0) {
      return fail(`queue ${a.index}: misaligned ring addresses desc 0x${a.desc.toString(16)} avail 0x${a.avail.toString(16)} used 0x${a.used.toString(16)}`);
    }
    if ((a.flags & VRING_ADDR_F_LOG) !== 0 && a.log === undefined) return fail(`queue ${a.index}: used-ring log address beyond 2^53`);
    // With memory and a size known, rings outside memory are refused now; otherwise the
    // queue checks again (and waits) when it is used.
    if (this.mem.regionCount > 0 && q.size > 0) {
      const sz = ringSizes(q.size);
      if (this.mem.userSlice(a.desc, sz.desc) === undefined || this.mem.userSlice(a.avail, sz.avail) === undefined || this.mem.userSlice(a.used, sz.used) === undefined) {
        return fail(`queue ${a.index}: ring addresses desc 0x${a.desc.toString(16)} avail 0x${a.avail.toString(16)} used 0x${a.used.toString(16)} are not inside guest memory`);
      }
    }
    q.setAddresses({ desc: a.desc, avail: a.avail, used: a.used });
    q.logUsed = (a.flags & VRING_ADDR_F_LOG) !== 0 && a.log !== undefined ? a.log : -1;
    return OK;
  }

  private setLogBase(msg: Message): Result {
    const nack: Result = { ok: false, reason: '', reply: encodeU64(1) };
    if ((this.ackedProtocolFeatures & ProtocolFeature.LOG_SHMFD) === 0n) return { ...nack, reason: 'LOG_SHMFD was not negotiated' };
    const bad = this.sizeIs(msg, LOG_BASE.bytes);
    if (bad !== undefined) return { ...nack, reason: bad };
    const fds = this.takeFds(msg, 1);
    if (typeof fds === 'string') return { ...nack, reason: fds };
    const size = readSafeU64(msg.payload, LOG_BASE.size);
    const offset = readSafeU64(msg.payload, LOG_BASE.offset);
    if (size === undefined || offset === undefined) {
      closeFd(fds[0] as number);
      return { ...nack, reason: 'log size or offset beyond 2^53' };
    }
    const why = this.dirtyLog.map(fds[0] as number, size, offset);
    if (why !== undefined) return { ...nack, reason: `dirty log: ${why}` };
    this.opts.log.debug(`dirty log: ${size} bytes (${size * 8} pages)`);
    return { ok: true, reply: 0n };
  }

  private setDeviceStateFd(msg: Message): Result {
    const nack = (reason: string): Result => ({ ok: false, reason, reply: encodeU64(1 | DEVICE_STATE_NOFD) });
    const handler = this.opts.deviceState;
    if (handler === undefined || (this.ackedProtocolFeatures & ProtocolFeature.DEVICE_STATE) === 0n) return nack('DEVICE_STATE was not negotiated');
    const bad = this.sizeIs(msg, DEVICE_STATE_XFER.bytes);
    if (bad !== undefined) return nack(bad);
    const fds = this.takeFds(msg, 1);
    if (typeof fds === 'string') return nack(fds);
    const fd = fds[0] as number;
    const direction = msg.payload.readUInt32LE(DEVICE_STATE_XFER.direction);
    const phase = msg.payload.readUInt32LE(DEVICE_STATE_XFER.phase);
    const refuse = (reason: string): Result => {
      closeFd(fd);
      return nack(reason);
    };
    if (phase !== STATE_PHASE_STOPPED) return refuse(`phase ${phase} (only ${STATE_PHASE_STOPPED}, stopped, exists)`);
    if (this.queues.some((q) => q.started)) return refuse('a ring is still running (the state moves only while the device is stopped)');
    this.transferOutcome = undefined;
    if (direction === StateDirection.SAVE) {
      const data = handler.save();
      if (typeof data === 'string') return refuse(`the state cannot be saved: ${data}`);
      this.pending = { direction: 'save', fd, data };
    } else if (direction === StateDirection.LOAD) {
      this.pending = { direction: 'load', fd };
    } else {
      return refuse(`direction ${direction}`);
    }
    // We use the frontend's pipe: no fd of our own comes back.
    return { ok: true, reply: BigInt(DEVICE_STATE_NOFD) };
  }

  private checkDeviceState(msg: Message): Result {
    const bad = this.sizeIs(msg, 0) ?? this.noFds(msg);
    if (bad !== undefined) return { ok: false, reason: bad, reply: encodeU64(1) };
    const outcome = this.transferOutcome;
    if (outcome === '') return { ok: true, reply: 0n };
    return { ok: false, reason: outcome === undefined ? 'no state was transferred' : `the state transfer failed: ${outcome}`, reply: encodeU64(1) };
  }

  private getVringBase(msg: Message): Result {
    if (msg.size !== VRING_STATE.bytes) return { ok: false, reason: `payload of ${msg.size} bytes, expected ${VRING_STATE.bytes}`, close: true };
    const s = decodeVringState(msg.payload);
    const q = this.queue(s.index);
    if (q === undefined) return { ok: false, reason: `no queue ${s.index}`, close: true };
    if (q.kickFd >= 0) this.kicks.unwatch(q.index, q.kickFd);
    const base = q.stop();
    this.opts.log.debug(`queue ${s.index} stopped at ${base}`);
    return { ok: true, reply: encodeVringState({ index: s.index, num: base }) };
  }

  private setVringFd(msg: Message): Result {
    const bad = this.sizeIs(msg, U64.bytes);
    if (bad !== undefined) return fail(bad);
    const v = msg.payload.readBigUInt64LE(0);
    if ((v & ~BigInt(VRING_FD_INDEX_MASK | VRING_FD_NOFD)) !== 0n) return fail(`payload 0x${v.toString(16)} has unknown bits`);
    const index = Number(v & BigInt(VRING_FD_INDEX_MASK));
    const noFd = (v & BigInt(VRING_FD_NOFD)) !== 0n;
    const q = this.queue(index);
    if (q === undefined) return fail(`no queue ${index} (we have ${this.queues.length})`);
    const fds = this.takeFds(msg, noFd ? 0 : 1);
    if (typeof fds === 'string') return fail(`queue ${index}: ${fds}${noFd ? ' (the no-fd flag is set)' : ''}`);
    const fd = noFd ? -1 : fds[0];
    if (msg.request === Req.SET_VRING_KICK) {
      if (fd >= 0) {
        try {
          this.kicks.watch(index, fd);
        } catch (err) {
          closeFd(fd);
          return fail(`queue ${index}: the kick descriptor cannot be waited on: ${(err as Error).message}`);
        }
      }
      if (q.kickFd >= 0) this.kicks.unwatch(index, q.kickFd);
      q.replaceFd('kickFd', fd);
      if (fd < 0) this.opts.log.warn(`queue ${index}: no kick descriptor; polling is not supported, the queue is served only on other events`);
      q.started = true;
      q.broken = false;
    } else if (msg.request === Req.SET_VRING_CALL) {
      q.replaceFd('callFd', fd);
    } else {
      q.replaceFd('errFd', fd);
    }
    return OK;
  }

  private getConfig(msg: Message): Result {
    const empty = Buffer.alloc(0);
    if (this.config === undefined) return { ok: false, reason: 'no tag configured, so no config space', reply: empty };
    if (msg.size < CONFIG.payload) return { ok: false, reason: `payload of ${msg.size} bytes is too short`, reply: empty };
    const a = decodeConfigAccess(msg.payload);
    if (a.size > CONFIG.maxPayload || msg.size !== CONFIG.payload + a.size) return { ok: false, reason: `size ${a.size} does not match the payload of ${msg.size} bytes`, reply: empty };
    if (a.offset > VIRTIO_FS_CONFIG.bytes || a.size > VIRTIO_FS_CONFIG.bytes - a.offset) {
      return { ok: false, reason: `range ${a.offset}+${a.size} outside the ${VIRTIO_FS_CONFIG.bytes}-byte config space`, reply: empty };
    }
    return { ok: true, reply: encodeConfigAccess(a, this.config.subarray(a.offset, a.offset + a.size)) };
  }

  /** Stop every ring and forget its configuration (RESET_OWNER, disconnect). */
  resetRings(): void {
    for (const q of this.queues) {
      if (q.kickFd >= 0) this.kicks.unwatch(q.index, q.kickFd);
      q.reset();
    }
  }

  /** Release everything: rings, their descriptors, guest memory. */
  close(): void {
    this.resetRings();
    this.mem.clear();
    this.dirtyLog.unmap();
  }
}
