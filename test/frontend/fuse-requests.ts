// FUSE request encoding and reply decoding for the test frontend, written from
// <linux/fuse.h> (7.38) independently of the server's codec in src/fs, so a codec bug on
// either side shows up as a test failure instead of cancelling out. Every struct used is
// declared once below with its field offsets.

export const Op = {
  LOOKUP: 1,
  FORGET: 2,
  GETATTR: 3,
  SETATTR: 4,
  SYMLINK: 6,
  MKNOD: 8,
  MKDIR: 9,
  UNLINK: 10,
  RMDIR: 11,
  OPEN: 14,
  READ: 15,
  WRITE: 16,
  STATFS: 17,
  RELEASE: 18,
  FLUSH: 25,
  INIT: 26,
  OPENDIR: 27,
  READDIR: 28,
  RELEASEDIR: 29,
  CREATE: 35,
  DESTROY: 38,
  BATCH_FORGET: 42,
  READDIRPLUS: 44,
  TMPFILE: 51,
} as const;

export const ROOT_ID = 1n;
export const KERNEL_VERSION = 7;
export const KERNEL_MINOR = 38;

// fuse_in_header: u32 len, u32 opcode, u64 unique, u64 nodeid, u32 uid, u32 gid, u32 pid,
// u16 total_extlen, u16 padding
export const IN_HEADER = 40;
// fuse_out_header: u32 len, i32 error, u64 unique
export const OUT_HEADER = 16;

// fuse_init_in (7.36+): u32 major, minor, max_readahead, flags, flags2, unused[11]
export const INIT_IN = 64;
// fuse_init_out: u32 major, minor, max_readahead, flags; u16 max_background, congestion_threshold;
// u32 max_write, time_gran; u16 max_pages, map_alignment; u32 flags2, max_stack_depth; unused[6]
export const INIT_OUT = 64;
export const InitFlag = {
  ASYNC_READ: 1 << 0,
  BIG_WRITES: 1 << 5,
  DO_READDIRPLUS: 1 << 13,
  PARALLEL_DIROPS: 1 << 18,
  MAX_PAGES: 1 << 22,
} as const;

// fuse_attr: u64 ino, size, blocks, atime, mtime, ctime; u32 atimensec, mtimensec, ctimensec,
// mode, nlink, uid, gid, rdev, blksize, flags
export const ATTR = 88;
// fuse_entry_out: u64 nodeid, generation, entry_valid, attr_valid; u32 entry_valid_nsec,
// attr_valid_nsec; fuse_attr
export const ENTRY_OUT = 40 + ATTR;
// fuse_attr_out: u64 attr_valid; u32 attr_valid_nsec, dummy; fuse_attr
export const ATTR_OUT = 16 + ATTR;
// fuse_getattr_in: u32 getattr_flags, dummy; u64 fh
export const GETATTR_IN = 16;
// fuse_open_in: u32 flags, open_flags.  fuse_open_out: u64 fh; u32 open_flags; i32 backing_id
export const OPEN_IN = 8;
export const OPEN_OUT = 16;
// fuse_create_in: u32 flags, mode, umask, open_flags; then the name, NUL-terminated
export const CREATE_IN = 16;
// fuse_read_in / fuse_write_in: u64 fh, offset; u32 size, read/write_flags; u64 lock_owner; u32 flags, padding
export const RW_IN = 40;
// fuse_write_out: u32 size, padding
export const WRITE_OUT = 8;
// fuse_release_in: u64 fh; u32 flags, release_flags; u64 lock_owner
export const RELEASE_IN = 24;
// fuse_forget_in: u64 nlookup.  fuse_batch_forget_in: u32 count, dummy; fuse_forget_one[]: u64 nodeid, nlookup
export const FORGET_IN = 8;
export const BATCH_FORGET_IN = 8;
export const FORGET_ONE = 16;
// fuse_mkdir_in: u32 mode, umask
export const MKDIR_IN = 8;
// fuse_dirent: u64 ino, off; u32 namelen, type; name, padded to 8.  direntplus = entry_out + dirent
export const DIRENT = 24;

export interface Attr {
  ino: bigint;
  size: bigint;
  mode: number;
  nlink: number;
  uid: number;
  gid: number;
}

export function parseAttr(b: Buffer, o: number): Attr {
  return {
    ino: b.readBigUInt64LE(o),
    size: b.readBigUInt64LE(o + 8),
    mode: b.readUInt32LE(o + 60),
    nlink: b.readUInt32LE(o + 64),
    uid: b.readUInt32LE(o + 68),
    gid: b.readUInt32LE(o + 72),
  };
}

export interface Entry {
  nodeid: bigint;
  generation: bigint;
  attr: Attr;
}

export function parseEntry(b: Buffer, o = 0): Entry {
  return { nodeid: b.readBigUInt64LE(o), generation: b.readBigUInt64LE(o + 8), attr: parseAttr(b, o + 40) };
}

let nextUnique = 1n;

export interface InHeaderOpts {
  unique?: bigint;
  uid?: number;
  gid?: number;
  pid?: number;
  /** Override the len field (robustness tests). */
  len?: number;
  /** fuse_in_header.total_extlen: request extensions at the end, in units of 8 bytes. */
  totalExtlen?: number;
}

/** A whole request (header + body parts) as one Buffer. */
export function request(opcode: number, nodeid: bigint, parts: readonly Buffer[] = [], h: InHeaderOpts = {}): Buffer {
  const bodyLen = parts.reduce((n, p) => n + p.length, 0);
  const hdr = Buffer.alloc(IN_HEADER);
  const unique = h.unique ?? nextUnique++;
  hdr.writeUInt32LE(h.len ?? IN_HEADER + bodyLen, 0);
  hdr.writeUInt32LE(opcode, 4);
  hdr.writeBigUInt64LE(unique, 8);
  hdr.writeBigUInt64LE(nodeid, 16);
  hdr.writeUInt32LE(h.uid ?? 0, 24);
  hdr.writeUInt32LE(h.gid ?? 0, 28);
  hdr.writeUInt32LE(h.pid ?? process.pid, 32);
  hdr.writeUInt16LE(h.totalExtlen ?? 0, 36);
  return Buffer.concat([hdr, ...parts]);
}

export function cstr(name: string): Buffer {
  return Buffer.concat([Buffer.from(name), Buffer.alloc(1)]);
}

export function initIn(flags: number = InitFlag.ASYNC_READ | InitFlag.BIG_WRITES | InitFlag.DO_READDIRPLUS | InitFlag.PARALLEL_DIROPS | InitFlag.MAX_PAGES, flags2 = 0): Buffer {
  const b = Buffer.alloc(INIT_IN);
  b.writeUInt32LE(KERNEL_VERSION, 0);
  b.writeUInt32LE(KERNEL_MINOR, 4);
  b.writeUInt32LE(128 * 1024, 8);
  b.writeUInt32LE(flags >>> 0, 12);
  b.writeUInt32LE(flags2 >>> 0, 16);
  return b;
}

export interface InitOut {
  major: number;
  minor: number;
  flags: number;
  maxWrite: number;
  maxPages: number;
  flags2: number;
}

export function parseInitOut(b: Buffer): InitOut {
  return {
    major: b.readUInt32LE(0),
    minor: b.readUInt32LE(4),
    flags: b.readUInt32LE(12),
    maxWrite: b.readUInt32LE(20),
    maxPages: b.readUInt16LE(28),
    flags2: b.readUInt32LE(32),
  };
}

// fuse_init_in.flags bit 30 INIT_EXT: flags2 (bits 32..63) is valid; flags2 bit 0 FUSE_SECURITY_CTX,
// bit 2 FUSE_CREATE_SUPP_GROUP.
export const INIT_EXT = 1 << 30;
export const SECURITY_CTX = 1 << 0;
export const CREATE_SUPP_GROUP = 1 << 2;

/**
 * A security-context extension as fs/fuse/dir.c builds it: fuse_secctx_header {u32 size,
 * u32 nr_secctx}, then for one context fuse_secctx {u32 size, u32 padding}, the xattr name
 * with its NUL and the value, the whole padded to 8 bytes. No context: the 8-byte header alone.
 */
export function secctxExt(ctx?: { name: string; value: Buffer }): Buffer {
  if (ctx === undefined) {
    const h = Buffer.alloc(8);
    h.writeUInt32LE(8, 0);
    return h;
  }
  const name = cstr(ctx.name);
  const body = 8 + name.length + ctx.value.length;
  const b = Buffer.alloc(8 + ((body + 7) & ~7));
  b.writeUInt32LE(b.length, 0);
  b.writeUInt32LE(1, 4);
  b.writeUInt32LE(ctx.value.length, 8);
  name.copy(b, 16);
  ctx.value.copy(b, 16 + name.length);
  return b;
}

// fuse_mknod_in: u32 mode, rdev, umask, padding
export const MKNOD_IN = 16;

export function mknodIn(name: string, mode: number, rdev = 0, umask = 0o022): Buffer {
  const b = Buffer.alloc(MKNOD_IN);
  b.writeUInt32LE(mode, 0);
  b.writeUInt32LE(rdev, 4);
  b.writeUInt32LE(umask, 8);
  return Buffer.concat([b, cstr(name)]);
}

/** SYMLINK's arguments: the new name, then the target. */
export function symlinkIn(name: string, target: string): Buffer {
  return Buffer.concat([cstr(name), cstr(target)]);
}

export function getattrIn(fh?: bigint): Buffer {
  const b = Buffer.alloc(GETATTR_IN);
  if (fh !== undefined) {
    b.writeUInt32LE(1 /* FUSE_GETATTR_FH */, 0);
    b.writeBigUInt64LE(fh, 8);
  }
  return b;
}

export function openIn(flags: number): Buffer {
  const b = Buffer.alloc(OPEN_IN);
  b.writeUInt32LE(flags, 0);
  return b;
}

export function createIn(name: string, flags: number, mode: number, umask = 0o022): Buffer {
  const b = Buffer.alloc(CREATE_IN);
  b.writeUInt32LE(flags, 0);
  b.writeUInt32LE(mode, 4);
  b.writeUInt32LE(umask, 8);
  return Buffer.concat([b, cstr(name)]);
}

export function mkdirIn(name: string, mode: number, umask = 0o022): Buffer {
  const b = Buffer.alloc(MKDIR_IN);
  b.writeUInt32LE(mode, 0);
  b.writeUInt32LE(umask, 4);
  return Buffer.concat([b, cstr(name)]);
}

/** fuse_read_in or fuse_write_in (same layout). */
export function rwIn(fh: bigint, offset: number | bigint, size: number, flags = 0): Buffer {
  const b = Buffer.alloc(RW_IN);
  b.writeBigUInt64LE(fh, 0);
  b.writeBigUInt64LE(BigInt(offset), 8);
  b.writeUInt32LE(size, 16);
  b.writeUInt32LE(flags, 32);
  return b;
}

export function releaseIn(fh: bigint, flags = 0): Buffer {
  const b = Buffer.alloc(RELEASE_IN);
  b.writeBigUInt64LE(fh, 0);
  b.writeUInt32LE(flags, 8);
  return b;
}

export function forgetIn(nlookup: bigint | number): Buffer {
  const b = Buffer.alloc(FORGET_IN);
  b.writeBigUInt64LE(BigInt(nlookup), 0);
  return b;
}

export function batchForgetIn(items: readonly { nodeid: bigint; nlookup: bigint | number }[]): Buffer {
  const b = Buffer.alloc(BATCH_FORGET_IN + FORGET_ONE * items.length);
  b.writeUInt32LE(items.length, 0);
  items.forEach((it, i) => {
    b.writeBigUInt64LE(it.nodeid, BATCH_FORGET_IN + FORGET_ONE * i);
    b.writeBigUInt64LE(BigInt(it.nlookup), BATCH_FORGET_IN + FORGET_ONE * i + 8);
  });
  return b;
}

export interface OutHeader {
  len: number;
  error: number;
  unique: bigint;
}

export function parseOutHeader(b: Buffer): OutHeader {
  if (b.length < OUT_HEADER) throw new Error(`reply of ${b.length} bytes is shorter than fuse_out_header`);
  return { len: b.readUInt32LE(0), error: b.readInt32LE(4), unique: b.readBigUInt64LE(8) };
}

export interface DirentPlus {
  entry: Entry;
  ino: bigint;
  off: bigint;
  type: number;
  name: string;
}

/** Parse a READDIRPLUS reply body (after the out header). */
export function parseDirentPlus(b: Buffer): DirentPlus[] {
  const out: DirentPlus[] = [];
  let o = 0;
  while (o + ENTRY_OUT + DIRENT <= b.length) {
    const entry = parseEntry(b, o);
    const d = o + ENTRY_OUT;
    const namelen = b.readUInt32LE(d + 16);
    if (d + DIRENT + namelen > b.length) throw new Error(`direntplus name overruns the reply at ${o}`);
    out.push({
      entry,
      ino: b.readBigUInt64LE(d),
      off: b.readBigUInt64LE(d + 8),
      type: b.readUInt32LE(d + 20),
      name: b.toString('utf8', d + DIRENT, d + DIRENT + namelen),
    });
    o = d + ((DIRENT + namelen + 7) & ~7);
  }
  if (o !== b.length) throw new Error(`READDIRPLUS reply has ${b.length - o} trailing bytes`);
  return out;
}

export interface Dirent {
  ino: bigint;
  off: bigint;
  type: number;
  name: string;
}

export function parseDirent(b: Buffer): Dirent[] {
  const out: Dirent[] = [];
  let o = 0;
  while (o + DIRENT <= b.length) {
    const namelen = b.readUInt32LE(o + 16);
    out.push({ ino: b.readBigUInt64LE(o), off: b.readBigUInt64LE(o + 8), type: b.readUInt32LE(o + 20), name: b.toString('utf8', o + DIRENT, o + DIRENT + namelen) });
    o += (DIRENT + namelen + 7) & ~7;
  }
  return out;
}
