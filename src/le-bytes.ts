// Little-endian integer fields read and written straight on byte arrays (Buffer,
// Uint8Array, views of guest memory). The hot path (request decode, attribute and
// dirent encoding, descriptor walks) uses these instead of Buffer's readUInt32LE /
// writeUInt32LE family: Node's methods validate their arguments on every call, and
// measured in the daemon's loop they cost ~28 ns per 32-bit read+write pair against ~3 ns
// here. Callers own the bounds: every offset passed in has been checked against the
// buffer's length (an index past the end reads undefined -> 0 and a write is dropped,
// so a missed check corrupts nothing outside the array).

export type Bytes = Uint8Array;

export function u16(b: Bytes, o: number): number {
  return b[o] | (b[o + 1] << 8);
}

export function u32(b: Bytes, o: number): number {
  return (b[o] | (b[o + 1] << 8) | (b[o + 2] << 16) | (b[o + 3] << 24)) >>> 0;
}

export function i32(b: Bytes, o: number): number {
  return b[o] | (b[o + 1] << 8) | (b[o + 2] << 16) | (b[o + 3] << 24);
}

/** An unsigned 64-bit field as a number (exact up to 2^53, as the callers need). */
export function u64(b: Bytes, o: number): number {
  return u32(b, o) + u32(b, o + 4) * 0x100000000;
}

export function setU16(b: Bytes, o: number, v: number): void {
  b[o] = v;
  b[o + 1] = v >>> 8;
}

export function setU32(b: Bytes, o: number, v: number): void {
  b[o] = v;
  b[o + 1] = v >>> 8;
  b[o + 2] = v >>> 16;
  b[o + 3] = v >>> 24;
}

/** A non-negative number below 2^64 as an unsigned 64-bit field. */
export function setU64(b: Bytes, o: number, v: number): void {
  setU32(b, o, v >>> 0);
  setU32(b, o + 4, Math.floor(v / 0x100000000) >>> 0);
}

/** Copy `n` bytes from src[from..] to dst[to..] (small copies: cheaper than set(subarray)). */
export function copyBytes(src: Bytes, from: number, dst: Bytes, to: number, n: number): void {
  for (let i = 0; i < n; i++) dst[to + i] = src[from + i];
}
