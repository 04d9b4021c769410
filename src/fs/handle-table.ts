// Open files and directories: handles, real fds the guest names by fh. Each holds its
// inode (a guest may FORGET a directory it still reads) and counts against the inode
// table's fd budget; with --queue-threads each is also published to the queue threads
// (shared-handles.ts) and withdrawn before its fd is closed.
import { close } from '../sys/file-calls.js';
import type { Inode, InodeTable } from './inodes.js';
import type { SharedHandles } from './shared-handles.js';

export interface Handle {
  readonly fh: number;
  readonly fd: number;
  readonly inode: Inode;
  /** The host open flags (what a migration destination reopens it with). */
  readonly flags: number;
}

export class HandleTable {
  private readonly byFh = new Map<number, Handle>();
  private nextFh = 1;
  /** With --queue-threads: the handles published to the threads that serve READ/WRITE. */
  shared: SharedHandles | undefined;

  constructor(private readonly inodes: InodeTable) {}

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

  add(fd: number, inode: Inode, flags = 0): Handle {
    return this.put({ fh: this.nextFh++, fd, inode, flags });
  }

  /** Every open handle (migration). */
  all(): Handle[] {
    return [...this.byFh.values()];
  }

  /** Migration destination: a reopened handle under the fh the guest knows it by. */
  restore(fh: number, fd: number, inode: Inode, flags: number): Handle {
    this.nextFh = Math.max(this.nextFh, fh + 1);
    return this.put({ fh, fd, inode, flags });
  }

  private put(h: Handle): Handle {
    this.byFh.set(h.fh, h);
    this.shared?.publish(h.fh, h.fd, h.inode.nodeid);
    this.inodes.handleFds++;
    // An open handle keeps its inode (a guest may FORGET a directory it still reads).
    this.inodes.pin(h.inode);
    return h;
  }

  /** Close and drop a handle; returns false when it did not exist. */
  release(fh: number): boolean {
    const h = this.byFh.get(fh);
    if (h === undefined) return false;
    this.byFh.delete(fh);
    // No queue thread may be inside a read or write on the fd when it is closed (and reused).
    this.shared?.withdraw(fh);
    close(h.fd);
    this.inodes.handleFds--;
    this.inodes.unpin(h.inode);
    return true;
  }

  clear(): void {
    for (const fh of [...this.byFh.keys()]) this.release(fh);
  }
}
