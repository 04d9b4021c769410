// Live migration of the passthrough's tables (--migration-*, as virtiofsd): the source
// turns each inode the guest knows into a way to find it again, the destination finds it
// and takes it under the same node id, and reopens every handle under the same fh.
//
// Source, find-paths: an inode's recorded parent and name (the table keeps them through
// the guest's renames); with --migration-confirm-paths that name is checked against the
// inode first, and a stale one is corrected from /proc/self/fd (the kernel's current path,
// "(deleted)" for an unlinked file) and then by a search of the share. Inodes without a
// name go the same way. --migration-verify-handles attaches each inode's file handle.
// Source, file-handles: the file handle of each inode.
//
// Destination: the state is untrusted. Names are opened one component at a time from a
// directory we hold, with O_NOFOLLOW, never through a symlink, so nothing outside the
// share is reached; a file handle is opened and then accepted only if its current path,
// walked the same way from the share's root, leads to the very same inode. A record that
// fails makes the whole load fail (--migration-on-error=abort), or leaves that node id
// answering an errno to the guest (guest-error).
import {
  AT_EMPTY_PATH, AT_SYMLINK_NOFOLLOW, O_ACCMODE, O_APPEND, O_CLOEXEC, O_DIRECT, O_DIRECTORY, O_NOATIME, O_NOFOLLOW, O_PATH,
  O_RDONLY, S_IFDIR, S_IFMT, S_IFREG, close, nameToHandleAt, openByHandleAt, openat, readlinkat, statx,
} from '../sys/file-calls.js';
import { E, EMPTY_NAME, STATX_MASK, type FsState } from './state.js';
import { fdName, type Inode } from './inodes.js';
import { findByIdentity, sameFile, walkPath } from './migration-paths.js';
import {
  ROOT_NODEID, splitPath, type InodeLocation, type MigratedHandle, type MigratedInode, type MigratedSession, type MigrationState,
} from './migration-state.js';

import type { MigrationOptions } from './options.js';

export type MigrationOnError = MigrationOptions['onError'];

/** Open flags a migrated handle may carry (anything else from the source is dropped). */
const HANDLE_FLAGS = O_ACCMODE | O_APPEND | O_DIRECT | O_NOATIME | O_DIRECTORY | 0o4010000 /* O_SYNC */ | 0o10000 /* O_DSYNC */;
const DELETED = ' (deleted)';
const linkBuf = Buffer.alloc(4096 + 16);

/** The kernel's path of an fd (through /proc/self/fd), or undefined. */
function procPath(s: FsState, fd: number): string | undefined {
  const n = readlinkat(s.procSelfFd, fdName(fd), linkBuf, linkBuf.length);
  return n < 0 || n >= linkBuf.length ? undefined : linkBuf.toString('utf8', 0, n);
}

/** Where the share's root is in the kernel's paths ("/" once we pivoted into it). */
function rootPrefix(s: FsState): string | undefined {
  const p = procPath(s, s.rootFd);
  return p === undefined ? undefined : p.endsWith('/') ? p : p + '/';
}

/** A path from /proc/self/fd as one relative to the share, or why not. */
function relativeToShare(s: FsState, fd: number, prefix: string): Buffer | string {
  const p = procPath(s, fd);
  if (p === undefined) return 'no /proc/self/fd path';
  if (p.endsWith(DELETED)) return 'the file was deleted';
  if (!p.startsWith(prefix)) return `its path ${JSON.stringify(p)} is not under the shared directory`;
  return Buffer.from(p.slice(prefix.length));
}

// ---- source ----

/** Inodes in an order where each comes after the parent it is recorded under. */
function parentsFirst(s: FsState): Inode[] {
  const out: Inode[] = [];
  const done = new Set<Inode>([s.inodes.root]);
  for (const start of s.inodes.others()) {
    const stack: Inode[] = [];
    for (let i: Inode | null = start; i !== null && !done.has(i); i = i.parent) stack.push(i);
    while (stack.length > 0) {
      const i = stack.pop() as Inode;
      done.add(i);
      out.push(i);
    }
  }
  return out;
}

function handleOf(s: FsState, ino: Inode): Buffer | number {
  if (ino.handle !== null) return ino.handle;
  const r = s.inodes.use(ino);
  if (r < 0) return r;
  return nameToHandleAt(ino.fd, EMPTY_NAME, AT_EMPTY_PATH);
}

/** Does `name` in `parent` still name `ino`? */
function nameHolds(s: FsState, ino: Inode, parent: Inode, name: Buffer): boolean {
  if (s.inodes.use(parent) < 0 || s.inodes.use(ino) < 0) return false;
  const st = Buffer.alloc(STX_BYTES);
  const mine = Buffer.alloc(STX_BYTES);
  return statx(parent.fd, name, AT_SYMLINK_NOFOLLOW, STATX_MASK, st) >= 0 &&
    statx(ino.fd, EMPTY_NAME, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW, STATX_MASK, mine) >= 0 && sameFile(st, mine);
}
const STX_BYTES = 256;

/** The source's state: where every inode is, every handle, the INIT agreement. */
export function collectState(s: FsState, m: MigrationOptions, session: MigratedSession | null): { state: MigrationState; failed: number } {
  const inodes: MigratedInode[] = [];
  const unresolved = new Map<number, MigratedInode>();
  const prefix = rootPrefix(s);
  let failed = 0;
  const fail = (ino: Inode, errno: number, why: string): InodeLocation => {
    s.log.warn(`migration: inode ${ino.nodeid} cannot be migrated: ${why}`);
    failed++;
    return { kind: 'failed', errno };
  };
  for (const ino of parentsFirst(s)) {
    const rec: MigratedInode = { nodeid: ino.nodeid, refs: Math.max(1, ino.refs), location: { kind: 'failed', errno: E.ESTALE }, verifyHandle: null };
    inodes.push(rec);
    if (m.mode === 'file-handles') {
      const h = handleOf(s, ino);
      rec.location = typeof h === 'number' ? fail(ino, E.EIO, `no file handle (errno ${-h})`) : { kind: 'handle', handle: h };
      continue;
    }
    const parent = ino.parent;
    const name = ino.name === null ? null : ino.name.subarray(0, ino.name.length - 1); // drop the NUL
    if (parent !== null && name !== null && (!m.confirmPaths || nameHolds(s, ino, parent, ino.name as Buffer))) {
      rec.location = { kind: 'name', parent: parent.nodeid, name: Buffer.from(name) };
    } else if (s.inodes.use(ino) < 0 || prefix === undefined) {
      rec.location = fail(ino, E.ESTALE, 'its file cannot be reached');
    } else {
      const rel = relativeToShare(s, ino.fd, prefix);
      const parts = typeof rel === 'string' ? rel : splitPath(rel);
      const st = Buffer.alloc(STX_BYTES);
      const fd = typeof parts === 'string' ? -1 : walkPath(s.rootFd, parts, st);
      const mine = Buffer.alloc(STX_BYTES);
      const ok = fd >= 0 && statx(ino.fd, EMPTY_NAME, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW, STATX_MASK, mine) >= 0 && sameFile(st, mine);
      if (fd >= 0) close(fd);
      if (ok) rec.location = { kind: 'path', path: rel as Buffer };
      else if (rel === 'the file was deleted') rec.location = fail(ino, E.ESTALE, rel);
      else unresolved.set(ino.nodeid, rec); // left for the search below
    }
    if (m.verifyHandles && rec.location.kind !== 'failed') {
      const h = handleOf(s, ino);
      if (typeof h !== 'number') rec.verifyHandle = h;
      else s.log.warn(`migration: inode ${ino.nodeid}: no file handle to verify it by (errno ${-h})`);
    }
  }
  if (unresolved.size > 0) {
    const keys = new Map<number, Buffer>();
    for (const nodeid of unresolved.keys()) {
      const ino = s.inodes.peek(nodeid) as Inode;
      const st = Buffer.alloc(STX_BYTES);
      if (s.inodes.use(ino) >= 0 && statx(ino.fd, EMPTY_NAME, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW, STATX_MASK, st) >= 0) keys.set(nodeid, st);
    }
    const found = findByIdentity(s.rootFd, keys);
    for (const [nodeid, rec] of unresolved) {
      const path = found.get(nodeid);
      if (path !== undefined) rec.location = { kind: 'path', path };
      else rec.location = fail(s.inodes.peek(nodeid) as Inode, E.ESTALE, 'not found in the shared directory');
    }
  }
  const handles: MigratedHandle[] = s.handles.all().map((h) => ({ fh: h.fh, nodeid: h.inode.nodeid, flags: h.flags }));
  return { state: { session, inodes, handles }, failed };
}

// ---- destination ----

/** A real (not O_PATH) fd on the share, for open_by_handle_at; made on first need. */
let handleMountFd = -1;

function openLocated(s: FsState, rec: MigratedInode, nodes: Map<number, Inode>, st: Buffer): { fd: number; parent: Inode | null; name: Buffer | null } | string {
  const loc = rec.location;
  if (loc.kind === 'failed') return `the source could not locate it (errno ${loc.errno})`;
  if (loc.kind === 'name') {
    const parent = loc.parent === ROOT_NODEID ? s.inodes.root : nodes.get(loc.parent);
    if (parent === undefined) return `its parent ${loc.parent} was not restored`;
    if (s.inodes.use(parent) < 0) return `its parent ${loc.parent} cannot be reopened`;
    if (parent.type !== S_IFDIR) return `its parent ${loc.parent} is not a directory`;
    const name = Buffer.concat([loc.name, EMPTY_NAME]);
    const fd = openat(parent.fd, name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) return `${JSON.stringify(loc.name.toString())} in ${loc.parent}: errno ${-fd}`;
    if (statx(fd, EMPTY_NAME, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW, STATX_MASK, st) < 0) {
      close(fd);
      return 'statx failed';
    }
    return { fd, parent, name };
  }
  if (loc.kind === 'path') {
    const parts = splitPath(loc.path);
    if (typeof parts === 'string') return parts;
    const fd = walkPath(s.rootFd, parts, st);
    return fd < 0 ? `path ${JSON.stringify(loc.path.toString())}: errno ${-fd}` : { fd, parent: null, name: null };
  }
  if (handleMountFd < 0) {
    handleMountFd = openat(s.rootFd, Buffer.from('.\0'), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (handleMountFd < 0) return `cannot open the share for file handles: errno ${-handleMountFd}`;
  }
  const fd = openByHandleAt(handleMountFd, loc.handle, O_PATH | O_CLOEXEC);
  if (fd < 0) return `open_by_handle_at: errno ${-fd}${fd === -E.EPERM ? ' (CAP_DAC_READ_SEARCH is needed)' : ''}`;
  // A handle opens the inode wherever it is on the file system: accept it only where
  // its current path, walked inside the share, leads to it.
  const prefix = rootPrefix(s);
  const rel = prefix === undefined ? 'no root path' : relativeToShare(s, fd, prefix);
  const parts = typeof rel === 'string' ? rel : splitPath(rel);
  const mine = Buffer.alloc(STX_BYTES);
  const back = typeof parts === 'string' ? -1 : walkPath(s.rootFd, parts, st);
  const inside = back >= 0 && statx(fd, EMPTY_NAME, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW, STATX_MASK, mine) >= 0 && sameFile(st, mine);
  if (back >= 0) close(back);
  if (!inside) {
    close(fd);
    return `its file handle names a file that is not reachable in the shared directory (${typeof parts === 'string' ? parts : 'another file at its path'})`;
  }
  mine.copy(st);
  return { fd, parent: null, name: null };
}

function reopenHandle(s: FsState, h: MigratedHandle, ino: Inode): number | string {
  if (s.inodes.use(ino) < 0) return 'its inode cannot be reopened';
  const type = ino.type & S_IFMT;
  if (type === S_IFDIR) return openat(s.procSelfFd, ino.procName, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (type !== S_IFREG) return 'not a regular file or directory';
  const flags = (h.flags & HANDLE_FLAGS & ~O_DIRECTORY) | O_CLOEXEC;
  if (s.opts.readonly && (flags & O_ACCMODE) !== O_RDONLY) return 'opened for writing on a --readonly destination';
  return openat(s.procSelfFd, ino.procName, flags);
}

/**
 * Put a decoded state into empty tables. Returns how many inodes and handles the guest
 * will get errors for, or (abort, or a broken state) why the load failed; the tables are
 * then empty again.
 */
export function applyState(s: FsState, state: MigrationState, onError: MigrationOnError): { lost: number } | string {
  const nodes = new Map<number, Inode>();
  let lost = 0;
  const st = Buffer.alloc(STX_BYTES);
  const giveUp = (why: string): string => {
    s.handles.clear();
    s.inodes.clear();
    return why;
  };
  for (const rec of state.inodes) {
    let r = openLocated(s, rec, nodes, st);
    if (typeof r !== 'string' && rec.verifyHandle !== null) {
      const h = nameToHandleAt(r.fd, EMPTY_NAME, AT_EMPTY_PATH);
      if (typeof h === 'number' || !h.equals(rec.verifyHandle)) {
        close(r.fd);
        r = typeof h === 'number' ? `no file handle to verify it by (errno ${-h})` : 'a different file than on the source (file handles differ)';
      }
    }
    if (typeof r !== 'string' && s.inodes.find(st) !== undefined) {
      close(r.fd);
      r = `the same file as node ${(s.inodes.find(st) as Inode).nodeid}`;
    }
    if (typeof r === 'string') {
      const why = `inode ${rec.nodeid}: ${r}`;
      if (onError === 'abort') return giveUp(why);
      s.log.warn(`migration: ${why}; the guest gets ESTALE for it`);
      s.inodes.restoreLost(rec.nodeid, rec.refs, rec.location.kind === 'failed' ? rec.location.errno : E.ESTALE);
      lost++;
      continue;
    }
    nodes.set(rec.nodeid, s.inodes.restore(rec.nodeid, r.fd, st, r.parent, r.name, null, rec.refs));
  }
  for (const h of state.handles) {
    const ino = h.nodeid === ROOT_NODEID ? s.inodes.root : nodes.get(h.nodeid);
    const fd = ino === undefined ? 'its inode was not restored' : reopenHandle(s, h, ino);
    if (typeof fd === 'string' || fd < 0) {
      const why = `handle ${h.fh} (inode ${h.nodeid}): ${typeof fd === 'string' ? fd : `errno ${-fd}`}`;
      if (onError === 'abort') return giveUp(why);
      s.log.warn(`migration: ${why}; the guest gets EBADF for it`);
      lost++;
      continue;
    }
    s.handles.restore(h.fh, fd, ino as Inode, h.flags);
  }
  return { lost };
}
