// The frontend side of the vhost-user control protocol: message framing (12-byte header,
// little-endian payload, fds as SCM_RIGHTS), request/reply with REPLY_ACK, and typed helpers
// for the messages a virtio-fs frontend sends. Raw send() stays public so robustness tests
// can send malformed messages.
import { connectUnix, sendWithFds, recvWithFds, closeFd, shutdownSocket, setRecvTimeout, MSG_PEEK } from './sys-calls.js';

export const Req = {
  GET_FEATURES: 1,
  SET_FEATURES: 2,
  SET_OWNER: 3,
  RESET_OWNER: 4,
  SET_MEM_TABLE: 5,
  SET_LOG_BASE: 6,
  SET_LOG_FD: 7,
  SET_VRING_NUM: 8,
  SET_VRING_ADDR: 9,
  SET_VRING_BASE: 10,
  GET_VRING_BASE: 11,
  SET_VRING_KICK: 12,
  SET_VRING_CALL: 13,
  SET_VRING_ERR: 14,
  GET_PROTOCOL_FEATURES: 15,
  SET_PROTOCOL_FEATURES: 16,
  GET_QUEUE_NUM: 17,
  SET_VRING_ENABLE: 18,
  GET_CONFIG: 24,
  RESET_DEVICE: 34,
  GET_MAX_MEM_SLOTS: 36,
  ADD_MEM_REG: 37,
  REM_MEM_REG: 38,
} as const;

export const HEADER_SIZE = 12;
export const FLAG_VERSION = 0x1;
export const FLAG_REPLY = 0x4;
export const FLAG_NEED_REPLY = 0x8;
export const VRING_NOFD = 0x100;

/** Virtio device feature bits (as bigint masks). */
export const Feature = {
  RING_INDIRECT_DESC: 1n << 28n,
  RING_EVENT_IDX: 1n << 29n,
  PROTOCOL_FEATURES: 1n << 30n,
  VERSION_1: 1n << 32n,
} as const;

export const ProtocolFeature = {
  MQ: 1n << 0n,
  REPLY_ACK: 1n << 3n,
  CONFIG: 1n << 9n,
  RESET_DEVICE: 1n << 13n,
  CONFIGURE_MEM_SLOTS: 1n << 15n,
} as const;

// VhostUserMemoryRegion: guest_phys_addr, memory_size, userspace_addr, mmap_offset (u64 each).
export const MEM_REGION_SIZE = 32;
export const MEM_TABLE_HEADER = 8; // u32 nregions, u32 padding
// vhost_vring_addr: u32 index, u32 flags, u64 desc, u64 used, u64 avail, u64 log.
export const VRING_ADDR_SIZE = 40;

export interface MemRegionDesc {
  gpa: number;
  size: number;
  uaddr: number;
  mmapOffset: number;
}

export function encodeRegion(r: MemRegionDesc, buf = Buffer.alloc(MEM_REGION_SIZE), off = 0): Buffer {
  buf.writeBigUInt64LE(BigInt(r.gpa), off);
  buf.writeBigUInt64LE(BigInt(r.size), off + 8);
  buf.writeBigUInt64LE(BigInt(r.uaddr), off + 16);
  buf.writeBigUInt64LE(BigInt(r.mmapOffset), off + 24);
  return buf;
}

export function encodeMemTable(regions: readonly MemRegionDesc[]): Buffer {
  const b = Buffer.alloc(MEM_TABLE_HEADER + MEM_REGION_SIZE * regions.length);
  b.writeUInt32LE(regions.length, 0);
  regions.forEach((r, i) => encodeRegion(r, b, MEM_TABLE_HEADER + i * MEM_REGION_SIZE));
  return b;
}

export function u64(v: bigint | number): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(BigInt(v));
  return b;
}

export function vringState(index: number, num: number): Buffer {
  const b = Buffer.alloc(8);
  b.writeUInt32LE(index, 0);
  b.writeUInt32LE(num >>> 0, 4);
  return b;
}

export function vringAddr(index: number, desc: number, used: number, avail: number, flags = 0): Buffer {
  const b = Buffer.alloc(VRING_ADDR_SIZE);
  b.writeUInt32LE(index, 0);
  b.writeUInt32LE(flags, 4);
  b.writeBigUInt64LE(BigInt(desc), 8);
  b.writeBigUInt64LE(BigInt(used), 16);
  b.writeBigUInt64LE(BigInt(avail), 24);
  return b;
}

export interface Reply {
  request: number;
  flags: number;
  payload: Buffer;
  fds: number[];
}

/** Thrown when the backend closed the connection while we waited for a reply. */
export class BackendClosed extends Error {
  constructor(what: string) {
    super(`backend closed the connection (${what})`);
    this.name = 'BackendClosed';
  }
}

export class VhostUserClient {
  readonly fd: number;
  /** Protocol features both sides agreed on (set by the device setup). */
  protocolFeatures = 0n;
  private closed = false;

  constructor(
    socketPath: string,
    readonly timeoutMs = 30000,
  ) {
    this.fd = connectUnix(socketPath, timeoutMs);
  }

  get replyAck(): boolean {
    return (this.protocolFeatures & ProtocolFeature.REPLY_ACK) !== 0n;
  }

  /** Send one message. `size` overrides the header's size field (to lie about it). */
  send(request: number, payload: Buffer = Buffer.alloc(0), fds: readonly number[] = [], flags = FLAG_VERSION, size?: number): void {
    const msg = Buffer.alloc(HEADER_SIZE + payload.length);
    msg.writeUInt32LE(request, 0);
    msg.writeUInt32LE(flags, 4);
    msg.writeUInt32LE(size ?? payload.length, 8);
    payload.copy(msg, HEADER_SIZE);
    let sent = sendWithFds(this.fd, msg, fds);
    while (sent < msg.length) sent += sendWithFds(this.fd, msg.subarray(sent));
  }

  private recvExact(len: number, what: string): { data: Buffer; fds: number[] } {
    const data = Buffer.alloc(len);
    const fds: number[] = [];
    let got = 0;
    while (got < len) {
      let r;
      try {
        r = recvWithFds(this.fd, data.subarray(got), len - got);
      } catch (e) {
        if ((e as { code?: string }).code === 'EINTR') continue;
        throw e;
      }
      if (r.n === 0) throw new BackendClosed(what);
      got += r.n;
      fds.push(...r.fds);
    }
    return { data, fds };
  }

  /** Receive one message (a reply). Throws BackendClosed on EOF, SysError(EAGAIN) on timeout. */
  recv(what = 'reply'): Reply {
    const h = this.recvExact(HEADER_SIZE, what);
    const size = h.data.readUInt32LE(8);
    const body = size > 0 ? this.recvExact(size, what) : { data: Buffer.alloc(0), fds: [] };
    return {
      request: h.data.readUInt32LE(0),
      flags: h.data.readUInt32LE(4),
      payload: body.data,
      fds: [...h.fds, ...body.fds],
    };
  }

  /** Send a request that has a reply by definition (GET_*), return its payload. */
  get(request: number, payload: Buffer = Buffer.alloc(0)): Buffer {
    this.send(request, payload);
    const r = this.recv(`reply to request ${request}`);
    if (r.request !== request) throw new Error(`reply to request ${r.request}, expected ${request}`);
    if ((r.flags & FLAG_REPLY) === 0) throw new Error(`reply to ${request} lacks the reply flag`);
    return r.payload;
  }

  getU64(request: number): bigint {
    const p = this.get(request);
    if (p.length < 8) throw new Error(`short reply to ${request}: ${p.length} bytes`);
    return p.readBigUInt64LE(0);
  }

  /**
   * Send a request without a reply of its own; with REPLY_ACK negotiated set NEED_REPLY and
   * return the backend's status (0 = success). Without REPLY_ACK returns 0.
   */
  set(request: number, payload: Buffer = Buffer.alloc(0), fds: readonly number[] = [], ack = this.replyAck): bigint {
    this.send(request, payload, fds, FLAG_VERSION | (ack ? FLAG_NEED_REPLY : 0));
    if (!ack) return 0n;
    const r = this.recv(`ack of request ${request}`);
    if (r.request !== request) throw new Error(`ack for request ${r.request}, expected ${request}`);
    return r.payload.length >= 8 ? r.payload.readBigUInt64LE(0) : -1n;
  }

  /** set() that throws when the backend reports failure. */
  setOk(request: number, payload: Buffer = Buffer.alloc(0), fds: readonly number[] = []): void {
    const st = this.set(request, payload, fds);
    if (st !== 0n) throw new Error(`backend refused request ${request} (status ${st})`);
  }

  /** True when the backend has closed its end (a read would return EOF right away). */
  peerClosed(): boolean {
    setRecvTimeout(this.fd, 1);
    try {
      return recvWithFds(this.fd, Buffer.alloc(1), 1, MSG_PEEK).n === 0;
    } catch {
      return false;
    } finally {
      setRecvTimeout(this.fd, this.timeoutMs);
    }
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    shutdownSocket(this.fd);
    closeFd(this.fd);
  }
}
