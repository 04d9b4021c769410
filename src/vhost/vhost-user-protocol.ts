// The vhost-user wire format (QEMU docs/interop/vhost-user.rst): request numbers, header
// flags, feature bits, and each payload layout as named offsets, with the one decoder and
// encoder per layout that both the backend and tests use. All numbers are little-endian
// (the machine's order on every architecture we run on). u64 values from the frontend are
// read as bigint here and turned into plain numbers only when below 2^53, so the rest of
// the backend never does 64-bit arithmetic.
import type { RegionSpec } from './guest-memory.js';

/** Message header: u32 request, u32 flags, u32 payload size. */
export const HEADER = { request: 0, flags: 4, size: 8, bytes: 12 } as const;

export const FLAG_VERSION_MASK = 0x3;
export const FLAG_VERSION = 0x1;
export const FLAG_REPLY = 0x4;
export const FLAG_NEED_REPLY = 0x8;

/** Largest payload we accept; every message we understand is far smaller (SET_MEM_TABLE: 264). */
export const MAX_PAYLOAD = 4096;

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
  SEND_RARP: 19,
  NET_SET_MTU: 20,
  SET_BACKEND_REQ_FD: 21,
  IOTLB_MSG: 22,
  SET_VRING_ENDIAN: 23,
  GET_CONFIG: 24,
  SET_CONFIG: 25,
  GET_INFLIGHT_FD: 31,
  SET_INFLIGHT_FD: 32,
  RESET_DEVICE: 34,
  VRING_KICK: 35,
  GET_MAX_MEM_SLOTS: 36,
  ADD_MEM_REG: 37,
  REM_MEM_REG: 38,
  SET_STATUS: 39,
  GET_STATUS: 40,
  SET_DEVICE_STATE_FD: 42,
  CHECK_DEVICE_STATE: 43,
} as const;

const REQ_NAMES = new Map<number, string>(Object.entries(Req).map(([k, v]) => [v, k]));

export function requestName(request: number): string {
  return REQ_NAMES.get(request) ?? `request ${request}`;
}

/** Virtio device feature bits (bigint masks: the field is u64). */
export const Feature = {
  /** VHOST_F_LOG_ALL: the frontend may ask for dirty-page logging (QEMU refuses to migrate without it). */
  LOG_ALL: 1n << 26n,
  RING_INDIRECT_DESC: 1n << 28n,
  RING_EVENT_IDX: 1n << 29n,
  /** VHOST_USER_F_PROTOCOL_FEATURES: the reused bit 30. */
  PROTOCOL_FEATURES: 1n << 30n,
  VERSION_1: 1n << 32n,
} as const;

export const ProtocolFeature = {
  MQ: 1n << 0n,
  LOG_SHMFD: 1n << 1n,
  REPLY_ACK: 1n << 3n,
  BACKEND_REQ: 1n << 5n,
  CONFIG: 1n << 9n,
  INFLIGHT_SHMFD: 1n << 12n,
  RESET_DEVICE: 1n << 13n,
  INBAND_NOTIFICATIONS: 1n << 14n,
  CONFIGURE_MEM_SLOTS: 1n << 15n,
  STATUS: 1n << 16n,
  /** SET_DEVICE_STATE_FD / CHECK_DEVICE_STATE: the backend's own state travels with the migration. */
  DEVICE_STATE: 1n << 19n,
} as const;

/** A single u64. */
export const U64 = { value: 0, bytes: 8 } as const;

/** struct vhost_vring_state: u32 index, u32 num. */
export const VRING_STATE = { index: 0, num: 4, bytes: 8 } as const;

/** struct vhost_vring_addr: u32 index, u32 flags, u64 desc, u64 used, u64 avail, u64 log. */
export const VRING_ADDR = { index: 0, flags: 4, desc: 8, used: 16, avail: 24, log: 32, bytes: 40 } as const;
export const VRING_ADDR_F_LOG = 0x1;

/** SET_VRING_KICK/CALL/ERR u64: bits 0-7 the queue index, bit 8 "no fd attached". */
export const VRING_FD_INDEX_MASK = 0xff;
export const VRING_FD_NOFD = 0x100;

/** One memory region: u64 guest address, size, user address, mmap offset. */
export const MEM_REGION = { guestAddr: 0, size: 8, userAddr: 16, mmapOffset: 24, bytes: 32 } as const;
/** SET_MEM_TABLE: u32 count, u32 padding, then up to 8 regions. */
export const MEM_TABLE = { count: 0, padding: 4, regions: 8, maxRegions: 8 } as const;
/** ADD_MEM_REG / REM_MEM_REG: u64 padding, then one region. */
export const SINGLE_MEM_REGION = { padding: 0, region: 8, bytes: 40 } as const;

/** SET_LOG_BASE (with LOG_SHMFD): u64 size of the log, u64 offset of the log in the fd. */
export const LOG_BASE = { size: 0, offset: 8, bytes: 16 } as const;
/** Dirty log granularity: one bit per 4 KiB guest page. */
export const LOG_PAGE = 0x1000;

/** SET_DEVICE_STATE_FD: u32 direction, u32 phase; the reply's u64 has bit 8 set when no fd comes back. */
export const DEVICE_STATE_XFER = { direction: 0, phase: 4, bytes: 8 } as const;
export const StateDirection = { SAVE: 0, LOAD: 1 } as const;
/** The only phase defined: after the memory transfer, device and rings stopped. */
export const STATE_PHASE_STOPPED = 0;
export const DEVICE_STATE_NOFD = 0x100;

/** Device config space access: u32 offset, u32 size, u32 flags, then `size` bytes. */
export const CONFIG = { offset: 0, size: 4, flags: 8, payload: 12, maxPayload: 256 } as const;

/** struct virtio_fs_config: u8 tag[36] (UTF-8, NUL padded), le32 num_request_queues. */
export const VIRTIO_FS_CONFIG = { tag: 0, tagBytes: 36, numRequestQueues: 36, bytes: 40 } as const;

const MAX_SAFE = BigInt(Number.MAX_SAFE_INTEGER);

/** Read a u64 as a number, or undefined when it is not below 2^53. */
export function readSafeU64(buf: Buffer, off: number): number | undefined {
  const v = buf.readBigUInt64LE(off);
  return v > MAX_SAFE ? undefined : Number(v);
}

export function encodeU64(v: bigint | number): Buffer {
  const b = Buffer.alloc(U64.bytes);
  b.writeBigUInt64LE(BigInt(v), U64.value);
  return b;
}

export interface VringState {
  index: number;
  num: number;
}

export function decodeVringState(p: Buffer): VringState {
  return { index: p.readUInt32LE(VRING_STATE.index), num: p.readUInt32LE(VRING_STATE.num) };
}

export function encodeVringState(s: VringState): Buffer {
  const b = Buffer.alloc(VRING_STATE.bytes);
  b.writeUInt32LE(s.index, VRING_STATE.index);
  b.writeUInt32LE(s.num >>> 0, VRING_STATE.num);
  return b;
}

export interface VringAddr {
  index: number;
  flags: number;
  desc: number | undefined;
  used: number | undefined;
  avail: number | undefined;
  /** Guest physical address of the used ring, for dirty logging (VRING_ADDR_F_LOG). */
  log: number | undefined;
}

export function decodeVringAddr(p: Buffer): VringAddr {
  return {
    index: p.readUInt32LE(VRING_ADDR.index),
    flags: p.readUInt32LE(VRING_ADDR.flags),
    desc: readSafeU64(p, VRING_ADDR.desc),
    used: readSafeU64(p, VRING_ADDR.used),
    avail: readSafeU64(p, VRING_ADDR.avail),
    log: readSafeU64(p, VRING_ADDR.log),
  };
}

export function encodeVringAddr(a: { index: number; flags?: number; desc: number; used: number; avail: number }): Buffer {
  const b = Buffer.alloc(VRING_ADDR.bytes);
  b.writeUInt32LE(a.index, VRING_ADDR.index);
  b.writeUInt32LE(a.flags ?? 0, VRING_ADDR.flags);
  b.writeBigUInt64LE(BigInt(a.desc), VRING_ADDR.desc);
  b.writeBigUInt64LE(BigInt(a.used), VRING_ADDR.used);
  b.writeBigUInt64LE(BigInt(a.avail), VRING_ADDR.avail);
  return b;
}

/** Decode one region at `off`; undefined when a field is not below 2^53. */
export function decodeRegion(p: Buffer, off: number): RegionSpec | undefined {
  const guestAddr = readSafeU64(p, off + MEM_REGION.guestAddr);
  const size = readSafeU64(p, off + MEM_REGION.size);
  const userAddr = readSafeU64(p, off + MEM_REGION.userAddr);
  const mmapOffset = readSafeU64(p, off + MEM_REGION.mmapOffset);
  if (guestAddr === undefined || size === undefined || userAddr === undefined || mmapOffset === undefined) return undefined;
  return { guestAddr, size, userAddr, mmapOffset };
}

export function encodeRegion(r: RegionSpec, buf: Buffer, off: number): void {
  buf.writeBigUInt64LE(BigInt(r.guestAddr), off + MEM_REGION.guestAddr);
  buf.writeBigUInt64LE(BigInt(r.size), off + MEM_REGION.size);
  buf.writeBigUInt64LE(BigInt(r.userAddr), off + MEM_REGION.userAddr);
  buf.writeBigUInt64LE(BigInt(r.mmapOffset), off + MEM_REGION.mmapOffset);
}

export function encodeMemTable(regions: readonly RegionSpec[]): Buffer {
  const b = Buffer.alloc(MEM_TABLE.regions + MEM_REGION.bytes * regions.length);
  b.writeUInt32LE(regions.length, MEM_TABLE.count);
  regions.forEach((r, i) => encodeRegion(r, b, MEM_TABLE.regions + i * MEM_REGION.bytes));
  return b;
}

export function encodeSingleRegion(r: RegionSpec): Buffer {
  const b = Buffer.alloc(SINGLE_MEM_REGION.bytes);
  encodeRegion(r, b, SINGLE_MEM_REGION.region);
  return b;
}

/** The virtio-fs config space for a tag (already checked to fit in 36 bytes). */
export function encodeVirtioFsConfig(tag: string, numRequestQueues: number): Buffer {
  const b = Buffer.alloc(VIRTIO_FS_CONFIG.bytes);
  b.write(tag, VIRTIO_FS_CONFIG.tag, VIRTIO_FS_CONFIG.tagBytes, 'utf8');
  b.writeUInt32LE(numRequestQueues, VIRTIO_FS_CONFIG.numRequestQueues);
  return b;
}

/** Why a tag cannot be used, or undefined when it is valid (1 to 36 bytes of UTF-8). */
export function checkTag(tag: string): string | undefined {
  const n = Buffer.byteLength(tag, 'utf8');
  if (n === 0 || n > VIRTIO_FS_CONFIG.tagBytes) return `the tag must be 1 to ${VIRTIO_FS_CONFIG.tagBytes} bytes of UTF-8 (got ${n})`;
  return undefined;
}

export interface ConfigAccess {
  offset: number;
  size: number;
  flags: number;
}

export function decodeConfigAccess(p: Buffer): ConfigAccess {
  return { offset: p.readUInt32LE(CONFIG.offset), size: p.readUInt32LE(CONFIG.size), flags: p.readUInt32LE(CONFIG.flags) };
}

export function encodeConfigAccess(a: ConfigAccess, data: Buffer): Buffer {
  const b = Buffer.alloc(CONFIG.payload + data.length);
  b.writeUInt32LE(a.offset, CONFIG.offset);
  b.writeUInt32LE(a.size, CONFIG.size);
  b.writeUInt32LE(a.flags, CONFIG.flags);
  data.copy(b, CONFIG.payload);
  return b;
}

/** A received message; payload is a view valid until the next receive. */
export interface Message {
  request: number;
  flags: number;
  size: number;
  payload: Buffer;
  fds: number[];
}

export function encodeHeader(request: number, flags: number, size: number, buf: Buffer): void {
  buf.writeUInt32LE(request, HEADER.request);
  buf.writeUInt32LE(flags, HEADER.flags);
  buf.writeUInt32LE(size, HEADER.size);
}
