// The FUSE kernel ABI (linux/fuse.h, protocol 7.38), declared once. Every struct is a
// list of typed fields from which the byte offsets and the size are computed; the hot
// path reads and writes through the offsets (`S.off.field`), tests and cold paths
// through the generic encode/decode. Fields are little-endian (both supported hosts).

export const FUSE_KERNEL_VERSION = 7;
export const FUSE_KERNEL_MINOR_VERSION = 38;
/** Oldest client minor we serve: the virtiofs driver speaks 7.31+ (first with virtio-fs). */
export const FUSE_MIN_MINOR_VERSION = 31;
export const FUSE_ROOT_ID = 1;

export const Op = {
  LOOKUP: 1, FORGET: 2, GETATTR: 3, SETATTR: 4, READLINK: 5, SYMLINK: 6, MKNOD: 8, MKDIR: 9,
  UNLINK: 10, RMDIR: 11, RENAME: 12, LINK: 13, OPEN: 14, READ: 15, WRITE: 16, STATFS: 17,
  RELEASE: 18, FSYNC: 20, SETXATTR: 21, GETXATTR: 22, LISTXATTR: 23, REMOVEXATTR: 24, FLUSH: 25,
  INIT: 26, OPENDIR: 27, READDIR: 28, RELEASEDIR: 29, FSYNCDIR: 30, GETLK: 31, SETLK: 32, SETLKW: 33,
  ACCESS: 34, CREATE: 35, INTERRUPT: 36, BMAP: 37, DESTROY: 38, IOCTL: 39, POLL: 40, NOTIFY_REPLY: 41,
  BATCH_FORGET: 42, FALLOCATE: 43, READDIRPLUS: 44, RENAME2: 45, LSEEK: 46, COPY_FILE_RANGE: 47,
  SETUPMAPPING: 48, REMOVEMAPPING: 49, SYNCFS: 50, TMPFILE: 51,
} as const;

export const opName: ReadonlyMap<number, string> = new Map(Object.entries(Op).map(([k, v]) => [v, k]));

// fuse_init_in/out flags (the low 32 bits; flags2 holds bits 32..63).
export const InitFlag = {
  ASYNC_READ: 1 << 0, POSIX_LOCKS: 1 << 1, FILE_OPS: 1 << 2, ATOMIC_O_TRUNC: 1 << 3,
  EXPORT_SUPPORT: 1 << 4, BIG_WRITES: 1 << 5, DONT_MASK: 1 << 6, SPLICE_WRITE: 1 << 7,
  SPLICE_MOVE: 1 << 8, SPLICE_READ: 1 << 9, FLOCK_LOCKS: 1 << 10, HAS_IOCTL_DIR: 1 << 11,
  AUTO_INVAL_DATA: 1 << 12, DO_READDIRPLUS: 1 << 13, READDIRPLUS_AUTO: 1 << 14, ASYNC_DIO: 1 << 15,
  WRITEBACK_CACHE: 1 << 16, NO_OPEN_SUPPORT: 1 << 17, PARALLEL_DIROPS: 1 << 18,
  HANDLE_KILLPRIV: 1 << 19, POSIX_ACL: 1 << 20, ABORT_ERROR: 1 << 21, MAX_PAGES: 1 << 22,
  CACHE_SYMLINKS: 1 << 23, NO_OPENDIR_SUPPORT: 1 << 24, EXPLICIT_INVAL_DATA: 1 << 25,
  MAP_ALIGNMENT: 1 << 26, SUBMOUNTS: 1 << 27, HANDLE_KILLPRIV_V2: 1 << 28, SETXATTR_EXT: 1 << 29,
  INIT_EXT: 1 << 30,
} as const;

// fuse_init_in/out flags2 (bits 32..63 of the 64-bit flag word, exchanged only when both
// sides set INIT_EXT in the low word), as values of the 32-bit flags2 field.
export const InitFlag2 = {
  SECURITY_CTX: 1 << 0, HAS_INODE_DAX: 1 << 1, CREATE_SUPP_GROUP: 1 << 2, HAS_EXPIRE_ONLY: 1 << 3,
  DIRECT_IO_ALLOW_MMAP: 1 << 4, PASSTHROUGH: 1 << 5, NO_EXPORT_SUPPORT: 1 << 6, HAS_RESEND: 1 << 7,
} as const;

export const FATTR = {
  MODE: 1 << 0, UID: 1 << 1, GID: 1 << 2, SIZE: 1 << 3, ATIME: 1 << 4, MTIME: 1 << 5, FH: 1 << 6,
  ATIME_NOW: 1 << 7, MTIME_NOW: 1 << 8, LOCKOWNER: 1 << 9, CTIME: 1 << 10, KILL_SUIDGID: 1 << 11,
} as const;

export const FOPEN = {
  DIRECT_IO: 1 << 0, KEEP_CACHE: 1 << 1, NONSEEKABLE: 1 << 2, CACHE_DIR: 1 << 3, STREAM: 1 << 4,
  NOFLUSH: 1 << 5, PARALLEL_DIRECT_WRITES: 1 << 6,
} as const;

export const FUSE_GETATTR_FH = 1 << 0;
export const FUSE_WRITE_CACHE = 1 << 0;
export const FUSE_WRITE_KILL_SUIDGID = 1 << 2;
/** fuse_open_in/fuse_create_in open_flags: the opener lacks CAP_FSETID and truncates (HANDLE_KILLPRIV_V2). */
export const FUSE_OPEN_KILL_SUIDGID = 1 << 0;
/** fuse_setxattr_in setxattr_flags (SETXATTR_EXT): clear setgid when setting the access ACL. */
export const FUSE_SETXATTR_ACL_KILL_SGID = 1 << 0;
export const FUSE_FSYNC_FDATASYNC = 1 << 0;
export const FUSE_ATTR_SUBMOUNT = 1 << 0;
export const RENAME_NOREPLACE = 1 << 0;
export const RENAME_EXCHANGE = 1 << 1;
export const RENAME_WHITEOUT = 1 << 2;

// ---- struct declarations ------------------------------------------------------------

export type FieldType = 'u16' | 'u32' | 'i32' | 'u64' | 'i64' | `pad${number}`;
type Fields = Record<string, FieldType>;
export type StructValue<F extends Fields> = { [K in keyof F]: F[K] extends 'u64' | 'i64' ? bigint : number };

export interface Struct<F extends Fields> {
  readonly name: string;
  readonly size: number;
  readonly off: { readonly [K in keyof F]: number };
  readonly fields: F;
  decode(buf: Buffer, pos: number): StructValue<F>;
  /** Writes the given fields (missing ones and padding as zero). */
  encode(buf: Buffer, pos: number, value: Partial<StructValue<F>>): void;
}

function fieldSize(t: FieldType): number {
  switch (t) {
    case 'u16': return 2;
    case 'u32': case 'i32': return 4;
    case 'u64': case 'i64': return 8;
    default: return Number(t.slice(3));
  }
}

export function defineStruct<const F extends Fields>(name: string, fields: F): Struct<F> {
  const off: Record<string, number> = {};
  let size = 0;
  for (const [k, t] of Object.entries(fields)) {
    off[k] = size;
    size += fieldSize(t);
  }
  const entries = Object.entries(fields);
  return {
    name, size, fields,
    off: off as { [K in keyof F]: number },
    decode(buf, pos) {
      const v: Record<string, number | bigint> = {};
      for (const [k, t] of entries) {
        const p = pos + (off[k] as number);
        switch (t) {
          case 'u16': v[k] = buf.readUInt16LE(p); break;
          case 'u32': v[k] = buf.readUInt32LE(p); break;
          case 'i32': v[k] = buf.readInt32LE(p); break;
          case 'u64': v[k] = buf.readBigUInt64LE(p); break;
          case 'i64': v[k] = buf.readBigInt64LE(p); break;
          default: v[k] = 0;
        }
      }
      return v as StructValue<F>;
    },
    encode(buf, pos, value) {
      buf.fill(0, pos, pos + size);
      const src = value as Record<string, number | bigint | undefined>;
      for (const [k, t] of entries) {
        const x = src[k];
        if (x === undefined) continue;
        const p = pos + (off[k] as number);
        switch (t) {
          case 'u16': buf.writeUInt16LE(Number(x), p); break;
          case 'u32': buf.writeUInt32LE(Number(x), p); break;
          case 'i32': buf.writeInt32LE(Number(x), p); break;
          case 'u64': buf.writeBigUInt64LE(BigInt(x), p); break;
          case 'i64': buf.writeBigInt64LE(BigInt(x), p); break;
          default: break;
        }
      }
    },
  };
}

export const InHeader = defineStruct('fuse_in_header', {
  len: 'u32', opcode: 'u32', unique: 'u64', nodeid: 'u64', uid: 'u32', gid: 'u32', pid: 'u32',
  totalExtlen: 'u16', padding: 'u16',
});
export const OutHeader = defineStruct('fuse_out_header', { len: 'u32', error: 'i32', unique: 'u64' });

/**
 * Request extensions (fuse_ext_header, 7.38+): appended after a request's arguments, their
 * total length in fuse_in_header.total_extlen (units of 8 bytes), each record padded to 8.
 * Types 0..FUSE_MAX_NR_SECCTX are a security context block (the type is its nr_secctx,
 * fuse_secctx_header being laid out as an extension header); FUSE_EXT_GROUPS carries
 * fuse_supp_groups (CREATE_SUPP_GROUP).
 */
export const ExtHeader = defineStruct('fuse_ext_header', { size: 'u32', type: 'u32' });
export const FUSE_MAX_NR_SECCTX = 31;
export const FUSE_EXT_GROUPS = 32;
/** fuse_supp_groups: nr_groups, then nr_groups u32 gids. */
export const SuppGroupsHead = defineStruct('fuse_supp_groups', { nrGroups: 'u32' });
/** Records of the extension area are aligned to this (FUSE_REC_ALIGN). */
export const FUSE_REC_ALIGN = 8;

export const Attr = defineStruct('fuse_attr', {
  ino: 'u64', size: 'u64', blocks: 'u64', atime: 'u64', mtime: 'u64', ctime: 'u64',
  atimensec: 'u32', mtimensec: 'u32', ctimensec: 'u32', mode: 'u32', nlink: 'u32', uid: 'u32',
  gid: 'u32', rdev: 'u32', blksize: 'u32', flags: 'u32',
});
/** fuse_entry_out = this head followed by fuse_attr. */
export const EntryOutHead = defineStruct('fuse_entry_out', {
  nodeid: 'u64', generation: 'u64', entryValid: 'u64', attrValid: 'u64', entryValidNsec: 'u32',
  attrValidNsec: 'u32',
});
export const ENTRY_OUT_SIZE = EntryOutHead.size + Attr.size; // 128
/** fuse_attr_out = this head followed by fuse_attr. */
export const AttrOutHead = defineStruct('fuse_attr_out', { attrValid: 'u64', attrValidNsec: 'u32', dummy: 'u32' });
export const ATTR_OUT_SIZE = AttrOutHead.size + Attr.size; // 104

export const InitIn = defineStruct('fuse_init_in', {
  major: 'u32', minor: 'u32', maxReadahead: 'u32', flags: 'u32', flags2: 'u32', unused: 'pad44',
});
/** Before 7.36 the kernel sent only the first 16 bytes. */
export const INIT_IN_COMPAT_SIZE = 16;
export const InitOut = defineStruct('fuse_init_out', {
  major: 'u32', minor: 'u32', maxReadahead: 'u32', flags: 'u32', maxBackground: 'u16',
  congestionThreshold: 'u16', maxWrite: 'u32', timeGran: 'u32', maxPages: 'u16', mapAlignment: 'u16',
  flags2: 'u32', unused: 'pad28',
});

export const ForgetIn = defineStruct('fuse_forget_in', { nlookup: 'u64' });
export const ForgetOne = defineStruct('fuse_forget_one', { nodeid: 'u64', nlookup: 'u64' });
export const BatchForgetIn = defineStruct('fuse_batch_forget_in', { count: 'u32', dummy: 'u32' });
export const GetattrIn = defineStruct('fuse_getattr_in', { getattrFlags: 'u32', dummy: 'u32', fh: 'u64' });
export const MknodIn = defineStruct('fuse_mknod_in', { mode: 'u32', rdev: 'u32', umask: 'u32', padding: 'u32' });
export const MkdirIn = defineStruct('fuse_mkdir_in', { mode: 'u32', umask: 'u32' });
export const RenameIn = defineStruct('fuse_rename_in', { newdir: 'u64' });
export const Rename2In = defineStruct('fuse_rename2_in', { newdir: 'u64', flags: 'u32', padding: 'u32' });
export const LinkIn = defineStruct('fuse_link_in', { oldnodeid: 'u64' });
export const SetattrIn = defineStruct('fuse_setattr_in', {
  valid: 'u32', padding: 'u32', fh: 'u64', size: 'u64', lockOwner: 'u64', atime: 'u64', mtime: 'u64',
  ctime: 'u64', atimensec: 'u32', mtimensec: 'u32', ctimensec: 'u32', mode: 'u32', unused4: 'u32',
  uid: 'u32', gid: 'u32', unused5: 'u32',
});
export const OpenIn = defineStruct('fuse_open_in', { flags: 'u32', openFlags: 'u32' });
export const CreateIn = defineStruct('fuse_create_in', { flags: 'u32', mode: 'u32', umask: 'u32', openFlags: 'u32' });
export const OpenOut = defineStruct('fuse_open_out', { fh: 'u64', openFlags: 'u32', padding: 'u32' });
export const ReleaseIn = defineStruct('fuse_release_in', { fh: 'u64', flags: 'u32', releaseFlags: 'u32', lockOwner: 'u64' });
export const FlushIn = defineStruct('fuse_flush_in', { fh: 'u64', unused: 'u32', padding: 'u32', lockOwner: 'u64' });
export const ReadIn = defineStruct('fuse_read_in', {
  fh: 'u64', offset: 'u64', size: 'u32', readFlags: 'u32', lockOwner: 'u64', flags: 'u32', padding: 'u32',
});
export const WriteIn = defineStruct('fuse_write_in', {
  fh: 'u64', offset: 'u64', size: 'u32', writeFlags: 'u32', lockOwner: 'u64', flags: 'u32', padding: 'u32',
});
export const WriteOut = defineStruct('fuse_write_out', { size: 'u32', padding: 'u32' });
export const Kstatfs = defineStruct('fuse_kstatfs', {
  blocks: 'u64', bfree: 'u64', bavail: 'u64', files: 'u64', ffree: 'u64', bsize: 'u32', namelen: 'u32',
  frsize: 'u32', padding: 'u32', spare: 'pad24',
});
export const FsyncIn = defineStruct('fuse_fsync_in', { fh: 'u64', fsyncFlags: 'u32', padding: 'u32' });
/** The 16-byte form comes only with SETXATTR_EXT agreed (--posix-acl); otherwise the first 8 bytes. */
export const SetxattrIn = defineStruct('fuse_setxattr_in', { size: 'u32', flags: 'u32', setxattrFlags: 'u32', padding: 'u32' });
export const SETXATTR_IN_COMPAT_SIZE = 8;
export const GetxattrIn = defineStruct('fuse_getxattr_in', { size: 'u32', padding: 'u32' });
export const GetxattrOut = defineStruct('fuse_getxattr_out', { size: 'u32', padding: 'u32' });
/**
 * A security context block (SECURITY_CTX), the extension record whose type 0..FUSE_MAX_NR_SECCTX
 * is its nr_secctx: fuse_secctx_header, then per context fuse_secctx, the xattr name with its
 * NUL and `size` value bytes, the block padded to FUSE_REC_ALIGN.
 */
export const SecctxHeader = defineStruct('fuse_secctx_header', { size: 'u32', nrSecctx: 'u32' });
export const Secctx = defineStruct('fuse_secctx', { size: 'u32', padding: 'u32' });
export const AccessIn = defineStruct('fuse_access_in', { mask: 'u32', padding: 'u32' });
export const InterruptIn = defineStruct('fuse_interrupt_in', { unique: 'u64' });
export const FallocateIn = defineStruct('fuse_fallocate_in', {
  fh: 'u64', offset: 'u64', length: 'u64', mode: 'u32', padding: 'u32',
});
export const LseekIn = defineStruct('fuse_lseek_in', { fh: 'u64', offset: 'u64', whence: 'u32', padding: 'u32' });
export const LseekOut = defineStruct('fuse_lseek_out', { offset: 'u64' });
export const CopyFileRangeIn = defineStruct('fuse_copy_file_range_in', {
  fhIn: 'u64', offIn: 'u64', nodeidOut: 'u64', fhOut: 'u64', offOut: 'u64', len: 'u64', flags: 'u64',
});
export const SyncfsIn = defineStruct('fuse_syncfs_in', { padding: 'u64' });
export const Dirent = defineStruct('fuse_dirent', { ino: 'u64', off: 'u64', namelen: 'u32', type: 'u32' });
/** fuse_direntplus = fuse_entry_out then fuse_dirent then the name, padded to 8. */
export const DIRENTPLUS_HEAD_SIZE = ENTRY_OUT_SIZE + Dirent.size; // 152

/** Round a record length up to 8 bytes (FUSE_DIRENT_ALIGN). */
export function direntAlign(n: number): number {
  return (n + 7) & ~7;
}

/** Size of the fixed argument struct each opcode starts with (0: none, or only names). */
export const fixedArgSize: ReadonlyMap<number, number> = new Map<number, number>([
  [Op.LOOKUP, 0], [Op.FORGET, ForgetIn.size], [Op.GETATTR, GetattrIn.size], [Op.SETATTR, SetattrIn.size],
  [Op.READLINK, 0], [Op.SYMLINK, 0], [Op.MKNOD, MknodIn.size], [Op.MKDIR, MkdirIn.size], [Op.UNLINK, 0],
  [Op.RMDIR, 0], [Op.RENAME, RenameIn.size], [Op.LINK, LinkIn.size], [Op.OPEN, OpenIn.size],
  [Op.READ, ReadIn.size], [Op.WRITE, WriteIn.size], [Op.STATFS, 0], [Op.RELEASE, ReleaseIn.size],
  [Op.FSYNC, FsyncIn.size], [Op.SETXATTR, SETXATTR_IN_COMPAT_SIZE], [Op.GETXATTR, GetxattrIn.size],
  [Op.LISTXATTR, GetxattrIn.size], [Op.REMOVEXATTR, 0], [Op.FLUSH, FlushIn.size],
  [Op.INIT, INIT_IN_COMPAT_SIZE], [Op.OPENDIR, OpenIn.size], [Op.READDIR, ReadIn.size],
  [Op.RELEASEDIR, ReleaseIn.size], [Op.FSYNCDIR, FsyncIn.size], [Op.ACCESS, AccessIn.size],
  [Op.CREATE, CreateIn.size], [Op.INTERRUPT, InterruptIn.size], [Op.DESTROY, 0],
  [Op.BATCH_FORGET, BatchForgetIn.size], [Op.FALLOCATE, FallocateIn.size], [Op.READDIRPLUS, ReadIn.size],
  [Op.RENAME2, Rename2In.size], [Op.LSEEK, LseekIn.size], [Op.COPY_FILE_RANGE, CopyFileRangeIn.size],
  [Op.SYNCFS, SyncfsIn.size], [Op.TMPFILE, CreateIn.size],
]);
