// Attributes and file-system-wide requests: SETATTR, STATFS, ACCESS, SYNCFS and the
// extended attributes. Inode-level calls go through the O_PATH fd (AT_EMPTY_PATH) or
// the /proc/self/fd magic link of the inode, so no path is ever resolved on the host.
import {
  AT_EMPTY_PATH, AT_SYMLINK_NOFOLLOW, O_CLOEXEC, O_DIRECTORY, O_NONBLOCK, O_RDONLY, O_WRONLY, S_IFDIR, S_IFLNK,
  S_IFREG, STATFS_SIZE, STX, close, fchmod, fchmodat, fchown, fchownat, fgetxattr, flistxattr, fremovexattr,
  fsetxattr, fstatfs, ftruncate, futimens, getxattrAt, listxattrAt, openat, removexattrAt, setxattrAt, syncfs,
  utimensat,
} from '../sys/file-calls.js';
import {
  FATTR, FUSE_SETXATTR_ACL_KILL_SGID, GetxattrIn, GetxattrOut, Kstatfs, SETXATTR_IN_COMPAT_SIZE, SetattrIn, SetxattrIn, AccessIn,
} from './fuse-abi.js';
import { ACL_ACCESS, ACL_NONE, aclKind, dropAclNames, setAclAsCaller } from './acl.js';
import { newNameRef } from './names.js';
import { E, type FsState } from './state.js';
import { XATTR_NAME_MAX } from './xattr-map.js';
import { u16, u32 } from '../le-bytes.js';

const times = Buffer.alloc(32);
const statfsBuf = Buffer.alloc(STATFS_SIZE);
const nameA = newNameRef();
const UTIME_NOW = (1 << 30) - 1;
const UTIME_OMIT = (1 << 30) - 2;
const ID_UNCHANGED = 0xffffffff;

export function setattr(s: FsState): number {
  const req = s.req;
  const ino = s.inodes.get(req.nodeid);
  if (ino === undefined) return s.inodes.missing(s.req.nodeid);
  const S = SetattrIn.off;
  const valid = req.u32(S.valid);
  const h = valid & FATTR.FH ? s.handles.get(req.u64(S.fh), req.nodeid) : undefined;
  const fd = h?.fd ?? -1;
  let r: number;
  if (valid & FATTR.MODE) {
    const mode = req.u32(S.mode) & 0o7777;
    if (fd >= 0) r = fchmod(fd, mode);
    else if (ino.type === S_IFLNK) r = -E.EOPNOTSUPP;
    else r = fchmodat(s.procSelfFd, ino.procName, mode, 0);
    if (r < 0) return r;
  }
  if (valid & (FATTR.UID | FATTR.GID)) {
    // The guest's ids as the host's (--translate-uid/gid); a forbid-guest id is EPERM.
    const uid = valid & FATTR.UID ? s.hostUid(req.u32(S.uid)) : ID_UNCHANGED;
    if (uid < 0) return uid;
    const gid = valid & FATTR.GID ? s.hostGid(req.u32(S.gid)) : ID_UNCHANGED;
    if (gid < 0) return gid;
    r = fd >= 0 ? fchown(fd, uid, gid) : fchownat(ino.fd, '', uid, gid, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW);
    if (r < 0) return r;
  }
  if (valid & FATTR.SIZE) {
    if (req.u64Big(S.size)) return -E.EFBIG;
    const size = req.u64(S.size);
    // FATTR_KILL_SUIDGID (HANDLE_KILLPRIV_V2, a truncater without CAP_FSETID): the kernel's
    // rule for a truncation, applied by us (the host would not: we hold CAP_FSETID).
    const kill = (valid & FATTR.KILL_SUIDGID) !== 0;
    if (fd >= 0) {
      r = ftruncate(fd, size);
      if (r >= 0 && kill) r = s.killSuidgid(fd);
    } else {
      if (ino.type !== S_IFREG) return ino.type === S_IFDIR ? -E.EISDIR : -E.EINVAL;
      const wfd = openat(s.procSelfFd, ino.procName, O_WRONLY | O_CLOEXEC);
      if (wfd < 0) return wfd;
      r = ftruncate(wfd, size);
      if (r >= 0 && kill) r = s.killSuidgid(wfd);
      close(wfd);
    }
    if (r < 0) return r;
  }
  if (valid & (FATTR.ATIME | FATTR.MTIME | FATTR.ATIME_NOW | FATTR.MTIME_NOW)) {
    setTime(times, 0, valid & FATTR.ATIME_NOW, valid & FATTR.ATIME, req.bigU64(S.atime), req.u32(S.atimensec));
    setTime(times, 16, valid & FATTR.MTIME_NOW, valid & FATTR.MTIME, req.bigU64(S.mtime), req.u32(S.mtimensec));
    if (fd >= 0) r = futimens(fd, times);
    else if (ino.type === S_IFLNK) r = utimensat(ino.fd, '', times, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW);
    else r = utimensat(s.procSelfFd, ino.procName, times, 0);
    if (r < 0) return r;
  }
  r = s.statInode(ino);
  if (r < 0) return r;
  return s.attrOut();
}

/** One struct timespec for utimensat; the client's u64 seconds are a signed time_t (pre-1970 is negative). */
function setTime(buf: Buffer, pos: number, now: number, set: number, sec: bigint, nsec: number): void {
  buf.writeBigInt64LE(now || !set ? 0n : BigInt.asIntN(64, sec), pos);
  buf.writeBigInt64LE(BigInt(now ? UTIME_NOW : set ? nsec : UTIME_OMIT), pos + 8);
}

export function statfs(s: FsState): number {
  const ino = s.inodes.get(s.req.nodeid) ?? s.inodes.root;
  if (!s.reply.reserve(Kstatfs.size)) return -E.EIO;
  const r = fstatfs(ino.fd, statfsBuf);
  if (r < 0) return r;
  const w = (i: number): bigint => statfsBuf.readBigUInt64LE(i * 8);
  // struct statfs words: type, bsize, blocks, bfree, bavail, files, ffree, fsid, namelen, frsize, flags.
  Kstatfs.encode(s.reply.out, 16, {
    blocks: w(2), bfree: w(3), bavail: w(4), files: w(5), ffree: w(6),
    bsize: Number(w(1)), namelen: Number(w(8)), frsize: Number(w(9)),
  });
  return Kstatfs.size;
}

/** ACCESS: the permission bits as the kernel would check them for the caller. */
export function access(s: FsState): number {
  const req = s.req;
  const ino = s.inodes.get(req.nodeid);
  if (ino === undefined) return s.inodes.missing(s.req.nodeid);
  const mask = req.u32(AccessIn.off.mask) & 7;
  const r = s.statInode(ino);
  if (r < 0) return r;
  if (mask === 0) return 0;
  const mode = u16(s.stx, STX.mode);
  if (req.uid === 0) {
    if ((mask & 1) === 0 || (mode & 0o170000) === S_IFDIR || (mode & 0o111) !== 0) return 0;
    return -E.EACCES;
  }
  let bits: number;
  // The caller's ids are the guest's: compare them with the owner as the guest sees it.
  if (req.uid === s.guestUid(u32(s.stx, STX.uid))) bits = (mode >> 6) & 7;
  else if (req.gid === s.guestGid(u32(s.stx, STX.gid))) bits = (mode >> 3) & 7;
  else bits = mode & 7;
  return (bits & mask) === mask ? 0 : -E.EACCES;
}

export function syncfsOp(s: FsState): number {
  const known = s.inodes.get(s.req.nodeid);
  // Only directories and regular files are reopened (never a device node or fifo).
  const ino = known !== undefined && (known.type === S_IFDIR || known.type === S_IFREG) ? known : s.inodes.root;
  // syncfs() refuses O_PATH fds: reopen the inode (a directory or a file) for it.
  const flags = (ino.type === S_IFDIR ? O_DIRECTORY : 0) | O_RDONLY | O_NONBLOCK | O_CLOEXEC;
  const fd = openat(s.procSelfFd, ino.procName, flags);
  if (fd < 0) return fd;
  const r = syncfs(fd);
  close(fd);
  return r;
}

// ---- extended attributes (only with --xattr; the dispatcher answers ENOSYS otherwise) ----
// Regular files and directories are reopened read-only through /proc/self/fd and use
// the f*xattr calls; other types (symlinks, fifos, sockets, devices) must not be opened,
// so they go through the *xattrat syscalls on the inode's /proc/self/fd magic link.
// With --xattrmap, names from the guest are translated before the call and host lists
// are filtered after it (src/fs/xattr-map.ts); without one, names pass untouched.

/** xattrFd() result for types that use the *xattrat calls on the O_PATH fd. */
const SPECIAL = -0x10000;
/** The host name of the request's attribute: nameA's bytes, or its mapping in `mapped`. */
const mapped = Buffer.alloc(XATTR_NAME_MAX + 1);
let hostName: Buffer = mapped;
/** A whole host list (XATTR_LIST_MAX) for the map to filter; allocated with the first mapped LISTXATTR. */
let listScratch: Buffer | undefined;
const XATTR_LIST_MAX = 65536;

function xattrFd(s: FsState, type: number, procName: Buffer): number {
  if (type !== S_IFREG && type !== S_IFDIR) return SPECIAL;
  return openat(s.procSelfFd, procName, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
}

/** Attribute names may hold any byte but NUL ("user.a/b" is valid): no component check. */
function parseXattrName(s: FsState, pos: number): number {
  const nul = s.req.strEnd(pos);
  if (nul < 0 || nul === pos) return -E.EINVAL;
  if (nul - pos > XATTR_NAME_MAX) return -E.ERANGE;
  nameA.buf = s.req.buf.subarray(pos, nul + 1);
  nameA.next = nul + 1;
  return mapName(s, nameA.buf, nul - pos);
}

/**
 * Set `hostName` to the host's name for the guest's `name` (NUL-terminated, `len` bytes
 * before the NUL): the same bytes without --xattrmap, else the map's answer (-EPERM for
 * a bad name, -EOPNOTSUPP for an unsupported one).
 */
export function mapName(s: FsState, name: Buffer, len: number): number {
  const map = s.opts.xattrmap;
  if (map === null) {
    hostName = name;
    return 0;
  }
  const n = map.mapClient(name, len, mapped);
  if (n < 0) return n;
  hostName = mapped.subarray(0, n + 1);
  return 0;
}

function special(r: number): number {
  return r === -E.ENOSYS ? -E.EOPNOTSUPP : r;
}

export function getxattr(s: FsState): number {
  const req = s.req;
  const ino = s.inodes.get(req.nodeid);
  if (ino === undefined) return s.inodes.missing(s.req.nodeid);
  let r = parseXattrName(s, req.args + GetxattrIn.size);
  if (r < 0) return r;
  if (!s.posixAcl && aclKind(nameA.buf) !== ACL_NONE) return -E.EOPNOTSUPP;
  const size = req.u32(GetxattrIn.off.size);
  const room = size === 0 ? 0 : s.reply.room(size);
  if (!s.reply.reserve(size === 0 ? GetxattrOut.size : room)) return -E.ERANGE;
  const value = size === 0 ? null : s.reply.out.subarray(16, 16 + room);
  const fd = xattrFd(s, ino.type, ino.procName);
  if (fd < 0 && fd !== SPECIAL) return fd;
  if (fd >= 0) {
    r = fgetxattr(fd, hostName, value, room);
    close(fd);
  } else {
    r = special(getxattrAt(s.procSelfFd, ino.procName, 0, hostName, value, room));
  }
  if (r < 0) return r;
  return size === 0 ? sizeOut(s, r) : r;
}

export function listxattr(s: FsState): number {
  const req = s.req;
  const ino = s.inodes.get(req.nodeid);
  if (ino === undefined) return s.inodes.missing(s.req.nodeid);
  const size = req.u32(GetxattrIn.off.size);
  const room = size === 0 ? 0 : s.reply.room(size);
  if (!s.reply.reserve(size === 0 ? GetxattrOut.size : room)) return -E.ERANGE;
  const map = s.opts.xattrmap;
  // With a map the whole host list is read (the guest's list is shorter or longer than
  // the host's, and a size query must answer what the listing will return).
  let list: Buffer | null;
  let listRoom: number;
  if (map === null) {
    list = size === 0 ? null : s.reply.out.subarray(16, 16 + room);
    listRoom = room;
  } else {
    listScratch ??= Buffer.alloc(XATTR_LIST_MAX);
    list = listScratch;
    listRoom = listScratch.length;
  }
  const fd = xattrFd(s, ino.type, ino.procName);
  if (fd < 0 && fd !== SPECIAL) return fd;
  let r: number;
  if (fd >= 0) {
    r = flistxattr(fd, list, listRoom);
    close(fd);
  } else {
    r = special(listxattrAt(s.procSelfFd, ino.procName, 0, list, listRoom));
  }
  if (r < 0) return r;
  if (map !== null && list !== null) {
    r = size === 0 ? map.mapServerList(list, r, null, 0, 0) : map.mapServerList(list, r, s.reply.out, 16, room);
    if (r < 0) return r;
  }
  // Without --posix-acl the ACL names are not shown (a size query may then overstate a little).
  if (size !== 0 && !s.posixAcl) r = dropAclNames(s.reply.out.subarray(16, 16 + room), r);
  return size === 0 ? sizeOut(s, r) : r;
}

function sizeOut(s: FsState, n: number): number {
  GetxattrOut.encode(s.reply.out, 16, { size: n });
  return GetxattrOut.size;
}

/** Set an attribute (host name) on an inode given by type and /proc/self/fd name; 0 or -errno. */
export function setXattrOf(s: FsState, type: number, procName: Buffer, name: Buffer, value: Buffer, size: number, flags: number): number {
  const fd = xattrFd(s, type, procName);
  if (fd < 0 && fd !== SPECIAL) return fd;
  let r: number;
  if (fd >= 0) {
    r = fsetxattr(fd, name, value, size, flags);
    close(fd);
  } else {
    r = special(setxattrAt(s.procSelfFd, procName, 0, name, value, size, flags));
  }
  return r < 0 ? r : 0;
}

export function setxattr(s: FsState): number {
  const req = s.req;
  const ino = s.inodes.get(req.nodeid);
  if (ino === undefined) return s.inodes.missing(s.req.nodeid);
  // fuse_setxattr_in is 16 bytes once SETXATTR_EXT is agreed (with --posix-acl), 8 before.
  const r = parseXattrName(s, req.args + (s.posixAcl ? SetxattrIn.size : SETXATTR_IN_COMPAT_SIZE));
  if (r < 0) return r;
  if (!s.posixAcl && aclKind(nameA.buf) !== ACL_NONE) return -E.EOPNOTSUPP;
  const size = req.u32(SetxattrIn.off.size);
  if (nameA.next + size > req.end) return -E.EINVAL;
  const value = req.buf.subarray(nameA.next, nameA.next + size);
  const flags = req.u32(SetxattrIn.off.flags);
  const acl = aclKind(hostName);
  if (acl === ACL_NONE) return setXattrOf(s, ino.type, ino.procName, hostName, value, size, flags);
  // An ACL on the host: set as the caller (see acl.ts), setgid as the client decided.
  const fd = xattrFd(s, ino.type, ino.procName);
  if (fd < 0 && fd !== SPECIAL) return fd;
  const name = hostName;
  const set = (): number => (fd >= 0 ? fsetxattr(fd, name, value, size, flags)
    : special(setxattrAt(s.procSelfFd, ino.procName, 0, name, value, size, flags)));
  const kill = acl === ACL_ACCESS && (req.u32(SetxattrIn.off.setxattrFlags) & FUSE_SETXATTR_ACL_KILL_SGID) !== 0;
  const e = setAclAsCaller(s, ino, fd >= 0 ? fd : -1, acl, kill, set);
  if (fd >= 0) close(fd);
  return e < 0 ? e : 0;
}

export function removexattr(s: FsState): number {
  const req = s.req;
  const ino = s.inodes.get(req.nodeid);
  if (ino === undefined) return s.inodes.missing(s.req.nodeid);
  let r = parseXattrName(s, req.args);
  if (r < 0) return r;
  if (!s.posixAcl && aclKind(nameA.buf) !== ACL_NONE) return -E.EOPNOTSUPP;
  const fd = xattrFd(s, ino.type, ino.procName);
  if (fd < 0 && fd !== SPECIAL) return fd;
  const name = hostName;
  const acl = aclKind(name);
  const remove = (): number => (fd >= 0 ? fremovexattr(fd, name) : special(removexattrAt(s.procSelfFd, ino.procName, 0, name)));
  r = acl === ACL_NONE ? remove() : setAclAsCaller(s, ino, fd >= 0 ? fd : -1, acl, false, remove);
  if (fd >= 0) close(fd);
  return r < 0 ? r : 0;
}

/** The host name mapName() chose (valid until the next mapName). */
export function mappedName(): Buffer {
  return hostName;
}
