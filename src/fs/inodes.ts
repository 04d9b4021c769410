// The inode and handle tables of the passthrough. An inode is an O_PATH|O_NOFOLLOW fd
// identified by (st_dev, st_ino, mount id) as statx reports them, so two names of one
// file share a node id; the client's lookup count keeps it alive until FORGET. Node
// ids are handed out from a counter and never reused, so generation stays 0. Open
// files and directories are handles: a real fd reopened through /proc/self/fd.
import { STX, S_IFMT, close } from '../sys/file-calls.js';
import { FUSE_ROOT_ID } from './fuse-abi.js';
import { u16, u32 } from '../le-bytes.js';

export class Inode {
  /** Next inode with the same hash. */
  next: Inode | null = null;
  private proc: Buffer | undefined;

  constructor(
    readonly nodeid: number,
    readonly fd: number,
    /** S_IFMT bits of the file type. */
    readonly type: number,
    readonly mntId: number,
    readonly devMajor: number,
    readonly devMinor: number,
    readonly inoLo: number,
    readonly inoHi: number,
    public refs: number,
  ) {}

  /**
   * "<fd>\0": the name of this inode under /proc/self/fd, for reopening. Made on first use:
   * most inodes (a READDIRPLUS listing, say) are never reopened.
   */
  get procName(): Buffer {
    return (this.proc ??= Buffer.from(`${this.fd}\0`));
  }
}

export interface Handle {
  readonly fh: number;
  readonly fd: number;
  readonly inode: Inode;
}

function hashOf(inoLo: number, inoHi: number, devMinor: number): number {
  return inoLo + (inoHi & 0x1fffff) * 0x100000000 + devMinor * 0.5;
}

export class InodeTable {
  private readonly byId = new Map<number, Inode>();
  private readonly byKey = new Map<number, Inode>();
  private nextId = FUSE_ROOT_ID + 1;
  readonly root: Inode;

  /** `stx` holds the statx of rootFd. */
  constructor(rootFd: number, stx: Buffer) {
    this.root = this.make(FUSE_ROOT_ID, rootFd, stx);
    this.root.refs = 1;
    this.index(this.root);
  }

  get size(): number {
    return this.byId.size;
  }

  get(nodeid: number): Inode | undefined {
    return this.byId.get(nodeid);
  }

  /** The known inode that `stx` (a fresh statx) describes, if any. */
  find(stx: Buffer): Inode | undefined {
    const inoLo = u32(stx, STX.ino);
    const inoHi = u32(stx, STX.ino + 4);
    const devMajor = u32(stx, STX.devMajor);
    const devMinor = u32(stx, STX.devMinor);
    const mntId = u32(stx, STX.mntId) + u32(stx, STX.mntId + 4) * 0x100000000;
    let n = this.byKey.get(hashOf(inoLo, inoHi, devMinor)) ?? null;
    while (n !== null) {
      if (n.inoLo === inoLo && n.inoHi === inoHi && n.devMajor === devMajor && n.devMinor === devMinor && n.mntId === mntId) {
        return n;
      }
      n = n.next;
    }
    return undefined;
  }

  /** Adopt `fd` (an O_PATH fd that `stx` describes) as a new inode with one lookup. */
  insert(fd: number, stx: Buffer): Inode {
    const ino = this.make(this.nextId++, fd, stx);
    this.index(ino);
    return ino;
  }

  /** Drop `n` lookups; closes and forgets the inode at zero. The root is never freed. */
  forget(nodeid: number, n: number): void {
    const ino = this.byId.get(nodeid);
    if (ino === undefined || ino === this.root) return;
    ino.refs -= n;
    if (ino.refs > 0) return;
    this.byId.delete(nodeid);
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
    close(ino.fd);
  }

  /** Forget every inode but the root (DESTROY). */
  clear(): void {
    for (const ino of [...this.byId.values()]) {
      if (ino !== this.root) this.forget(ino.nodeid, ino.refs);
    }
  }

  private make(nodeid: number, fd: number, stx: Buffer): Inode {
    return new Inode(
      nodeid, fd, u16(stx, STX.mode) & S_IFMT, u32(stx, STX.mntId) + u32(stx, STX.mntId + 4) * 0x100000000,
      u32(stx, STX.devMajor), u32(stx, STX.devMinor), u32(stx, STX.ino), u32(stx, STX.ino + 4), 1,
    );
  }

  private index(ino: Inode): void {
    this.byId.set(ino.nodeid, ino);
    const h = hashOf(ino.inoLo, ino.inoHi, ino.devMinor);
    ino.next = this.byKey.get(h) ?? null;
    this.byKey.set(h, ino);
  }
}

export class HandleTable {
  private readonly byFh = new Map<number, Handle>();
  private nextFh = 1;

  get size(): number {
    return this.byFh.size;
  }

  /**
   * The handle `fh` when it was opened on node `nodeid`. The client always names a
   * handle together with its own node; a pair that does not match comes from a confused
   * or hostile guest, and using the handle would act on another file than the one named.
   */
  get(fh: number, nodeid: number): Handle | undefined {
    const h = this.byFh.get(fh);
    return h !== undefined && h.inode.nodeid === nodeid ? h : undefined;
  }

  add(fd: number, inode: Inode): Handle {
    const h: Handle = { fh: this.nextFh++, fd, inode };
    this.byFh.set(h.fh, h);
    return h;
  }

  /** Close and drop a handle; returns false when it did not exist. */
  release(fh: number): boolean {
    const h = this.byFh.get(fh);
    if (h === undefined) return false;
    this.byFh.delete(fh);
    close(h.fd);
    return true;
  }

  clear(): void {
    for (const fh of [...this.byFh.keys()]) this.release(fh);
  }
}
