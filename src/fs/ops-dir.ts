// Directories: OPENDIR, READDIR, READDIRPLUS, RELEASEDIR, FSYNCDIR. A directory handle
// is the inode reopened O_RDONLY|O_DIRECTORY through /proc/self/fd; READDIR seeks to the
// client's offset (the d_off cookie of the last entry it got) and reads getdents64
// records, copying their cookies unchanged into fuse_dirent.off so any offset we ever
// returned can be resumed from. Entries that do not fit are simply read again next time.
import {
  O_CLOEXEC, O_DIRECTORY, O_RDONLY, SEEK_SET, fsync, getdents64, lseek, openat,
} from '../sys/file-calls.js';
import { DIRENTPLUS_HEAD_SIZE, Dirent, ENTRY_OUT_SIZE, FOPEN, FsyncIn, FUSE_FSYNC_FDATASYNC, OpenOut, ReadIn, ReleaseIn, direntAlign } from './fuse-abi.js';
import { E, type FsState } from './state.js';
import { copyBytes, u16, setU32 } from '../le-bytes.js';

// linux_dirent64: u64 d_ino, s64 d_off, u16 d_reclen, u8 d_type, char d_name[].
const D_INO = 0;
const D_OFF = 8;
const D_RECLEN = 16;
const D_TYPE = 18;
const D_NAME = 19;
const DENTS_SIZE = 32768;
const dents = Buffer.alloc(DENTS_SIZE);
/** One entry's name with its NUL (NAME_MAX is 255). */
const entryName = Buffer.alloc(256);

export function opendir(s: FsState): number {
  const ino = s.inodes.get(s.req.nodeid);
  if (ino === undefined) return s.inodes.missing(s.req.nodeid);
  if (!s.reply.reserve(OpenOut.size)) return -E.EIO;
  const fd = openat(s.procSelfFd, ino.procName, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return fd;
  const h = s.handles.add(fd, ino, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  const out = s.reply.out;
  setU32(out, 16 + OpenOut.off.fh, h.fh >>> 0);
  setU32(out, 16 + OpenOut.off.fh + 4, Math.floor(h.fh / 0x100000000));
  setU32(out, 16 + OpenOut.off.openFlags, s.opts.cache === 'always' ? FOPEN.KEEP_CACHE | FOPEN.CACHE_DIR : 0);
  setU32(out, 16 + OpenOut.off.padding, 0);
  return OpenOut.size;
}

export function readdir(s: FsState): number {
  return list(s, false);
}

export function readdirplus(s: FsState): number {
  return list(s, true);
}

function isDotOrDotDot(b: Buffer, p: number, n: number): boolean {
  return (n === 1 && b[p] === 0x2e) || (n === 2 && b[p] === 0x2e && b[p + 1] === 0x2e);
}

function list(s: FsState, plus: boolean): number {
  const req = s.req;
  const h = s.handles.get(req.u64(ReadIn.off.fh), req.nodeid);
  if (h === undefined) return -E.EBADF;
  const size = s.reply.room(req.u32(ReadIn.off.size));
  if (size === 0 || !s.reply.reserve(size)) return 0;
  // Cookies are 64-bit (ext4 hashes): pass them to lseek exactly.
  const off = req.u64Big(ReadIn.off.offset) ? req.bigU64(ReadIn.off.offset) : req.u64(ReadIn.off.offset);
  const sk = lseek(h.fd, off, SEEK_SET);
  if (sk < 0) return sk;
  const out = s.reply.out;
  const head = plus ? DIRENTPLUS_HEAD_SIZE : Dirent.size;
  const direntAt = plus ? ENTRY_OUT_SIZE : 0;
  let used = 0;
  // Each fuse record is at least as large as its linux_dirent64, so asking getdents for
  // no more than the room left rarely reads entries we must drop.
  for (;;) {
    const want = Math.min(DENTS_SIZE, Math.max(512, plus ? (size - used) >> 2 : size - used));
    const n = getdents64(h.fd, dents, want);
    if (n < 0) return used > 0 ? used : n;
    if (n === 0) return used;
    let p = 0;
    while (p < n) {
      const reclen = u16(dents, p + D_RECLEN);
      if (reclen === 0) return used;
      const nameStart = p + D_NAME;
      const recEnd = p + reclen;
      let nameEnd = nameStart;
      while (nameEnd < recEnd && dents[nameEnd] !== 0) nameEnd++;
      const namelen = nameEnd - nameStart;
      const rec = direntAlign(head + namelen);
      if (used + rec > size) return used;
      const base = 16 + used;
      const dp = base + direntAt;
      if (plus) {
        let found = false;
        if (!isDotOrDotDot(dents, nameStart, namelen) && namelen < entryName.length) {
          const dir = h.inode;
          // The name, NUL-terminated, in a buffer of our own: no view allocated per entry.
          copyBytes(dents, nameStart, entryName, 0, namelen);
          entryName[namelen] = 0;
          // Resolve in the handle's own fd, not dir.fd: a guest may FORGET the directory's
          // node id while it keeps this handle, which closes dir.fd, and that fd number
          // then belongs to whatever is opened next (another directory, say).
          const ino = s.lookupName(dir, entryName, h.fd);
          // A name that vanished since getdents still gets its dirent, with node id 0,
          // which the client takes as "no attributes for this one".
          if (typeof ino !== 'number') {
            s.writeEntry(out, base, ino, dir);
            found = true;
          }
        }
        if (!found) out.fill(0, base, base + ENTRY_OUT_SIZE);
      }
      copyBytes(dents, p + D_INO, out, dp + Dirent.off.ino, 8);
      copyBytes(dents, p + D_OFF, out, dp + Dirent.off.off, 8);
      setU32(out, dp + Dirent.off.namelen, namelen);
      setU32(out, dp + Dirent.off.type, dents[p + D_TYPE] as number);
      copyBytes(dents, nameStart, out, dp + Dirent.size, namelen);
      for (let z = dp + Dirent.size + namelen; z < base + rec; z++) out[z] = 0;
      used += rec;
      p += reclen;
    }
  }
}

export function releasedir(s: FsState): number {
  s.handles.release(s.req.u64(ReleaseIn.off.fh));
  return 0;
}

export function fsyncdir(s: FsState): number {
  const h = s.handles.get(s.req.u64(FsyncIn.off.fh), s.req.nodeid);
  if (h === undefined) return -E.EBADF;
  return fsync(h.fd, (s.req.u32(FsyncIn.off.fsyncFlags) & FUSE_FSYNC_FDATASYNC) !== 0);
}
