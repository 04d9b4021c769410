// Open files: OPEN, CREATE, TMPFILE, READ, WRITE, FLUSH, RELEASE, FSYNC, FALLOCATE,
// LSEEK, COPY_FILE_RANGE. Inodes are reopened through /proc/self/fd, never by path.
// READ and WRITE move data between the file and the transport's buffers with
// preadv/pwritev (node's readvSync/writevSync with a position), without a copy.
import fs from 'node:fs';
import {
  AT_EMPTY_PATH, AT_SYMLINK_NOFOLLOW, O_ACCMODE, O_APPEND, O_CLOEXEC, O_CREAT, O_DIRECT, O_EXCL, O_NOATIME, O_NOCTTY, O_NOFOLLOW,
  O_PATH, O_RDONLY, O_RDWR, O_TMPFILE, O_TRUNC, O_WRONLY, STX, S_IFDIR, S_IFLNK, S_IFMT, S_IFREG, close, copyFileRange, dup, fallocate as fallocateCall, fsync as fsyncCall,
  lseek as lseekCall, openat, statx, unlinkat,
} from '../sys/file-calls.js';
import { errnoOf } from '../sys/libc.js';
import {
  CopyFileRangeIn, CreateIn, ENTRY_OUT_SIZE, FOPEN, FUSE_FSYNC_FDATASYNC, FUSE_OPEN_KILL_SUIDGID, FUSE_WRITE_KILL_SUIDGID, FallocateIn,
  FlushIn, FsyncIn, LseekIn, LseekOut, OpenIn, OpenOut, ReadIn, ReleaseIn, WriteIn, WriteOut,
} from './fuse-abi.js';
import { newNameRef, parseEntryName } from './names.js';
import { OUT_HEADER_SIZE } from './request.js';
import { rangesIo } from './ranges-io.js';
import { fdName } from './inodes.js';
import { label, labelFd, parseCreateExtensions } from './security-label.js';
import { E, EMPTY_NAME, STATX_MASK, type FsState } from './state.js';
import { setU32, u16 } from '../le-bytes.js';

const nameA = newNameRef();
const offIn = Buffer.alloc(8);
const offOut = Buffer.alloc(8);
const DOT = Buffer.from('.\0');

/** Client open flags -> host open flags, per --writeback and --allow-direct-io. */
export function hostOpenFlags(s: FsState, flags: number): number {
  let f = flags & ~(O_CREAT | O_EXCL | O_NOCTTY | O_NOFOLLOW | O_PATH);
  if (s.writeback) {
    // With a writeback cache the client reads pages of write-only files and handles
    // O_APPEND itself (it sends the write offsets), as virtiofsd does.
    if ((f & O_ACCMODE) === O_WRONLY) f = (f & ~O_ACCMODE) | O_RDWR;
    f &= ~O_APPEND;
  }
  if (!s.opts.allowDirectIo) f &= ~O_DIRECT;
  // O_NOATIME fails with EPERM for a caller who does not own the file, which the guest
  // kernel (judging by its own view of ownership) may not expect; virtiofsd strips it too.
  if (!s.opts.preserveNoatime) f &= ~O_NOATIME;
  return f | O_CLOEXEC;
}

/** FOPEN_* flags for a regular file's open reply, per --cache. */
export function fopenFlags(s: FsState, flags: number): number {
  switch (s.opts.cache) {
    case 'never':
    case 'metadata':
      return FOPEN.DIRECT_IO;
    case 'always':
      return FOPEN.KEEP_CACHE;
    default:
      return s.opts.allowDirectIo && (flags & O_DIRECT) !== 0 ? FOPEN.DIRECT_IO : 0;
  }
}

function writesAccess(flags: number): boolean {
  return (flags & O_ACCMODE) !== O_RDONLY || (flags & O_TRUNC) !== 0;
}

function openOut(s: FsState, pos: number, fh: number, openFlags: number): void {
  const out = s.reply.out;
  setU32(out, pos + OpenOut.off.fh, fh >>> 0);
  setU32(out, pos + OpenOut.off.fh + 4, Math.floor(fh / 0x100000000));
  setU32(out, pos + OpenOut.off.openFlags, openFlags);
  setU32(out, pos + OpenOut.off.padding, 0);
}

export function open(s: FsState): number {
  const req = s.req;
  const ino = s.inodes.get(req.nodeid);
  if (ino === undefined) return s.inodes.missing(s.req.nodeid);
  const flags = req.u32(OpenIn.off.flags);
  if (s.opts.readonly && writesAccess(flags)) return -E.EROFS;
  if (!s.reply.reserve(OpenOut.size)) return -E.EIO;
  // A FUSE client opens fifos, sockets and device nodes itself (init_special_inode) and
  // directories with OPENDIR: OPEN only ever names a regular file. Refusing the rest keeps
  // a hostile guest from opening a host device node it created in the share, or from
  // blocking the device thread on a fifo without a writer.
  if (ino.type !== S_IFREG) return ino.type === S_IFDIR ? -E.EISDIR : -E.ENXIO;
  const hf = hostOpenFlags(s, flags);
  // With ATOMIC_O_TRUNC the truncation happens here: open as the caller so that, like a
  // truncation by the host kernel for a caller without CAP_FSETID, it clears setuid/setgid.
  const fd = (flags & O_TRUNC) !== 0 ? openAsCaller(s, ino.procName, hf, flags) : openat(s.procSelfFd, ino.procName, hf);
  if (fd < 0) return fd;
  // HANDLE_KILLPRIV_V2: the client asks for the kernel's rule, which the open above applied
  // only for a caller who is not root here (root keeps CAP_FSETID on the host).
  const r = killOnTrunc(s, fd, flags, req.u32(OpenIn.off.openFlags));
  if (r < 0) {
    close(fd);
    return r;
  }
  const h = s.handles.add(fd, ino, hf);
  openOut(s, 16, h.fh, fopenFlags(s, flags));
  return OpenOut.size;
}

/** CREATE and TMPFILE: entry + open reply for a new file opened as the caller. */
function createCommon(s: FsState, tmp: boolean): number {
  const req = s.req;
  const parent = s.inodes.get(req.nodeid);
  if (parent === undefined) return s.inodes.missing(s.req.nodeid);
  const flags = req.u32(CreateIn.off.flags);
  const mode = req.u32(CreateIn.off.mode) & 0o7777;
  let name: Buffer = DOT;
  let afterNames: number;
  if (!tmp) {
    // TMPFILE carries a placeholder name ("/" from vfs_tmpfile); CREATE a real one.
    const r = parseEntryName(req, req.args + CreateIn.size, nameA);
    if (r < 0) return r;
    name = nameA.buf;
    afterNames = nameA.next;
  } else {
    const nul = req.strEnd(req.args + CreateIn.size);
    afterNames = nul < 0 ? req.end : nul + 1;
  }
  const x = parseCreateExtensions(s, afterNames);
  if (x < 0) return x;
  if (!s.reply.reserve(ENTRY_OUT_SIZE + OpenOut.size)) return -E.EIO;
  let hf = hostOpenFlags(s, flags);
  if ((hf & O_ACCMODE) === O_RDONLY && tmp) hf |= O_RDWR;
  // A new file is made with O_EXCL: O_CREAT alone would open whatever already has the
  // name, a fifo (blocking this thread for good without a peer) or a device node the
  // guest made with MKNOD, which OPEN refuses. An existing name is opened only as
  // openExisting() allows.
  const hostFlags = tmp ? (hf & ~(O_TRUNC | O_APPEND)) | O_TMPFILE : hf | O_EXCL | O_CREAT | O_NOFOLLOW;
  let fd = s.asCreator(req.u32(CreateIn.off.umask), () => openat(parent.fd, name, hostFlags, mode));
  let pfd = -1;
  if (fd === -E.EEXIST && !tmp && (flags & O_EXCL) === 0) {
    pfd = s.asCaller(() => openat(parent.fd, name, O_PATH | O_NOFOLLOW | O_CLOEXEC));
    if (pfd < 0) return pfd;
    fd = openExisting(s, pfd, hf, flags);
    const r = fd < 0 ? fd : killOnTrunc(s, fd, flags, req.u32(CreateIn.off.openFlags));
    if (r < 0) {
      if (fd >= 0) close(fd);
      close(pfd);
      return r;
    }
  }
  if (fd < 0) return fd;
  if (pfd < 0 && label.present) {
    // A file we made (not an existing one opened): labelled before anyone is told of it.
    const e = labelFd(s, fd);
    if (e < 0) {
      close(fd);
      if (!tmp) unlinkat(parent.fd, name, 0);
      return e;
    }
  }
  // The O_PATH inode is the very file we opened (no second lookup by name to race with).
  if (pfd < 0) pfd = openat(s.procSelfFd, fdName(fd), O_PATH | O_CLOEXEC);
  if (pfd < 0) {
    close(fd);
    return pfd;
  }
  const ino = tmp ? s.adopt(pfd) : s.adopt(pfd, parent, name);
  if (typeof ino === 'number') {
    close(fd);
    return ino;
  }
  const h = s.handles.add(fd, ino, tmp ? hf & ~(O_TRUNC | O_APPEND) : hf);
  s.writeEntry(s.reply.out, 16, ino, parent);
  openOut(s, 16 + ENTRY_OUT_SIZE, h.fh, fopenFlags(s, flags));
  return ENTRY_OUT_SIZE + OpenOut.size;
}

/**
 * CREATE without O_EXCL of a name that exists: open it (as the caller, with `hf`) only
 * when it is a regular file; `pfd` is its O_PATH fd, so what is opened is what was checked.
 * Errors as open(2) with O_CREAT|O_NOFOLLOW gives them, and ENXIO (as OPEN) for the rest.
 */
function openExisting(s: FsState, pfd: number, hf: number, flags: number): number {
  const r = statx(pfd, EMPTY_NAME, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW, STATX_MASK, s.stx);
  if (r < 0) return r;
  const type = u16(s.stx, STX.mode) & S_IFMT;
  if (type !== S_IFREG) return type === S_IFDIR ? -E.EISDIR : type === S_IFLNK ? -E.ELOOP : -E.ENXIO;
  return openAsCaller(s, fdName(pfd), hf, flags);
}

/**
 * Open /proc/self/fd/`procName` with host flags `hf` as the caller (client flags `flags`).
 * When --writeback widened the caller's O_WRONLY to O_RDWR, the caller may be allowed to
 * write the file but not to read it, and the host would refuse the widened open (pjdfstest
 * does not catch it; test/mount-posix.test.ts does). The caller's own write-only open then
 * decides permission and does the O_TRUNC (clearing setuid/setgid as the host does for that
 * user); the read side the client's page cache needs is added by reopening that very file
 * (its fd, not its name) as the daemon.
 */
function openAsCaller(s: FsState, procName: Buffer, hf: number, flags: number): number {
  if ((flags & O_ACCMODE) !== O_WRONLY || (hf & O_ACCMODE) !== O_RDWR) {
    return s.asCaller(() => openat(s.procSelfFd, procName, hf));
  }
  const wfd = s.asCaller(() => openat(s.procSelfFd, procName, (hf & ~O_ACCMODE) | O_WRONLY));
  if (wfd < 0) return wfd;
  const fd = openat(s.procSelfFd, fdName(wfd), hf & ~O_TRUNC);
  close(wfd);
  return fd;
}

/** An O_TRUNC open whose client sent FUSE_OPEN_KILL_SUIDGID: clear setuid/setgid (see killSuidgid). */
function killOnTrunc(s: FsState, fd: number, flags: number, openFlags: number): number {
  if ((flags & O_TRUNC) === 0 || (openFlags & FUSE_OPEN_KILL_SUIDGID) === 0) return 0;
  return s.killSuidgid(fd);
}

export function create(s: FsState): number {
  return createCommon(s, false);
}

export function tmpfile(s: FsState): number {
  return createCommon(s, true);
}

export function read(s: FsState): number {
  const req = s.req;
  const h = s.handles.get(req.u64(ReadIn.off.fh), req.nodeid);
  if (h === undefined) return -E.EBADF;
  if (req.u64Big(ReadIn.off.offset)) return -E.EINVAL;
  const pos = req.u64(ReadIn.off.offset);
  const size = s.reply.room(req.u32(ReadIn.off.size));
  if (size === 0) return 0;
  const t = s.reply.target;
  let n: number;
  if (t !== undefined && t.addressed) {
    // Guest memory by address: no view per descriptor (see IovecList).
    n = rangesIo(h.fd, t, OUT_HEADER_SIZE, OUT_HEADER_SIZE + size, pos, false);
    if (n < 0) return n;
  } else {
    try {
      n = fs.readvSync(h.fd, s.reply.dataIov(size), pos);
    } catch (err) {
      return -errnoOf(err);
    }
  }
  s.reply.dataInPlace = true;
  return n;
}

export function write(s: FsState): number {
  const req = s.req;
  const h = s.handles.get(req.u64(WriteIn.off.fh), req.nodeid);
  if (h === undefined) return -E.EBADF;
  if (s.opts.readonly) return -E.EROFS;
  if (req.u64Big(WriteIn.off.offset)) return -E.EFBIG;
  if (!s.reply.reserve(WriteOut.size)) return -E.EIO;
  const pos = req.u64(WriteIn.off.offset);
  if ((req.u32(WriteIn.off.writeFlags) & FUSE_WRITE_KILL_SUIDGID) !== 0) {
    // The client asks us to clear setuid/setgid as the kernel does before a write by a
    // caller without CAP_FSETID (every such write with HANDLE_KILLPRIV_V2; direct writes
    // without it): one statx, and a chmod only when a bit is set.
    const r = s.killSuidgid(h.fd);
    if (r < 0) return r;
  }
  const n = writePayload(s, h.fd, pos);
  if (n < 0) return n;
  setU32(s.reply.out, 16 + WriteOut.off.size, n);
  setU32(s.reply.out, 16 + WriteOut.off.padding, 0);
  return WriteOut.size;
}

function writePayload(s: FsState, fd: number, pos: number): number {
  const req = s.req;
  const src = req.source;
  if (req.payloadLen === 0 || src === undefined) return 0;
  if (src.addressed) return rangesIo(fd, src, req.payloadFrom, req.payloadFrom + req.payloadLen, pos, true);
  try {
    return fs.writevSync(fd, req.payload, pos);
  } catch (err) {
    return -errnoOf(err);
  }
}

export function flush(s: FsState): number {
  const h = s.handles.get(s.req.u64(FlushIn.off.fh), s.req.nodeid);
  if (h === undefined) return -E.EBADF;
  // Closing a duplicate gives the host file system the close() it may act on (NFS
  // flushes, for one) while our fd stays open for later requests.
  const d = dup(h.fd);
  if (d < 0) return d;
  return close(d);
}

export function release(s: FsState): number {
  s.handles.release(s.req.u64(ReleaseIn.off.fh));
  return 0;
}

export function fsync(s: FsState): number {
  const h = s.handles.get(s.req.u64(FsyncIn.off.fh), s.req.nodeid);
  if (h === undefined) return -E.EBADF;
  return fsyncCall(h.fd, (s.req.u32(FsyncIn.off.fsyncFlags) & FUSE_FSYNC_FDATASYNC) !== 0);
}

export function fallocate(s: FsState): number {
  const req = s.req;
  if (s.opts.readonly) return -E.EROFS;
  const h = s.handles.get(req.u64(FallocateIn.off.fh), req.nodeid);
  if (h === undefined) return -E.EBADF;
  if (req.u64Big(FallocateIn.off.offset) || req.u64Big(FallocateIn.off.length)) return -E.EFBIG;
  return fallocateCall(h.fd, req.u32(FallocateIn.off.mode), req.u64(FallocateIn.off.offset), req.u64(FallocateIn.off.length));
}

export function lseek(s: FsState): number {
  const req = s.req;
  const h = s.handles.get(req.u64(LseekIn.off.fh), req.nodeid);
  if (h === undefined) return -E.EBADF;
  if (req.u64Big(LseekIn.off.offset)) return -E.ENXIO;
  if (!s.reply.reserve(LseekOut.size)) return -E.EIO;
  const r = lseekCall(h.fd, req.u64(LseekIn.off.offset), req.u32(LseekIn.off.whence));
  if (r < 0) return r;
  setU32(s.reply.out, 16, r >>> 0);
  setU32(s.reply.out, 20, Math.floor(r / 0x100000000));
  return LseekOut.size;
}

export function copyFileRangeOp(s: FsState): number {
  const req = s.req;
  if (s.opts.readonly) return -E.EROFS;
  const hin = s.handles.get(req.u64(CopyFileRangeIn.off.fhIn), req.nodeid);
  const hout = s.handles.get(req.u64(CopyFileRangeIn.off.fhOut), req.u64(CopyFileRangeIn.off.nodeidOut));
  if (hin === undefined || hout === undefined) return -E.EBADF;
  if (!s.reply.reserve(WriteOut.size)) return -E.EIO;
  offIn.writeBigUInt64LE(req.bigU64(CopyFileRangeIn.off.offIn));
  offOut.writeBigUInt64LE(req.bigU64(CopyFileRangeIn.off.offOut));
  // The reply's size is 32 bits: copy at most just under 2 GiB per request.
  const len = Math.min(req.u64(CopyFileRangeIn.off.len), 0x7ffff000);
  const flags = Number(req.bigU64(CopyFileRangeIn.off.flags) & 0xffffffffn);
  const n = copyFileRange(hin.fd, offIn, hout.fd, offOut, len, flags);
  if (n < 0) return n;
  setU32(s.reply.out, 16 + WriteOut.off.size, n);
  setU32(s.reply.out, 16 + WriteOut.off.padding, 0);
  return WriteOut.size;
}

