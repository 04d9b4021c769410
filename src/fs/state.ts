// The state one FUSE session's operations share (inode/handle tables, scratch buffers,
// negotiated features, the request being served) and the helpers most operations use:
// statx into a reusable buffer, fuse_attr/fuse_entry_out encoding, lookup of one name
// under a parent inode, and running a call with the caller's credentials.
import { constants as osConstants } from 'node:os';
import {
  AT_EMPTY_PATH, AT_SYMLINK_NOFOLLOW, O_CLOEXEC, O_DIRECTORY, O_NOFOLLOW, O_PATH, O_RDONLY, STATX_BASIC_STATS, STATX_MNT_ID,
  STATX_SIZE, STX, S_IFDIR, close, nameToHandleAt, openat, statx,
} from '../sys/file-calls.js';
import { setresgidThread, setresuidThread } from '../sys/cred-calls.js';
import { SysError } from '../sys/libc.js';
import type { FsOptions } from './options.js';
import { Attr, AttrOutHead, ENTRY_OUT_SIZE, EntryOutHead, FUSE_ATTR_SUBMOUNT } from './fuse-abi.js';
import { HandleTable, InodeTable, mntIdOf, type Inode } from './inodes.js';
import { Reply, Request } from './request.js';
import { logger, type Logger } from '../log.js';
import { u16, u32, setU32 } from '../le-bytes.js';

export const E = osConstants.errno;
export const STATX_MASK = STATX_BASIC_STATS | STATX_MNT_ID;
export const EMPTY_NAME = Buffer.from([0]);
const DOT = Buffer.from('.\0');
const A = Attr.off;

export interface Timeouts {
  entry: number;
  attr: number;
}

/** Entry/attribute validity per --cache, as virtiofsd sets them. */
export function timeoutsFor(cache: FsOptions['cache']): Timeouts {
  switch (cache) {
    case 'never': return { entry: 0, attr: 0 };
    case 'auto': return { entry: 1, attr: 1 };
    case 'metadata':
    case 'always': return { entry: 86400, attr: 86400 };
  }
}

function copy64(src: Buffer, from: number, dst: Buffer, to: number): void {
  setU32(dst, to, u32(src, from));
  setU32(dst, to + 4, u32(src, from + 4));
}

function writeU64(dst: Buffer, to: number, v: number): void {
  setU32(dst, to, v >>> 0);
  setU32(dst, to + 4, Math.floor(v / 0x100000000));
}

// Word views of the buffers writeAttr works on. They are the same few buffers request after
// request (the session's statx buffer, the reply scratch, a /dev/fuse reply buffer), so the
// last view of each is kept instead of being made per call.
let lastStx: Buffer | undefined;
let lastStx32: Uint32Array = new Uint32Array(0);
let lastOut: Buffer | undefined;
let lastOut32: Uint32Array = new Uint32Array(0);

function words(b: Buffer): Uint32Array | undefined {
  if (b.byteOffset % 4 !== 0) return undefined;
  return new Uint32Array(b.buffer, b.byteOffset, b.length >>> 2);
}

/** Encode fuse_attr at `pos` from a statx buffer. */
export function writeAttr(stx: Buffer, out: Buffer, pos: number, flags: number): void {
  if (pos % 4 === 0) {
    if (stx !== lastStx) {
      const w = words(stx);
      if (w !== undefined) {
        lastStx = stx;
        lastStx32 = w;
      }
    }
    if (out !== lastOut) {
      const w = words(out);
      if (w !== undefined) {
        lastOut = out;
        lastOut32 = w;
      }
    }
    if (stx === lastStx && out === lastOut && pos + Attr.size <= out.length) {
      writeAttrWords(lastStx32, lastOut32, pos >>> 2, flags);
      return;
    }
  }
  copy64(stx, STX.ino, out, pos + A.ino);
  copy64(stx, STX.size, out, pos + A.size);
  copy64(stx, STX.blocks, out, pos + A.blocks);
  copy64(stx, STX.atime, out, pos + A.atime);
  copy64(stx, STX.mtime, out, pos + A.mtime);
  copy64(stx, STX.ctime, out, pos + A.ctime);
  setU32(out, pos + A.atimensec, u32(stx, STX.atime + 8));
  setU32(out, pos + A.mtimensec, u32(stx, STX.mtime + 8));
  setU32(out, pos + A.ctimensec, u32(stx, STX.ctime + 8));
  setU32(out, pos + A.mode, u16(stx, STX.mode));
  setU32(out, pos + A.nlink, u32(stx, STX.nlink));
  setU32(out, pos + A.uid, u32(stx, STX.uid));
  setU32(out, pos + A.gid, u32(stx, STX.gid));
  setU32(out, pos + A.rdev, encodeDev(u32(stx, STX.rdevMajor), u32(stx, STX.rdevMinor)));
  setU32(out, pos + A.blksize, u32(stx, STX.blksize));
  setU32(out, pos + A.flags, flags);
}

/** The kernel's new_encode_dev, which the client decodes with new_decode_dev. */
function encodeDev(major: number, minor: number): number {
  return ((minor & 0xff) | ((major & 0xfff) << 8) | ((minor & ~0xff) << 12)) >>> 0;
}

// Word indices of the statx fields writeAttr reads (struct statx is 8-aligned; x86_64 and
// aarch64 are little-endian, so a u32 word is the field's low half as the byte path reads it).
const SX = {
  blksize: STX.blksize / 4, nlink: STX.nlink / 4, uid: STX.uid / 4, gid: STX.gid / 4, mode: STX.mode / 4,
  ino: STX.ino / 4, size: STX.size / 4, blocks: STX.blocks / 4, atime: STX.atime / 4, ctime: STX.ctime / 4,
  mtime: STX.mtime / 4, rdevMajor: STX.rdevMajor / 4, rdevMinor: STX.rdevMinor / 4,
} as const;
const AW = {
  ino: A.ino / 4, size: A.size / 4, blocks: A.blocks / 4, atime: A.atime / 4, mtime: A.mtime / 4, ctime: A.ctime / 4,
  atimensec: A.atimensec / 4, mtimensec: A.mtimensec / 4, ctimensec: A.ctimensec / 4, mode: A.mode / 4,
  nlink: A.nlink / 4, uid: A.uid / 4, gid: A.gid / 4, rdev: A.rdev / 4, blksize: A.blksize / 4, flags: A.flags / 4,
} as const;

/** writeAttr with 32-bit loads and stores (both buffers 4-aligned, `w` a word index). */
function writeAttrWords(x: Uint32Array, o: Uint32Array, w: number, flags: number): void {
  o[w + AW.ino] = x[SX.ino] as number;
  o[w + AW.ino + 1] = x[SX.ino + 1] as number;
  o[w + AW.size] = x[SX.size] as number;
  o[w + AW.size + 1] = x[SX.size + 1] as number;
  o[w + AW.blocks] = x[SX.blocks] as number;
  o[w + AW.blocks + 1] = x[SX.blocks + 1] as number;
  o[w + AW.atime] = x[SX.atime] as number;
  o[w + AW.atime + 1] = x[SX.atime + 1] as number;
  o[w + AW.mtime] = x[SX.mtime] as number;
  o[w + AW.mtime + 1] = x[SX.mtime + 1] as number;
  o[w + AW.ctime] = x[SX.ctime] as number;
  o[w + AW.ctime + 1] = x[SX.ctime + 1] as number;
  o[w + AW.atimensec] = x[SX.atime + 2] as number;
  o[w + AW.mtimensec] = x[SX.mtime + 2] as number;
  o[w + AW.ctimensec] = x[SX.ctime + 2] as number;
  o[w + AW.mode] = (x[SX.mode] as number) & 0xffff;
  o[w + AW.nlink] = x[SX.nlink] as number;
  o[w + AW.uid] = x[SX.uid] as number;
  o[w + AW.gid] = x[SX.gid] as number;
  o[w + AW.rdev] = encodeDev(x[SX.rdevMajor] as number, x[SX.rdevMinor] as number);
  o[w + AW.blksize] = x[SX.blksize] as number;
  o[w + AW.flags] = flags;
}

/**
 * Fds the inode and handle tables may hold under RLIMIT_NOFILE `limit`: what is left after
 * a reserve for everything else the daemon keeps open (Node's own fds, guest memory
 * regions, eventfds, the sockets), as virtiofsd keeps one. 0: no limit known.
 */
export function fdBudget(limit: number): number {
  if (!(limit > 0)) return 0;
  const reserve = Math.min(1024, Math.max(64, Math.floor(limit / 4)));
  return Math.max(16, limit - reserve);
}

export class FsState {
  readonly inodes: InodeTable;
  readonly handles: HandleTable;
  readonly req: Request;
  readonly reply = new Reply();
  readonly stx = Buffer.alloc(STATX_SIZE);
  readonly log: Logger = logger('fs');
  timeouts: Timeouts;
  /** Negotiated at INIT. */
  submounts = false;
  /** The flags2 word agreed at INIT (InitFlag2 bits); 0 without INIT_EXT. */
  initFlags2 = 0;
  writeback = false;
  /** --inode-file-handles=prefer|mandatory: new inodes keep a file handle, not an fd. */
  private readonly useHandles: boolean;
  private readonly euid = process.geteuid?.() ?? 0;
  private readonly egid = process.getegid?.() ?? 0;

  constructor(readonly rootFd: number, readonly procSelfFd: number, readonly opts: FsOptions, maxRequest: number) {
    this.req = new Request(maxRequest);
    const r = statx(rootFd, EMPTY_NAME, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW, STATX_MASK, this.stx);
    if (r < 0) throw new SysError('statx', -r, 'shared directory (rootFd)');
    if ((u16(this.stx, STX.mode) & 0o170000) !== S_IFDIR) throw new SysError('statx', E.ENOTDIR, 'shared directory (rootFd)');
    // open_by_handle_at refuses an O_PATH fd as its mount fd (EBADF): a real one on the share.
    let mountFd = rootFd;
    if (opts.inodeFileHandles !== 'never') {
      mountFd = openat(rootFd, DOT, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
      if (mountFd < 0) throw new SysError('openat', -mountFd, 'shared directory (for open_by_handle_at)');
    }
    this.inodes = new InodeTable(rootFd, this.stx, { maxFds: fdBudget(opts.fdLimit), mountFd });
    this.handles = new HandleTable(this.inodes);
    this.timeouts = timeoutsFor(opts.cache);
    this.useHandles = opts.inodeFileHandles !== 'never';
  }

  /** statx of an inode itself (never following it) into `this.stx`. */
  statInode(ino: Inode): number {
    return statx(ino.fd, EMPTY_NAME, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW, STATX_MASK, this.stx);
  }

  /** fuse_attr_out from `this.stx` into the reply body; returns the body length. */
  attrOut(): number {
    const out = this.reply.out;
    if (!this.reply.reserve(AttrOutHead.size + Attr.size)) return -E.EIO;
    const p = 16;
    writeU64(out, p + AttrOutHead.off.attrValid, this.timeouts.attr);
    setU32(out, p + AttrOutHead.off.attrValidNsec, 0);
    setU32(out, p + AttrOutHead.off.dummy, 0);
    writeAttr(this.stx, out, p + AttrOutHead.size, 0);
    return AttrOutHead.size + Attr.size;
  }

  /** fuse_entry_out for `ino` (attributes from `this.stx`) at absolute `pos` of `out`. */
  writeEntry(out: Buffer, pos: number, ino: Inode, parent: Inode): void {
    const O = EntryOutHead.off;
    writeU64(out, pos + O.nodeid, ino.nodeid);
    writeU64(out, pos + O.generation, 0);
    writeU64(out, pos + O.entryValid, this.timeouts.entry);
    writeU64(out, pos + O.attrValid, this.timeouts.attr);
    setU32(out, pos + O.entryValidNsec, 0);
    setU32(out, pos + O.attrValidNsec, 0);
    const sub = this.submounts && ino.type === S_IFDIR && ino.mntId !== parent.mntId ? FUSE_ATTR_SUBMOUNT : 0;
    writeAttr(this.stx, out, pos + EntryOutHead.size, sub);
  }

  /** Reply body with one fuse_entry_out. */
  entryOut(ino: Inode, parent: Inode): number {
    if (!this.reply.reserve(ENTRY_OUT_SIZE)) return -E.EIO;
    this.writeEntry(this.reply.out, 16, ino, parent);
    return ENTRY_OUT_SIZE;
  }

  /**
   * Look up one name (NUL-terminated in `name`) under `parent`: adds a lookup to the
   * inode (new or known) and leaves its statx in `this.stx`. Returns the inode or -errno.
   * `dirFd` is the directory to resolve in when the caller holds a better fd for `parent`
   * than its O_PATH one (READDIRPLUS: the handle's own fd, see ops-dir.ts).
   */
  lookupName(parent: Inode, name: Buffer, dirFd = parent.fd): Inode | number {
    const r = statx(dirFd, name, AT_SYMLINK_NOFOLLOW, STATX_MASK, this.stx);
    if (r < 0) return r;
    const ino = this.inodes.find(this.stx);
    if (ino !== undefined) {
      ino.refs++;
      return ino;
    }
    if (this.useHandles && mntIdOf(this.stx) === this.inodes.root.mntId) {
      // No fd at all: the handle finds the inode again when a request needs it. (Between
      // the statx and this call the name may have changed hands; the reopen checks the key.)
      const handle = nameToHandleAt(dirFd, name, 0);
      if (typeof handle !== 'number') return this.inodes.insert(-1, this.stx, parent, name, handle);
      if (this.opts.inodeFileHandles === 'mandatory') return handle;
    }
    const fd = openat(dirFd, name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) return fd;
    return this.adopt(fd, parent, name);
  }

  /**
   * Make an inode of a fresh O_PATH fd (closing it when the inode is already known),
   * found as `name` in `parent` (both null when it has no name to be found by again:
   * a ".." lookup or an O_TMPFILE file keeps its fd for good).
   */
  adopt(fd: number, parent: Inode | null = null, name: Buffer | null = null): Inode | number {
    const r = statx(fd, EMPTY_NAME, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW, STATX_MASK, this.stx);
    if (r < 0) {
      close(fd);
      return r;
    }
    const ino = this.inodes.find(this.stx);
    if (ino !== undefined) {
      close(fd);
      ino.refs++;
      return ino;
    }
    return this.inodes.insert(fd, this.stx, parent, name, null);
  }

  /**
   * Run `fn` with the request's uid/gid as this thread's effective ids (the kernel then
   * checks permissions and sets ownership as for the caller, and drops CAP_FSETID so a
   * write clears setuid/setgid). egid first: after euid leaves 0 we could not change it.
   */
  asCaller(fn: () => number): number {
    const uid = this.req.uid;
    const gid = this.req.gid;
    if (uid === this.euid && gid === this.egid) return fn();
    let r = gid === this.egid ? 0 : setresgidThread(-1, gid, -1);
    if (r < 0) return r;
    r = uid === this.euid ? 0 : setresuidThread(-1, uid, -1);
    if (r < 0) {
      this.restoreIds();
      return r;
    }
    try {
      return fn();
    } finally {
      this.restoreIds();
    }
  }

  private restoreIds(): void {
    const a = setresuidThread(-1, this.euid, -1);
    const b = setresgidThread(-1, this.egid, -1);
    if (a < 0 || b < 0) this.log.error(`could not restore the device thread's credentials (errno ${-(a < 0 ? a : b)})`);
  }
}
