// Operations on names and inodes: LOOKUP, FORGET, BATCH_FORGET, GETATTR, READLINK and
// the namespace changes (MKDIR, MKNOD, SYMLINK, LINK, UNLINK, RMDIR, RENAME, RENAME2).
// Each handler returns the reply body length, -errno, or NO_REPLY. Creation runs with
// the caller's credentials (a security label, --security-label, is then stored with ours);
// the client has already applied its umask to the mode, and the process umask is 0 (see
// fuse-server.ts), unless --posix-acl agreed DONT_MASK: then the caller's umask is applied
// by the host as the parent's default ACL says (asCreator).
import {
  AT_REMOVEDIR, AT_SYMLINK_FOLLOW, AT_SYMLINK_NOFOLLOW, AT_EMPTY_PATH, O_CLOEXEC, O_DIRECTORY, O_NOFOLLOW,
  O_PATH, linkat, mkdirat, mknodat, openat, readlinkat, renameat2, statx, symlinkat, unlinkat, S_IFDIR, S_IFLNK, S_IFMT,
  S_IFREG,
} from '../sys/file-calls.js';
import {
  BatchForgetIn, ForgetIn, ForgetOne, GetattrIn, FUSE_GETATTR_FH, LinkIn, MkdirIn, MknodIn, Rename2In, RenameIn,
  RENAME_EXCHANGE, RENAME_NOREPLACE, RENAME_WHITEOUT,
} from './fuse-abi.js';
import type { Inode } from './inodes.js';
import { NAME_DOT, NAME_DOTDOT, newNameRef, parseEntryName, parseName } from './names.js';
import { NO_REPLY } from './request.js';
import { labelNewEntry, parseCreateExtensions } from './security-label.js';
import { E, EMPTY_NAME, STATX_MASK, type FsState } from './state.js';

const nameA = newNameRef();
const nameB = newNameRef();
const DOTDOT = Buffer.from('..\0');
const readlinkBuf = Buffer.alloc(4097);

/** The inode a request names, or undefined. */
export function inodeOf(s: FsState, nodeid: number): Inode | undefined {
  return s.inodes.get(nodeid);
}

export function lookup(s: FsState): number {
  const req = s.req;
  const parent = s.inodes.get(req.nodeid);
  if (parent === undefined) return s.inodes.missing(s.req.nodeid);
  const r = parseName(req, req.args, nameA);
  if (r < 0) return r;
  let ino: Inode | number;
  if (nameA.kind === NAME_DOT) {
    const e = s.statInode(parent);
    if (e < 0) return e;
    parent.refs++;
    ino = parent;
  } else if (nameA.kind === NAME_DOTDOT) {
    ino = lookupDotDot(s, parent);
  } else {
    ino = s.lookupName(parent, nameA.buf);
  }
  if (typeof ino === 'number') return ino;
  return s.entryOut(ino, parent);
}

/** ".." of the root is the root; the parent of any other directory, unless it is the root. */
function lookupDotDot(s: FsState, parent: Inode): Inode | number {
  const root = s.inodes.root;
  if (parent === root) {
    const e = s.statInode(root);
    if (e < 0) return e;
    root.refs++;
    return root;
  }
  const fd = openat(parent.fd, DOTDOT, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) return fd;
  return s.adopt(fd);
}

export function forget(s: FsState): number {
  s.inodes.forget(s.req.nodeid, s.req.u64(ForgetIn.off.nlookup));
  return NO_REPLY;
}

export function batchForget(s: FsState): number {
  const req = s.req;
  const count = req.u32(BatchForgetIn.off.count);
  const room = Math.floor((req.argLen - BatchForgetIn.size) / ForgetOne.size);
  if (count > room) s.log.warn(`BATCH_FORGET of ${count} entries carries only ${room}`);
  const n = Math.min(count, room);
  for (let i = 0; i < n; i++) {
    const rel = BatchForgetIn.size + i * ForgetOne.size;
    s.inodes.forget(req.u64(rel + ForgetOne.off.nodeid), req.u64(rel + ForgetOne.off.nlookup));
  }
  return NO_REPLY;
}

export function getattr(s: FsState): number {
  const req = s.req;
  const ino = s.inodes.get(req.nodeid);
  if (ino === undefined) return s.inodes.missing(s.req.nodeid);
  let r: number;
  const h = req.u32(GetattrIn.off.getattrFlags) & FUSE_GETATTR_FH ? s.handles.get(req.u64(GetattrIn.off.fh), req.nodeid) : undefined;
  if (h !== undefined) r = statx(h.fd, EMPTY_NAME, AT_EMPTY_PATH, STATX_MASK, s.stx);
  else r = s.statInode(ino);
  if (r < 0) return r;
  return s.attrOut();
}

export function readlink(s: FsState): number {
  const ino = s.inodes.get(s.req.nodeid);
  if (ino === undefined) return s.inodes.missing(s.req.nodeid);
  if (ino.type !== S_IFLNK) return -E.EINVAL;
  const n = readlinkat(ino.fd, EMPTY_NAME, readlinkBuf, readlinkBuf.length);
  if (n < 0) return n;
  if (n >= readlinkBuf.length) return -E.ENAMETOOLONG;
  if (!s.reply.reserve(n)) return -E.ERANGE;
  readlinkBuf.copy(s.reply.out, 16, 0, n);
  return n;
}

/** After a successful create-like call: look the new name up and answer its entry. */
function entryAfterCreate(s: FsState, parent: Inode, name: Buffer): number {
  const ino = s.lookupName(parent, name);
  if (typeof ino === 'number') return ino;
  return s.entryOut(ino, parent);
}

export function mkdir(s: FsState): number {
  const req = s.req;
  const parent = s.inodes.get(req.nodeid);
  if (parent === undefined) return s.inodes.missing(s.req.nodeid);
  let r = parseEntryName(req, req.args + MkdirIn.size, nameA);
  if (r < 0) return r;
  r = parseCreateExtensions(s, nameA.next);
  if (r < 0) return r;
  const mode = req.u32(MkdirIn.off.mode) & 0o7777;
  const e = s.asCreator(req.u32(MkdirIn.off.umask), () => mkdirat(parent.fd, nameA.buf, mode));
  if (e < 0) return e;
  r = labelNewEntry(s, parent.fd, nameA.buf, S_IFDIR);
  if (r < 0) return r;
  return entryAfterCreate(s, parent, nameA.buf);
}

export function mknod(s: FsState): number {
  const req = s.req;
  const parent = s.inodes.get(req.nodeid);
  if (parent === undefined) return s.inodes.missing(s.req.nodeid);
  let r = parseEntryName(req, req.args + MknodIn.size, nameA);
  if (r < 0) return r;
  r = parseCreateExtensions(s, nameA.next);
  if (r < 0) return r;
  const mode = req.u32(MknodIn.off.mode);
  const rdev = req.u32(MknodIn.off.rdev);
  // The client sends new_encode_dev(); glibc's dev_t is makedev(major, minor).
  const major = (rdev >>> 8) & 0xfff;
  const minor = (rdev & 0xff) | ((rdev >>> 12) & 0xfff00);
  const dev = ((major & 0xfff) << 8) | (minor & 0xff) | ((minor & ~0xff) << 12);
  const e = s.asCreator(req.u32(MknodIn.off.umask), () => mknodat(parent.fd, nameA.buf, mode, dev >>> 0));
  if (e < 0) return e;
  r = labelNewEntry(s, parent.fd, nameA.buf, (mode & S_IFMT) === 0 ? S_IFREG : mode & S_IFMT);
  if (r < 0) return r;
  return entryAfterCreate(s, parent, nameA.buf);
}

export function symlink(s: FsState): number {
  const req = s.req;
  const parent = s.inodes.get(req.nodeid);
  if (parent === undefined) return s.inodes.missing(s.req.nodeid);
  // SYMLINK carries the new name, then the target.
  let r = parseEntryName(req, req.args, nameA);
  if (r < 0) return r;
  const tEnd = req.strEnd(nameA.next);
  if (tEnd < 0 || tEnd === nameA.next) return -E.EINVAL;
  const target = req.buf.subarray(nameA.next, tEnd + 1);
  r = parseCreateExtensions(s, tEnd + 1);
  if (r < 0) return r;
  const e = s.asCaller(() => symlinkat(target, parent.fd, nameA.buf));
  if (e < 0) return e;
  r = labelNewEntry(s, parent.fd, nameA.buf, S_IFLNK);
  if (r < 0) return r;
  return entryAfterCreate(s, parent, nameA.buf);
}

export function link(s: FsState): number {
  const req = s.req;
  const parent = s.inodes.get(req.nodeid);
  const old = s.inodes.get(req.u64(LinkIn.off.oldnodeid));
  if (parent === undefined || old === undefined) return -E.ENOENT;
  const r = parseEntryName(req, req.args + LinkIn.size, nameA);
  if (r < 0) return r;
  // Linking through the /proc/self/fd magic link needs no CAP_DAC_READ_SEARCH (which
  // AT_EMPTY_PATH would) and still names the inode itself, symlinks included.
  const e = s.asCaller(() => linkat(s.procSelfFd, old.procName, parent.fd, nameA.buf, AT_SYMLINK_FOLLOW));
  if (e < 0) return e;
  const st = statx(old.fd, EMPTY_NAME, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW, STATX_MASK, s.stx);
  if (st < 0) return st;
  old.refs++;
  return s.entryOut(old, parent);
}

export function unlink(s: FsState): number {
  return remove(s, 0);
}

export function rmdir(s: FsState): number {
  return remove(s, AT_REMOVEDIR);
}

function remove(s: FsState, flags: number): number {
  const req = s.req;
  const parent = s.inodes.get(req.nodeid);
  if (parent === undefined) return s.inodes.missing(s.req.nodeid);
  const r = parseEntryName(req, req.args, nameA);
  if (r < 0) return r;
  const gone = nameHolder(s, parent, nameA.buf);
  const e = unlinkat(parent.fd, nameA.buf, flags);
  if (e === 0 && gone !== undefined) s.inodes.unnamed(gone);
  return e;
}

/**
 * The known inode whose way back is `name` in `dir`, given an fd now: once the name is
 * gone (UNLINK, or RENAME over it) it could not be found again, so it keeps that fd until
 * the guest forgets it (an unlinked file the guest still uses; another hard link).
 */
function nameHolder(s: FsState, dir: Inode, name: Buffer): Inode | undefined {
  if (statx(dir.fd, name, AT_SYMLINK_NOFOLLOW, STATX_MASK, s.stx) < 0) return undefined;
  const ino = s.inodes.find(s.stx);
  if (ino === undefined || ino.parent !== dir || ino.name === null || !ino.name.equals(name)) return undefined;
  return s.inodes.use(ino) < 0 ? undefined : ino;
}

export function rename(s: FsState): number {
  return doRename(s, s.req.u64(RenameIn.off.newdir), 0, RenameIn.size);
}

export function rename2(s: FsState): number {
  const flags = s.req.u32(Rename2In.off.flags);
  if (flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE | RENAME_WHITEOUT)) return -E.EINVAL;
  return doRename(s, s.req.u64(Rename2In.off.newdir), flags, Rename2In.size);
}

function doRename(s: FsState, newdir: number, flags: number, fixed: number): number {
  const req = s.req;
  const from = s.inodes.get(req.nodeid);
  const to = s.inodes.get(newdir);
  if (from === undefined || to === undefined) return -E.ENOENT;
  let r = parseEntryName(req, req.args + fixed, nameA);
  if (r < 0) return r;
  r = parseEntryName(req, nameA.next, nameB);
  if (r < 0) return r;
  // RENAME_WHITEOUT creates a whiteout device node: the kernel wants CAP_MKNOD, which
  // we keep; the plain forms need no caller identity beyond what the client checked.
  const replaced = flags & RENAME_EXCHANGE ? undefined : nameHolder(s, to, nameB.buf);
  r = renameat2(from.fd, nameA.buf, to.fd, nameB.buf, flags);
  if (r < 0) return r;
  // Known inodes are found again by parent and name once their fds are evicted: follow them.
  followRename(s, to, nameB.buf);
  if (flags & RENAME_EXCHANGE) followRename(s, from, nameA.buf);
  if (replaced !== undefined) s.inodes.unnamed(replaced);
  return 0;
}

function followRename(s: FsState, dir: Inode, name: Buffer): void {
  if (statx(dir.fd, name, AT_SYMLINK_NOFOLLOW, STATX_MASK, s.stx) < 0) return;
  const ino = s.inodes.find(s.stx);
  if (ino !== undefined) s.inodes.moved(ino, dir, name);
}

