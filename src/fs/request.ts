// Decoding one FUSE request out of the transport's scattered buffers, and encoding its
// reply back into the transport's writable buffers. The small part of a request (in
// header and arguments) is used in place when the first segment holds it, otherwise it
// is gathered into a reusable scratch buffer; a WRITE payload is never copied (the
// handler gets views of the readable segments for pwritev). A reply is built in the
// single writable segment when there is just one (the /dev/fuse case), else in a
// scratch buffer that is then scattered (virtqueue descriptors); READ data goes
// straight into the writable segments after the out header.
import { constants as osConstants } from 'node:os';
import { InHeader, OutHeader, Op, WriteIn, fixedArgSize } from './fuse-abi.js';
import { u16, u32, setU32 } from '../le-bytes.js';

export const IN_HEADER_SIZE = InHeader.size; // 40
export const OUT_HEADER_SIZE = OutHeader.size; // 16
/** A handler result meaning "send no reply" (FORGET, INTERRUPT, ...). */
export const NO_REPLY = -0x7fffffff;

const H = InHeader.off;
const EIO = osConstants.errno.EIO;

/** Why a request was refused before dispatch (logged once by the server). */
export type DecodeProblem = string | null;

function u64(buf: Buffer, pos: number): number {
  return u32(buf, pos) + u32(buf, pos + 4) * 0x100000000;
}

export class Request {
  /** Holds header + arguments starting at `base`. */
  buf: Buffer = Buffer.alloc(0);
  base = 0;
  /** Absolute end of the argument bytes in `buf` (extensions excluded). */
  end = 0;
  len = 0;
  opcode = 0;
  uniqueLo = 0;
  uniqueHi = 0;
  nodeid = 0;
  uid = 0;
  gid = 0;
  pid = 0;
  /** WRITE payload as views of the readable segments. */
  readonly payload: Buffer[] = [];
  payloadLen = 0;
  private scratch = Buffer.alloc(8192);

  constructor(private readonly maxLen: number) {}

  /** Absolute offset of the first argument byte. */
  get args(): number {
    return this.base + IN_HEADER_SIZE;
  }

  get argLen(): number {
    return this.end - this.base - IN_HEADER_SIZE;
  }

  /**
   * Load a request. Returns null when it is well formed enough to dispatch, otherwise
   * a description of the problem; the unique id is read whenever 16 bytes exist, so
   * the error reply still reaches the right waiter.
   */
  load(readable: readonly Buffer[]): DecodeProblem {
    this.uniqueLo = this.uniqueHi = 0;
    this.opcode = 0;
    this.payload.length = 0;
    this.payloadLen = 0;
    let total = 0;
    for (const b of readable) total += b.length;
    if (total < IN_HEADER_SIZE) {
      if (total >= 16) {
        this.gather(readable, 16);
        this.uniqueLo = u32(this.buf, H.unique);
        this.uniqueHi = u32(this.buf, H.unique + 4);
        this.opcode = u32(this.buf, H.opcode);
      }
      return `request of ${total} bytes is shorter than fuse_in_header`;
    }
    const first = readable[0] as Buffer;
    if (first.length >= IN_HEADER_SIZE) {
      this.buf = first;
      this.base = 0;
    } else {
      this.gather(readable, IN_HEADER_SIZE);
    }
    const b = this.buf;
    const p = this.base;
    this.len = u32(b, p + H.len);
    this.opcode = u32(b, p + H.opcode);
    this.uniqueLo = u32(b, p + H.unique);
    this.uniqueHi = u32(b, p + H.unique + 4);
    this.nodeid = u64(b, p + H.nodeid);
    this.uid = u32(b, p + H.uid);
    this.gid = u32(b, p + H.gid);
    this.pid = u32(b, p + H.pid);
    const extLen = u16(b, p + H.totalExtlen) * 8;
    if (this.len !== total) return `len field ${this.len} but ${total} bytes arrived`;
    if (this.len > this.maxLen) return `request of ${this.len} bytes exceeds the limit of ${this.maxLen}`;
    const argsEnd = this.len - extLen;
    if (argsEnd < IN_HEADER_SIZE) return `extension length ${extLen} exceeds the request`;
    // The small part: everything but a WRITE payload.
    const fixed = fixedArgSize.get(this.opcode);
    let small = argsEnd;
    if (this.opcode === Op.WRITE) small = Math.min(argsEnd, IN_HEADER_SIZE + WriteIn.size);
    if (first.length >= small) {
      this.buf = first;
      this.base = 0;
    } else {
      this.gather(readable, small);
    }
    this.end = this.base + small;
    if (fixed !== undefined && small - IN_HEADER_SIZE < fixed) {
      return `arguments of ${small - IN_HEADER_SIZE} bytes are shorter than the ${fixed}-byte struct`;
    }
    if (this.opcode === Op.WRITE) {
      const size = u32(this.buf, this.args + WriteIn.off.size);
      if (argsEnd - small !== size) return `WRITE size ${size} but ${argsEnd - small} payload bytes`;
      this.collectPayload(readable, small, argsEnd);
    }
    return null;
  }

  /** Copy the first n bytes of the request into the scratch buffer. */
  private gather(readable: readonly Buffer[], n: number): void {
    if (this.scratch.length < n) this.scratch = Buffer.alloc(Math.max(n, this.scratch.length * 2));
    let done = 0;
    for (const seg of readable) {
      if (done >= n) break;
      const take = Math.min(seg.length, n - done);
      seg.copy(this.scratch, done, 0, take);
      done += take;
    }
    this.buf = this.scratch;
    this.base = 0;
  }

  private collectPayload(readable: readonly Buffer[], from: number, to: number): void {
    let pos = 0;
    for (const seg of readable) {
      const segEnd = pos + seg.length;
      if (segEnd > from && pos < to) {
        const s = Math.max(from, pos) - pos;
        const e = Math.min(to, segEnd) - pos;
        this.payload.push(s === 0 && e === seg.length ? seg : seg.subarray(s, e));
      }
      pos = segEnd;
      if (pos >= to) break;
    }
    this.payloadLen = to - from;
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
    if (pos >= this.end) return -1;
    const i = this.buf.indexOf(0, pos);
    return i < 0 || i >= this.end ? -1 : i;
  }
}

export class Reply {
  /** Where the reply body is written: starts at OUT_HEADER_SIZE. */
  out: Buffer = Buffer.alloc(0);
  /** Room for header + body across all writable segments. */
  capacity = 0;
  /** Set by READ: the body is already in the writable segments. */
  dataInPlace = false;
  private writable: readonly Buffer[] = [];
  private scratch = Buffer.alloc(8192);
  readonly iov: Buffer[] = [];

  begin(writable: readonly Buffer[]): void {
    this.writable = writable;
    this.dataInPlace = false;
    let cap = 0;
    for (const b of writable) cap += b.length;
    this.capacity = cap;
    this.out = writable.length === 1 ? (writable[0] as Buffer) : this.scratch;
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
    }
    return true;
  }

  /** Room for body bytes (bounded by what the client gave and `limit`). */
  room(limit: number): number {
    return Math.max(0, Math.min(limit, this.capacity - OUT_HEADER_SIZE));
  }

  /** Views of the writable segments from the end of the out header, `len` bytes long. */
  dataIov(len: number): Buffer[] {
    const iov = this.iov;
    iov.length = 0;
    let pos = 0;
    const from = OUT_HEADER_SIZE;
    const to = OUT_HEADER_SIZE + len;
    for (const seg of this.writable) {
      const segEnd = pos + seg.length;
      if (segEnd > from && pos < to) {
        const s = Math.max(from, pos) - pos;
        const e = Math.min(to, segEnd) - pos;
        iov.push(s === 0 && e === seg.length ? seg : seg.subarray(s, e));
      }
      pos = segEnd;
      if (pos >= to) break;
    }
    return iov;
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
    if (o !== this.writable[0] || this.writable.length !== 1) {
      this.scatter(o, this.dataInPlace ? OUT_HEADER_SIZE : len);
    }
    return len;
  }

  private scatter(src: Buffer, n: number): void {
    let done = 0;
    for (const seg of this.writable) {
      if (done >= n) break;
      const take = Math.min(seg.length, n - done);
      src.copy(seg, 0, done, done + take);
      done += take;
    }
  }
}
