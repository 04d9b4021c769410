// Finding files inside the shared directory by path for migration, never leaving it: a
// path is walked one component at a time from a directory fd with O_NOFOLLOW (a symlink
// is never followed, ".." and "/" never pass splitPath), and the exhaustive search that
// find-paths falls back on reads directories with getdents64 from the root down, not
// descending into symlinks, bounded in the work it does (entries looked at plus path
// components walked to reopen each directory: a guest's chain of thousands of nested
// directories would otherwise cost the square of its depth) and never below PATH_MAX (a
// longer path cannot be sent: the destination refuses it).
import {
  AT_EMPTY_PATH, AT_SYMLINK_NOFOLLOW, O_CLOEXEC, O_DIRECTORY, O_NOFOLLOW, O_PATH, O_RDONLY, S_IFDIR, S_IFMT, STX,
  close, getdents64, openat, statx,
} from '../sys/file-calls.js';
import { EMPTY_NAME, STATX_MASK } from './state.js';
import { MIGRATION_PATH_MAX } from './migration-state.js';
import { mntIdOf } from './inodes.js';
import { u16, u32 } from '../le-bytes.js';

/** Entries the fallback search looks at, plus components it walks, before giving up on what it has not found. */
export const SEARCH_LIMIT = 1_000_000;
const DT_DIR = 4;

/** Same inode: (st_dev, st_ino, mount id) of two statx buffers. */
export function sameFile(a: Buffer, b: Buffer): boolean {
  return u32(a, STX.ino) === u32(b, STX.ino) && u32(a, STX.ino + 4) === u32(b, STX.ino + 4) && u32(a, STX.devMajor) === u32(b, STX.devMajor) &&
    u32(a, STX.devMinor) === u32(b, STX.devMinor) && mntIdOf(a) === mntIdOf(b);
}

/**
 * Open `parts` (checked components) below `rootFd` as O_PATH, every directory on the way
 * a real directory and nothing followed; the file's statx lands in `st`. An fd or -errno.
 */
export function walkPath(rootFd: number, parts: readonly Buffer[], st: Buffer): number {
  let cur = rootFd;
  for (let i = 0; i < parts.length; i++) {
    const name = Buffer.concat([parts[i] as Buffer, EMPTY_NAME]);
    const fd = openat(cur, name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
    if (cur !== rootFd) close(cur);
    if (fd < 0) return fd;
    const r = statx(fd, EMPTY_NAME, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW, STATX_MASK, st);
    if (r < 0 || (i < parts.length - 1 && (u16(st, STX.mode) & S_IFMT) !== S_IFDIR)) {
      close(fd);
      return r < 0 ? r : -20; // ENOTDIR
    }
    cur = fd;
  }
  if (cur === rootFd) return -22; // EINVAL: no components
  return cur;
}

/**
 * Search the share for the inodes `keys` (node id -> statx) describe; returns node id ->
 * path relative to the share. Breadth first, so the shortest name wins.
 */
export function findByIdentity(rootFd: number, keys: ReadonlyMap<number, Buffer>): Map<number, Buffer> {
  const found = new Map<number, Buffer>();
  if (keys.size === 0) return found;
  const byIno = new Map<string, number[]>();
  for (const [nodeid, st] of keys) {
    const k = `${u32(st, STX.ino + 4)}:${u32(st, STX.ino)}`;
    const list = byIno.get(k);
    if (list === undefined) byIno.set(k, [nodeid]);
    else list.push(nodeid);
  }
  const buf = Buffer.alloc(64 * 1024);
  const st = Buffer.alloc(256);
  const queue: string[] = [''];
  let seen = 0;
  while (queue.length > 0 && found.size < keys.size && seen < SEARCH_LIMIT) {
    const dir = queue.shift() as string;
    // Reopening the directory walks its path from the root, one openat per component.
    if (dir !== '') seen += componentCount(dir);
    const fd = dir === '' ? openat(rootFd, Buffer.from('.\0'), O_RDONLY | O_DIRECTORY | O_CLOEXEC) : openDir(rootFd, dir);
    if (fd < 0) continue;
    try {
      for (;;) {
        const n = getdents64(fd, buf, buf.length);
        if (n <= 0) break;
        for (let off = 0; off < n;) {
          const reclen = buf.readUInt16LE(off + 16);
          const type = buf.readUInt8(off + 18);
          const end = buf.indexOf(0, off + 19);
          const name = buf.toString('utf8', off + 19, end < 0 || end > off + reclen ? off + reclen : end);
          const inoLo = buf.readUInt32LE(off);
          const inoHi = buf.readUInt32LE(off + 4);
          off += reclen;
          if (name === '.' || name === '..') continue;
          seen++;
          const rel = dir === '' ? name : `${dir}/${name}`;
          // Nothing at or below a path longer than a state may carry can be sent.
          if (Buffer.byteLength(rel) > MIGRATION_PATH_MAX) continue;
          const candidates = byIno.get(`${inoHi}:${inoLo}`);
          if (candidates !== undefined) {
            for (const nodeid of candidates) {
              if (found.has(nodeid)) continue;
              if (statx(fd, Buffer.from(`${name}\0`), AT_SYMLINK_NOFOLLOW, STATX_MASK, st) >= 0 && sameFile(st, keys.get(nodeid) as Buffer)) {
                found.set(nodeid, Buffer.from(rel));
              }
            }
          }
          if (type === DT_DIR) queue.push(rel);
        }
      }
    } finally {
      close(fd);
    }
  }
  return found;
}

function componentCount(rel: string): number {
  let n = 1;
  for (let i = 0; i < rel.length; i++) if (rel.charCodeAt(i) === 0x2f) n++;
  return n;
}

function openDir(rootFd: number, rel: string): number {
  const st = Buffer.alloc(256);
  const parts = rel.split('/').map((p) => Buffer.from(p));
  const fd = walkPath(rootFd, parts, st);
  if (fd < 0) return fd;
  if ((u16(st, STX.mode) & S_IFMT) !== S_IFDIR) {
    close(fd);
    return -20;
  }
  const dfd = openat(fd, Buffer.from('.\0'), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  close(fd);
  return dfd;
}
