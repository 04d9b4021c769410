// The state one FUSE session's operations share (inode/handle tables, scratch buffers,
// negotiated features, the request being served) and the helpers most operations use:
// statx into a reusable buffer, fuse_attr/fuse_entry_out encoding, lookup of one name
// under a parent inode, and running a call with the caller's credentials.
import { constants as osConstants } from 'node:os';
import {
  AT_EMPTY_PATH, AT_SYMLINK_NOFOLLOW, O_CLOEXEC, O_DIRECTORY, O_NOFOLLOW, O_PATH, O_RDONLY, STATX_BASIC_STATS, STATX_MNT_ID,
  STATX_SIZE, STX, S_IFDIR, S_IFMT, S_IFREG, S_ISGID, S_ISUID, close, fchmod, nameToHandleAt, openat, statx,
} from '../sys/file-calls.js';
import { clearGroupsThread, setUmask, setgroupsThread, setresgidThread, setresuidThread } from '../sys/cred-calls.js';
import { SysError } from '../sys/libc.js';
import type { FsOptions } from './options.js';
import { Attr, AttrOutHead, ENTRY_OUT_SIZE, EntryOutHead, FUSE_ATTR_SUBMOUNT, FUSE_EXT_GROUPS, InitFlag2, SuppGroupsHead } from './fuse-abi.js';
import { compileIdMap, type IdMap } from './id-map.js';
import { EXT_ABSENT, extensionPayloadLength, findExtension } from './request-ext.js';
import { InodeTable, mntIdOf, type Inode } from './inodes.js';
import { HandleTable } from './handle-table.js';
import { Reply, Request } from './request.js';
import { logger, type Logger } from '../log.js';
import { u16, u32, setU32 } from '../le-bytes.js';

export const E = osConstants.errno;
export const STATX_MASK = STATX_BASIC_STATS | STATX_MNT_ID;
export const EMPTY_NAME = Buffer.from([0]);
const DOT = Buffer.from('.\0');
const A = Attr.off;
/** Most supplementary groups a request may carry (Linux's NGROUPS_MAX, as virtiofsd checks). */
const MAX_SUPP_GROUPS = 65536;

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
  /** --translate-uid/--translate-gid, compiled; undefined without rules (nothing is translated). */
  readonly uidMap: IdMap | undefined;
  readonly gidMap: IdMap | undefined;
  /** Supplementary groups of the request being run as its caller (setgroups list, u32 each). */
  private groupsBuf = Buffer.alloc(64);
  /** POSIX_ACL, DONT_MASK and SETXATTR_EXT agreed (--posix-acl): they come as one. */
  posixAcl = false;
  /** HANDLE_KILLPRIV_V2 agreed (--killpriv-v2). */
  killprivV2 = false;
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
    this.uidMap = compileIdMap(opts.translateUid);
    this.gidMap = compileIdMap(opts.translateGid);
  }

  /** The guest's view of the owner in the fuse_attr at `attrPos` (host -> guest translation). */
  private guestIds(out: Buffer, attrPos: number): void {
    if (this.uidMap !== undefined) setU32(out, attrPos + A.uid, this.uidMap.toGuest(u32(out, attrPos + A.uid)));
    if (this.gidMap !== undefined) setU32(out, attrPos + A.gid, this.gidMap.toGuest(u32(out, attrPos + A.gid)));
  }

  /** A guest uid as the host's: -EPERM when a forbid-guest rule covers it. */
  hostUid(guestUid: number): number {
    if (this.uidMap === undefined) return guestUid;
    const id = this.uidMap.toHost(guestUid);
    return id < 0 ? -E.EPERM : id;
  }

  hostGid(guestGid: number): number {
    if (this.gidMap === undefined) return guestGid;
    const id = this.gidMap.toHost(guestGid);
    return id < 0 ? -E.EPERM : id;
  }

  /** A host uid/gid as the guest sees it. */
  guestUid(hostUid: number): number {
    return this.uidMap === undefined ? hostUid : this.uidMap.toGuest(hostUid);
  }

  guestGid(hostGid: number): number {
    return this.gidMap === undefined ? hostGid : this.gidMap.toGuest(hostGid);
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
    if (this.uidMap !== undefined || this.gidMap !== undefined) this.guestIds(out, p + AttrOutHead.size);
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
    if (this.uidMap !== undefined || this.gidMap !== undefined) this.guestIds(out, pos + EntryOutHead.size);
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
   * Run `fn` with the request's uid/gid (translated guest -> host) as this thread's
   * effective ids (the kernel then checks permissions and sets ownership as for the
   * caller, and drops CAP_FSETID so a write clears setuid/setgid), plus the supplementary
   * group the kernel sent with a create (CREATE_SUPP_GROUP: the parent directory's group
   * when the caller is a member only through its supplementary groups), so that the host
   * decides as it would for that caller (a setgid bit kept on a new file of that group).
   * setgroups and egid first: once euid leaves 0 the thread has no CAP_SETGID.
   */
  asCaller(fn: () => number): number {
    const uid = this.hostUid(this.req.uid);
    if (uid < 0) return this.forbidden('uid', this.req.uid);
    const gid = this.hostGid(this.req.gid);
    if (gid < 0) return this.forbidden('gid', this.req.gid);
    const groups = this.req.extFrom < this.req.extEnd && (this.initFlags2 & InitFlag2.CREATE_SUPP_GROUP) !== 0 ? this.loadGroups() : 0;
    if (groups < 0) return groups;
    if (uid === this.euid && gid === this.egid && groups === 0) return fn();
    let r = groups > 0 ? setgroupsThread(groups, this.groupsBuf) : 0;
    if (r < 0) return r;
    r = gid === this.egid ? 0 : setresgidThread(-1, gid, -1);
    if (r < 0) {
      this.restoreIds(groups > 0);
      return r;
    }
    r = uid === this.euid ? 0 : setresuidThread(-1, uid, -1);
    if (r < 0) {
      this.restoreIds(groups > 0);
      return r;
    }
    try {
      return fn();
    } finally {
      this.restoreIds(groups > 0);
    }
  }

  private forbidden(what: string, id: number): number {
    this.log.warn(`request as guest ${what} ${id} refused: a forbid-guest rule of --translate-${what} covers it`);
    return -E.EPERM;
  }

  /**
   * The request's fuse_supp_groups record into groupsBuf (translated guest -> host).
   * Returns the number of groups (0: no record), or -errno for a record that does not
   * hold what its count says or a forbidden gid.
   */
  private loadGroups(): number {
    const req = this.req;
    const at = findExtension(req, FUSE_EXT_GROUPS);
    if (at === EXT_ABSENT) return 0;
    const len = extensionPayloadLength(req, at);
    const n = len >= SuppGroupsHead.size ? u32(req.buf, at + SuppGroupsHead.off.nrGroups) : -1;
    // The record is padded to 8: its length must be what nr_groups needs, rounded up.
    if (n < 0 || n > MAX_SUPP_GROUPS || len !== ((8 + SuppGroupsHead.size + 4 * n + 7) & ~7) - 8) {
      this.log.warn(`malformed fuse_supp_groups record: ${len} bytes for nr_groups ${n}`);
      return -E.EINVAL;
    }
    if (this.groupsBuf.length < 4 * n) this.groupsBuf = Buffer.alloc(4 * n);
    for (let i = 0; i < n; i++) {
      const g = this.hostGid(u32(req.buf, at + SuppGroupsHead.size + 4 * i));
      if (g < 0) return this.forbidden('gid', u32(req.buf, at + SuppGroupsHead.size + 4 * i));
      setU32(this.groupsBuf, 4 * i, g);
    }
    return n;
  }

  /**
   * asCaller for a creation. With DONT_MASK agreed the client leaves the mode unmasked and
   * sends its caller's umask: the host kernel applies it as the ACL rules say (not at all
   * under a default ACL, which is inherited instead), so it is this thread's umask for the
   * call (the serving thread has its own, see unshareFsThread) and 0 again after.
   */
  asCreator(umask: number, fn: () => number): number {
    if (!this.posixAcl) return this.asCaller(fn);
    setUmask(umask & 0o777);
    try {
      return this.asCaller(fn);
    } finally {
      setUmask(0);
    }
  }

  /**
   * Clear setuid/setgid of the regular file open as `fd` as the kernel does for a writer or
   * truncater without CAP_FSETID (the client asked: FUSE_WRITE_KILL_SUIDGID,
   * FATTR_KILL_SUIDGID, FUSE_OPEN_KILL_SUIDGID): setuid always; setgid when group-exec is set
   * or the caller is not in the file's group (the request's gid; its supplementary groups are
   * not known here). Leaves the file's statx in `this.stx`. 0 or -errno.
   */
  killSuidgid(fd: number): number {
    let r = statx(fd, EMPTY_NAME, AT_EMPTY_PATH, STATX_MASK, this.stx);
    if (r < 0) return r;
    const mode = u16(this.stx, STX.mode);
    if ((mode & S_IFMT) !== S_IFREG || (mode & (S_ISUID | S_ISGID)) === 0) return 0;
    let kill = mode & S_ISUID;
    if ((mode & S_ISGID) !== 0 && ((mode & 0o010) !== 0 || this.hostGid(this.req.gid) !== u32(this.stx, STX.gid))) kill |= S_ISGID;
    if (kill === 0) return 0;
    r = fchmod(fd, mode & 0o7777 & ~kill);
    return r < 0 ? r : 0;
  }

  private restoreIds(groups: boolean): void {
    const a = setresuidThread(-1, this.euid, -1);
    const b = setresgidThread(-1, this.egid, -1);
    const c = groups ? clearGroupsThread() : 0;
    if (a < 0 || b < 0 || c < 0) this.log.error(`could not restore the device thread's credentials (errno ${-Math.min(a, b, c)})`);
  }
}
