// Decoding one FUSE request out of the transport's scattered ranges (Segments), and
// encoding its reply back into the transport's writable ranges. The small part of a
// request (in header and arguments, everything but a WRITE payload) is always copied into
// a buffer of ours before anything looks at it: read in place, a name checked for '/' or
// ".." could be rewritten by another vCPU before the *at call uses it. A WRITE payload is
// never copied: pwritev takes it from guest memory by address (IovecList), or from views
// when the transport gave no addresses. A reply is built in the single writable buffer
// when the transport gave exactly one whole buffer (the /dev/fuse case), else in a scratch
// buffer that is then scattered (virtqueue descriptors); READ data goes straight into the
// writable ranges after the out header.
import { constants as osConstants } from 'node:os';
import { InHeader, OutHeader, Op, WriteIn, fixedArgSize } from './fuse-abi.js';
import { extensionAreaProblem } from './request-ext.js';
import type { Segments } from './session.js';
import { u16, u32, setU32 } from '../le-bytes.js';

export const IN_HEADER_SIZE = InHeader.size; // 40
export const OUT_HEADER_SIZE = OutHeader.size; // 16
/** A handler result meaning "send no reply" (FORGET, INTERRUPT, ...). */
export const NO_REPLY = -0x7fffffff;

const H = InHeader.off;
const EIO = osConstants.errno.EIO;
/** fixedArgSize as an array by opcode (undefined: no fixed part): a Map lookup per request showed in profiles. */
const fixedArgs: number[] = [];
for (const [op, size] of fixedArgSize) fixedArgs[op] = size;

/** Why a request was refused before dispatch (logged once by the server). */
export type DecodeProblem = string | null;

function u64(buf: Buffer, pos: number): number {
  return u32(buf, pos) + u32(buf, pos + 4) * 0x100000000;
}

/** Below this, a byte loop beats Buffer#copy / TypedArray#set (they cross into C++). */
const SMALL_COPY = 16;

function copyRange(src: Buffer, from: number, dst: Buffer, to: number, n: number): void {
  if (n <= SMALL_COPY) {
    for (let i = 0; i < n; i++) dst[to + i] = src[from + i] as number;
  } else {
    src.copy(dst, to, from, from + n);
  }
}

/** Most iovecs one preadv/pwritev takes (IOV_MAX on Linux). */
export const IOV_MAX = 1024;
const IOVEC_SIZE = 16;

/**
 * A struct iovec array filled from Segments with host addresses, for preadvAddr /
 * pwritevAddr: no Buffer view per range. Ranges beyond IOV_MAX are served by the
 * caller in further calls (fill() again from where the last one stopped).
 */
export class IovecList {
  readonly buf = Buffer.alloc(IOV_MAX * IOVEC_SIZE);
  private readonly w = new Uint32Array(this.buf.buffer, this.buf.byteOffset, IOV_MAX * 4);
  count = 0;
  bytes = 0;

  /**
   * The ranges of `segs` covering its bytes [from, to), at most IOV_MAX of them. Returns
   * false when a range has no address (use views instead). Sets count and bytes.
   */
  fill(segs: Segments, from: number, to: number): boolean {
    const w = this.w;
    let n = 0;
    let bytes = 0;
    let pos = 0;
    for (let i = 0; i < segs.count && pos < to && n < IOV_MAX; i++) {
      const len = segs.lens[i] as number;
      const end = pos + len;
      if (end > from) {
        const a = segs.addrs[i] as number;
        if (a < 0) return false;
        const s = from > pos ? from - pos : 0;
        const e = to < end ? to - pos : len;
        const addr = a + s;
        w[4 * n] = addr >>> 0;
        w[4 * n + 1] = Math.floor(addr / 0x100000000);
        w[4 * n + 2] = e - s;
        w[4 * n + 3] = 0;
        bytes += e - s;
        n++;
      }
      pos = end;
    }
    this.count = n;
    this.bytes = bytes;
    return true;
  }
}

/** Views of the bytes [from, to) of `segs` (the path without addresses). */
export function segmentViews(segs: Segments, from: number, to: number, out: Buffer[]): Buffer[] {
  out.length = 0;
  let pos = 0;
  for (let i = 0; i < segs.count && pos < to; i++) {
    const len = segs.lens[i] as number;
    const end = pos + len;
    if (end > from) {
      const b = segs.bufs[i] as Buffer;
      const o = segs.offs[i] as number;
      const s = from > pos ? from - pos : 0;
      const e = to < end ? to - pos : len;
      out.push(o + s === 0 && e - s === b.length ? b : b.subarray(o + s, o + e));
    }
    pos = end;
  }
  return out;
}

export class Request {
  /** Holds header + arguments, copied from the transport (our own bytes, see the header). */
  buf: Buffer = Buffer.alloc(8192);
  /** Offset of the in header in `buf` (always 0: kept for the handlers' arithmetic). */
  readonly base = 0;
  /** Absolute end of the argument bytes in `buf` (extensions excluded). */
  end = 0;
  /**
   * The request's extension records (total_extlen), copied into `buf` at [extFrom, extEnd)
   * and checked record by record (request-ext.ts); extFrom === extEnd when it has none.
   */
  extFrom = 0;
  extEnd = 0;
  len = 0;
  opcode = 0;
  uniqueLo = 0;
  uniqueHi = 0;
  nodeid = 0;
  uid = 0;
  gid = 0;
  pid = 0;
  /** WRITE payload: bytes [payloadFrom, payloadFrom + payloadLen) of `source`. */
  payloadFrom = 0;
  payloadLen = 0;
  /** The readable ranges of the request being served. */
  source: Segments | undefined;
  private readonly views: Buffer[] = [];

  constructor(private readonly maxLen: number) {}

  /** Absolute offset of the first argument byte. */
  get args(): number {
    return IN_HEADER_SIZE;
  }

  get argLen(): number {
    return this.end - IN_HEADER_SIZE;
  }

  /** The WRITE payload as views (the path without host addresses; allocates). */
  get payload(): Buffer[] {
    return this.source === undefined ? [] : segmentViews(this.source, this.payloadFrom, this.payloadFrom + this.payloadLen, this.views);
  }

  /**
   * Load a request. Returns null when it is well formed enough to dispatch, otherwise
   * a description of the problem; the unique id is read whenever 16 bytes exist, so
   * the error reply still reaches the right waiter.
   */
  load(readable: Segments): DecodeProblem {
    this.uniqueLo = this.uniqueHi = 0;
    this.opcode = 0;
    this.payloadFrom = 0;
    this.payloadLen = 0;
    this.end = 0;
    this.extFrom = this.extEnd = 0;
    this.source = readable;
    const total = readable.bytes;
    if (total < IN_HEADER_SIZE) {
      if (total >= 16) {
        this.gather(readable, 16);
        this.uniqueLo = u32(this.buf, H.unique);
        this.uniqueHi = u32(this.buf, H.unique + 4);
        this.opcode = u32(this.buf, H.opcode);
      }
      return `request of ${total} bytes is shorter than fuse_in_header`;
    }
    this.gather(readable, IN_HEADER_SIZE);
    const b = this.buf;
    this.len = u32(b, H.len);
    this.opcode = u32(b, H.opcode);
    this.uniqueLo = u32(b, H.unique);
    this.uniqueHi = u32(b, H.unique + 4);
    this.nodeid = u64(b, H.nodeid);
    this.uid = u32(b, H.uid);
    this.gid = u32(b, H.gid);
    this.pid = u32(b, H.pid);
    const extLen = u16(b, H.totalExtlen) * 8;
    if (this.len !== total) return `len field ${this.len} but ${total} bytes arrived`;
    if (this.len > this.maxLen) return `request of ${this.len} bytes exceeds the limit of ${this.maxLen}`;
    const argsEnd = this.len - extLen;
    if (argsEnd < IN_HEADER_SIZE) return `extension length ${extLen} exceeds the request`;
    // The small part: everything but a WRITE payload.
    const fixed = this.opcode < fixedArgs.length ? fixedArgs[this.opcode] : undefined;
    let small = argsEnd;
    if (this.opcode === Op.WRITE) small = Math.min(argsEnd, IN_HEADER_SIZE + WriteIn.size);
    if (small > IN_HEADER_SIZE) this.gather(readable, small, IN_HEADER_SIZE);
    this.end = small;
    if (fixed !== undefined && small - IN_HEADER_SIZE < fixed) {
      return `arguments of ${small - IN_HEADER_SIZE} bytes are shorter than the ${fixed}-byte struct`;
    }
    this.extFrom = this.extEnd = argsEnd;
    if (extLen > 0) {
      this.gather(readable, this.len, argsEnd);
      this.extEnd = this.len;
      const bad = extensionAreaProblem(this.buf, argsEnd, this.len);
      if (bad !== null) return bad;
    }
    if (this.opcode === Op.WRITE) {
      const size = u32(this.buf, this.args + WriteIn.off.size);
      if (argsEnd - small !== size) return `WRITE size ${size} but ${argsEnd - small} payload bytes`;
      this.payloadFrom = small;
      this.payloadLen = argsEnd - small;
    }
    return null;
  }

  /** Copy bytes [from, n) of the request into `buf` at the same offsets. */
  private gather(readable: Segments, n: number, from = 0): void {
    if (this.buf.length < n) {
      // Grown mid-request (the extensions after the arguments): keep what is already copied.
      const grown = Buffer.alloc(Math.max(n, this.buf.length * 2));
      this.buf.copy(grown, 0, 0, from);
      this.buf = grown;
    }
    const dst = this.buf;
    let pos = 0;
    for (let i = 0; i < readable.count && pos < n; i++) {
      const len = readable.lens[i] as number;
      const end = pos + len;
      if (end > from) {
        const s = from > pos ? from - pos : 0;
        const e = n < end ? n - pos : len;
        copyRange(readable.bufs[i] as Buffer, (readable.offs[i] as number) + s, dst, pos + s, e - s);
      }
      pos = end;
    }
  }

  u32(rel: number): number {
    return u32(this.buf, this.args + rel);
  }

  /** An unsigned 64-bit argument as a number (exact below 2^53). */
  u64(rel: number): number {
    return u64(this.buf, this.args + rel);
  }

  /** True when the 64-bit argument is beyond Number's exact range. */
  u64Big(rel: number): boolean {
    return u32(this.buf, this.args + rel + 4) >= 0x200000;
  }

  bigU64(rel: number): bigint {
    return this.buf.readBigUInt64LE(this.args + rel);
  }

  /**
   * The NUL-terminated string starting at absolute offset `pos`: returns the offset of
   * its NUL, or -1 when no NUL occurs before the end of the arguments.
   */
  strEnd(pos: number): number {
    const b = this.buf;
    const end = this.end;
    for (let i = pos; i < end; i++) if (b[i] === 0) return i;
    return -1;
  }
}

export class Reply {
  /** Where the reply is built: out header at 0, body from OUT_HEADER_SIZE. */
  out: Buffer = Buffer.alloc(8192);
  /** Room for header + body across all writable ranges. */
  capacity = 0;
  /** Set by READ: the body is already in the writable ranges. */
  dataInPlace = false;
  /** The writable ranges of the request being served. */
  target: Segments | undefined;
  /** `out` is the transport's own (single, whole) buffer: nothing to scatter. */
  private inPlace = false;
  private scratch: Buffer = this.out;
  readonly iov: Buffer[] = [];

  begin(writable: Segments): void {
    this.target = writable;
    this.dataInPlace = false;
    this.capacity = writable.bytes;
    const one = writable.count === 1 && writable.offs[0] === 0 && writable.lens[0] === (writable.bufs[0] as Buffer).length;
    this.inPlace = one;
    this.out = one ? (writable.bufs[0] as Buffer) : this.scratch;
  }

  /** Make sure `bodyLen` bytes of body fit; false when the client left too little room. */
  reserve(bodyLen: number): boolean {
    const need = OUT_HEADER_SIZE + bodyLen;
    if (need > this.capacity) return false;
    if (this.out.length < need) {
      const grown = Buffer.alloc(Math.max(need, this.scratch.length * 2));
      this.out.copy(grown, 0, 0, this.out.length);
      this.scratch = grown;
      this.out = grown;
      this.inPlace = false;
    }
    return true;
  }

  /** Room for body bytes (bounded by what the client gave and `limit`). */
  room(limit: number): number {
    return Math.max(0, Math.min(limit, this.capacity - OUT_HEADER_SIZE));
  }

  /** Views of the writable ranges from the end of the out header, `len` bytes long (allocates). */
  dataIov(len: number): Buffer[] {
    const t = this.target;
    if (t === undefined) return [];
    return segmentViews(t, OUT_HEADER_SIZE, OUT_HEADER_SIZE + len, this.iov);
  }

  /**
   * Write the out header (error 0 with `bodyLen` body bytes, or a negative errno) and
   * scatter the reply when it was built in scratch. Returns the reply length, or 0 when
   * not even a header fits.
   */
  finish(req: Request, result: number): number {
    if (this.capacity < OUT_HEADER_SIZE) return 0;
    let error = result < 0 ? result : 0;
    let len = error < 0 ? OUT_HEADER_SIZE : OUT_HEADER_SIZE + result;
    if (len > this.capacity) {
      // Handlers reserve() first; this only guards against a bug turning into an overrun.
      error = -EIO;
      len = OUT_HEADER_SIZE;
    }
    const o = this.out;
    setU32(o, 0, len);
    setU32(o, 4, error);
    setU32(o, 8, req.uniqueLo);
    setU32(o, 12, req.uniqueHi);
    if (!this.inPlace) this.scatter(o, this.dataInPlace && error === 0 ? OUT_HEADER_SIZE : len);
    return len;
  }

  private scatter(src: Buffer, n: number): void {
    const t = this.target;
    if (t === undefined) return;
    let done = 0;
    for (let i = 0; i < t.count && done < n; i++) {
      const take = Math.min(t.lens[i] as number, n - done);
      copyRange(src, done, t.bufs[i] as Buffer, t.offs[i] as number, take);
      done += take;
    }
  }
}
