// The inode table of the passthrough (open files: handle-table.ts). An inode is identified by (st_dev,
// st_ino, mount id) as statx reports them, so two names of one file share a node id; the
// client's lookup count keeps it alive until FORGET. Node ids come from a counter and are
// never reused, so generation stays 0.
//
// The fd budget. An inode may hold an O_PATH fd, but need not: the table keeps at most
// `maxFds` fds (inode fds plus handles) and, when a new one would pass that, closes the
// O_PATH fd of the least recently used inode. Such an inode keeps how to find it again,
// its file handle (--inode-file-handles=prefer|mandatory) or its parent and name, and is
// reopened by get() on its next use, then checked: it must be the same (dev, ino, mount
// id) and still be reachable under its recorded parent and name, or the request fails
// with ESTALE. So a reopen never reaches a file that has left the shared directory.
// Inodes used by the request being served are never evicted (their fds are in use).
import {
  AT_SYMLINK_NOFOLLOW, AT_EMPTY_PATH, O_CLOEXEC, O_NOFOLLOW, O_PATH, STATX_BASIC_STATS, STATX_MNT_ID, STATX_SIZE, STX, S_IFMT,
  close, openat, openByHandleAt, statx,
} from '../sys/file-calls.js';
import { FUSE_ROOT_ID } from './fuse-abi.js';
import { u16, u32 } from '../le-bytes.js';

const STATX_MASK = STATX_BASIC_STATS | STATX_MNT_ID;
const EMPTY = Buffer.from([0]);
const ESTALE = 116;
const ENOENT = 2;

/** fds below this get their "<fd>\0" name made once and kept (fd numbers are reused). */
const FD_NAME_CACHE = 1 << 16;
const fdNames: (Buffer | undefined)[] = [];

/**
 * "<fd>\0", the name of an fd under /proc/self/fd (for reopening through procSelfFd). Kept
 * per fd number: a template string plus Buffer.from per CREATE and OPEN showed in profiles.
 * The Buffers are shared: callers never write into them.
 */
export function fdName(fd: number): Buffer {
  if (fd < 0 || fd >= FD_NAME_CACHE) return Buffer.from(`${fd}\0`);
  return (fdNames[fd] ??= Buffer.from(`${fd}\0`));
}

export class Inode {
  /** Next inode with the same hash. */
  next: Inode | null = null;
  /** Neighbours in the table's LRU list of inodes that hold an fd (most recent first). */
  lruPrev: Inode | null = null;
  lruNext: Inode | null = null;
  /** The table's epoch (request count) when this inode was last used. */
  epoch = 0;
  /** Inodes that record this one as their parent: it must outlive them. */
  pins = 0;
  private proc: Buffer | undefined;

  constructor(
    readonly nodeid: number,
    /** The O_PATH fd, or -1 while evicted. */
    public fd: number,
    /** S_IFMT bits of the file type. */
    readonly type: number,
    readonly mntId: number,
    readonly devMajor: number,
    readonly devMinor: number,
    readonly inoLo: number,
    readonly inoHi: number,
    public refs: number,
    /** Where the inode was last looked up: the way back to it once its fd is evicted. */
    public parent: Inode | null,
    /** Its name in `parent`, NUL-terminated. */
    public name: Buffer | null,
    /** struct file_handle from name_to_handle_at, when file handles are in use. */
    public handle: Buffer | null,
  ) {}

  /**
   * "<fd>\0": the name of this inode under /proc/self/fd, for reopening. Made on first use:
   * most inodes (a READDIRPLUS listing, say) are never reopened.
   */
  get procName(): Buffer {
    return (this.proc ??= fdName(this.fd));
  }

  /** Can the fd be given up and found again? */
  get reopenable(): boolean {
    return this.handle !== null || (this.parent !== null && this.name !== null);
  }

  setFd(fd: number): void {
    this.fd = fd;
    this.proc = undefined;
  }
}

/** The 64-bit mount id of a statx buffer (exact as a double below 2^53). */
export function mntIdOf(stx: Buffer): number {
  return u32(stx, STX.mntId) + u32(stx, STX.mntId + 4) * 0x100000000;
}

/**
 * An inode's own copy of its name, up to and including the first NUL: callers pass scratch
 * buffers (READDIRPLUS's 256-byte entry name) whose bytes after the NUL are stale, and the
 * name is compared and migrated by its length.
 */
function copyName(name: Buffer): Buffer {
  const nul = name.indexOf(0);
  return Buffer.from(nul < 0 ? Buffer.concat([name, EMPTY]) : name.subarray(0, nul + 1));
}

function hashOf(inoLo: number, inoHi: number, devMinor: number): number {
  return inoLo + (inoHi & 0x1fffff) * 0x100000000 + devMinor * 0.5;
}

export interface InodeTableOptions {
  /** Most fds the table may hold, inode fds and handles together (0: no limit). */
  maxFds: number;
  /** An fd on the shared directory's mount, for open_by_handle_at. */
  mountFd: number;
}

export class InodeTable {
  private readonly byId = new Map<number, Inode>();
  private readonly byKey = new Map<number, Inode>();
  private nextId = FUSE_ROOT_ID + 1;
  readonly root: Inode;
  /** Bumped once per request (FsState.begin): inodes of the current request are not evicted. */
  epoch = 1;
  /** Inode fds held (the root's included). */
  fdCount = 0;
  /** Handle fds held (HandleTable keeps it). */
  handleFds = 0;
  /** O_PATH fds given up so far, and inodes reopened. */
  evictions = 0;
  reopens = 0;
  private lruHead: Inode | null = null;
  private lruTail: Inode | null = null;
  private readonly maxFds: number;
  private readonly mountFd: number;
  private readonly scratch = Buffer.alloc(STATX_SIZE);

  /** `stx` holds the statx of rootFd. */
  constructor(rootFd: number, stx: Buffer, opts: InodeTableOptions = { maxFds: 0, mountFd: rootFd }) {
    this.maxFds = opts.maxFds > 0 ? opts.maxFds : Number.MAX_SAFE_INTEGER;
    this.mountFd = opts.mountFd;
    this.root = this.make(FUSE_ROOT_ID, rootFd, stx, null, null, null);
    this.root.refs = 1;
    this.fdCount = 1;
    this.index(this.root);
  }

  get size(): number {
    return this.byId.size;
  }

  /**
   * The inode `nodeid`, with an fd: an evicted inode is reopened (and checked) here.
   * Undefined when unknown or when it can no longer be found (see `lastError`).
   */
  get(nodeid: number): Inode | undefined {
    const ino = this.byId.get(nodeid);
    if (ino === undefined) return undefined;
    return this.use(ino) < 0 ? undefined : ino;
  }

  /** Why the last get() of a known inode failed (-errno), for logs and tests. */
  lastError = 0;

  /** The errno for a request whose node get() did not give: ENOENT if unknown, else why it could not be reopened. */
  missing(nodeid: number): number {
    const lost = this.lost.get(nodeid);
    if (lost !== undefined) return -lost.errno;
    return this.byId.has(nodeid) ? (this.lastError < 0 ? this.lastError : -ESTALE) : -ENOENT;
  }

  /**
   * Inodes a migration destination could not find again (--migration-on-error=guest-error):
   * the guest still holds their node ids, and every request on one gets its errno.
   */
  private readonly lost = new Map<number, { refs: number; errno: number }>();

  get lostCount(): number {
    return this.lost.size;
  }

  /** Every inode but the root, in table order (migration). */
  others(): Inode[] {
    const out: Inode[] = [];
    for (const i of this.byId.values()) if (i !== this.root) out.push(i);
    return out;
  }

  /** The inode `nodeid` as it is (no reopen), for migration. */
  peek(nodeid: number): Inode | undefined {
    return this.byId.get(nodeid);
  }

  /** Migration destination: adopt an inode under the node id the guest knows it by. */
  restore(nodeid: number, fd: number, stx: Buffer, parent: Inode | null, name: Buffer | null, handle: Buffer | null, refs: number): Inode {
    const ino = this.make(nodeid, fd, stx, parent, name === null ? null : copyName(name), handle);
    ino.refs = refs;
    if (parent !== null) parent.pins++;
    ino.epoch = this.epoch;
    this.index(ino);
    if (fd >= 0) this.adoptFd(ino);
    this.nextId = Math.max(this.nextId, nodeid + 1);
    return ino;
  }

  /** Migration destination: a node id the guest holds whose file could not be found. */
  restoreLost(nodeid: number, refs: number, errno: number): void {
    this.lost.set(nodeid, { refs, errno });
    this.nextId = Math.max(this.nextId, nodeid + 1);
  }

  /** Make sure `ino` holds an fd and mark it used by this request; 0 or -errno. */
  use(ino: Inode): number {
    ino.epoch = this.epoch;
    if (ino.fd >= 0) {
      if (ino !== this.root && this.lruHead !== ino) {
        this.unlink(ino);
        this.pushHead(ino);
      }
      return 0;
    }
    const r = this.reopen(ino);
    if (r < 0) {
      this.lastError = r;
      return r;
    }
    return 0;
  }

  /** The known inode that `stx` (a fresh statx) describes, if any. */
  find(stx: Buffer): Inode | undefined {
    let n = this.byKey.get(hashOf(u32(stx, STX.ino), u32(stx, STX.ino + 4), u32(stx, STX.devMinor))) ?? null;
    while (n !== null) {
      if (this.matches(n, stx)) return n;
      n = n.next;
    }
    return undefined;
  }

  /**
   * Adopt a new inode with one lookup: `fd` (an O_PATH fd that `stx` describes, or -1
   * when only `handle` is kept), found as `name` (NUL-terminated, copied up to its NUL) in `parent`.
   */
  insert(fd: number, stx: Buffer, parent: Inode | null, name: Buffer | null, handle: Buffer | null): Inode {
    const ino = this.make(this.nextId++, fd, stx, parent, name === null ? null : copyName(name), handle);
    if (parent !== null) parent.pins++;
    ino.epoch = this.epoch;
    this.index(ino);
    if (fd >= 0) this.adoptFd(ino);
    return ino;
  }

  /** After a rename: `ino` is now `name` in `parent`. */
  moved(ino: Inode, parent: Inode, name: Buffer): void {
    if (ino === this.root || ino === parent) return;
    // A directory moved under itself cannot happen (the kernel refuses), so no pin cycle.
    if (ino.parent !== parent) {
      parent.pins++;
      const old = ino.parent;
      ino.parent = parent;
      if (old !== null) this.unpin(old);
    }
    ino.name = copyName(name);
  }

  /** `ino` lost the name it would be found again by: it keeps its fd for good (never evicted). */
  unnamed(ino: Inode): void {
    if (ino === this.root || ino.fd < 0) return;
    const parent = ino.parent;
    ino.parent = null;
    ino.name = null;
    ino.handle = null; // a handle is only trusted with the name that confirms it
    if (parent !== null) this.unpin(parent);
  }

  /** Drop `n` lookups; closes and forgets the inode at zero. The root is never freed. */
  forget(nodeid: number, n: number): void {
    const lost = this.lost.get(nodeid);
    if (lost !== undefined) {
      lost.refs -= n;
      if (lost.refs <= 0) this.lost.delete(nodeid);
      return;
    }
    const ino = this.byId.get(nodeid);
    if (ino === undefined || ino === this.root) return;
    ino.refs -= n;
    if (ino.refs > 0) return;
    ino.refs = 0;
    this.free(ino);
  }

  /** Forget every inode but the root (DESTROY). */
  clear(): void {
    for (const ino of this.byId.values()) {
      if (ino === this.root || ino.fd < 0) continue;
      close(ino.fd);
      ino.setFd(-1);
    }
    this.byId.clear();
    this.byKey.clear();
    this.lost.clear();
    this.lruHead = null;
    this.lruTail = null;
    this.root.next = null;
    this.root.pins = 0;
    this.fdCount = 1;
    this.index(this.root);
  }

  /**
   * Make room for `n` more fds within the budget by evicting least recently used inode
   * fds (never the root's, one without a way back, or one this request uses).
   */
  makeRoom(n: number): void {
    let cur = this.lruTail;
    while (this.fdCount + this.handleFds + n > this.maxFds && cur !== null) {
      const prev = cur.lruPrev;
      if (cur.epoch !== this.epoch && cur.reopenable) this.evict(cur);
      cur = prev;
    }
  }

  private evict(ino: Inode): void {
    this.dropFd(ino);
    this.evictions++;
  }

  /** Close an inode's fd and take it off the LRU list and the budget. */
  private dropFd(ino: Inode): void {
    this.unlink(ino);
    close(ino.fd);
    ino.setFd(-1);
    this.fdCount--;
  }

  /** An inode's fd for the budget and the LRU list. */
  private adoptFd(ino: Inode): void {
    this.makeRoom(1);
    this.fdCount++;
    this.pushHead(ino);
  }

  /** Find an evicted inode again: by file handle, else by parent and name; then check it. */
  private reopen(ino: Inode): number {
    const parent = ino.parent;
    let pfd = -1;
    if (parent !== null) {
      const r = this.use(parent);
      if (r < 0) return r;
      pfd = parent.fd;
    }
    this.makeRoom(1);
    let fd: number;
    if (ino.handle !== null) fd = openByHandleAt(this.mountFd, ino.handle, O_PATH | O_CLOEXEC);
    else if (pfd >= 0 && ino.name !== null) fd = openat(pfd, ino.name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
    else return -ESTALE;
    if (fd < 0) return fd === -ENOENT ? -ESTALE : fd;
    // The same file (not another one that took its name, or a recycled inode number)...
    const st = this.scratch;
    if (statx(fd, EMPTY, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW, STATX_MASK, st) < 0 || !this.matches(ino, st)) {
      close(fd);
      return -ESTALE;
    }
    // ...and, when it came from a file handle, still in the shared directory: a handle
    // opens the inode wherever it now is on the file system, even outside the share.
    if (ino.handle !== null && (pfd < 0 || ino.name === null || statx(pfd, ino.name, AT_SYMLINK_NOFOLLOW, STATX_MASK, st) < 0 || !this.matches(ino, st))) {
      close(fd);
      return -ESTALE;
    }
    ino.setFd(fd);
    this.fdCount++;
    this.pushHead(ino);
    this.reopens++;
    return 0;
  }

  private matches(ino: Inode, st: Buffer): boolean {
    return u32(st, STX.ino) === ino.inoLo && u32(st, STX.ino + 4) === ino.inoHi && u32(st, STX.devMajor) === ino.devMajor &&
      u32(st, STX.devMinor) === ino.devMinor && mntIdOf(st) === ino.mntId;
  }

  /** Remove an inode nobody looks up and nothing pins; then release its parent's pin. */
  private free(ino: Inode): void {
    if (ino.refs > 0 || ino.pins > 0) return;
    this.byId.delete(ino.nodeid);
    const h = hashOf(ino.inoLo, ino.inoHi, ino.devMinor);
    let prev: Inode | null = null;
    let cur = this.byKey.get(h) ?? null;
    while (cur !== null && cur !== ino) {
      prev = cur;
      cur = cur.next;
    }
    if (cur !== null) {
      if (prev === null) {
        if (ino.next === null) this.byKey.delete(h);
        else this.byKey.set(h, ino.next);
      } else {
        prev.next = ino.next;
      }
    }
    if (ino.fd >= 0) this.dropFd(ino);
    const parent = ino.parent;
    ino.parent = null;
    if (parent !== null) this.unpin(parent);
  }

  /** Keep `ino` alive while something else (a handle, a child's parent link) refers to it. */
  pin(ino: Inode): void {
    ino.pins++;
  }

  unpin(parent: Inode): void {
    parent.pins--;
    if (parent !== this.root && parent.refs <= 0 && parent.pins <= 0) this.free(parent);
  }

  private pushHead(ino: Inode): void {
    ino.lruPrev = null;
    ino.lruNext = this.lruHead;
    if (this.lruHead !== null) this.lruHead.lruPrev = ino;
    this.lruHead = ino;
    if (this.lruTail === null) this.lruTail = ino;
  }

  private unlink(ino: Inode): void {
    if (ino.lruPrev !== null) ino.lruPrev.lruNext = ino.lruNext;
    else if (this.lruHead === ino) this.lruHead = ino.lruNext;
    else return; // not in the list
    if (ino.lruNext !== null) ino.lruNext.lruPrev = ino.lruPrev;
    else this.lruTail = ino.lruPrev;
    ino.lruPrev = null;
    ino.lruNext = null;
  }

  private make(nodeid: number, fd: number, stx: Buffer, parent: Inode | null, name: Buffer | null, handle: Buffer | null): Inode {
    return new Inode(
      nodeid, fd, u16(stx, STX.mode) & S_IFMT, mntIdOf(stx),
      u32(stx, STX.devMajor), u32(stx, STX.devMinor), u32(stx, STX.ino), u32(stx, STX.ino + 4), 1, parent, name, handle,
    );
  }

  private index(ino: Inode): void {
    this.byId.set(ino.nodeid, ino);
    const h = hashOf(ino.inoLo, ino.inoHi, ino.devMinor);
    ino.next = this.byKey.get(h) ?? null;
    this.byKey.set(h, ino);
  }
}
