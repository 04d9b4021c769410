// Dirty-page logging for live migration (VHOST_F_LOG_ALL with LOG_SHMFD). While QEMU copies
// guest RAM to the destination, pages the backend writes behind its back (READ replies,
// used-ring entries) must be marked in a bitmap QEMU shares with us, one bit per 4 KiB of
// guest physical memory, or the destination resumes with stale copies of them. QEMU sends
// the bitmap's fd with SET_LOG_BASE; we set bits with atomic ORs (QEMU clears them
// concurrently) and never touch anything past the size it gave, in a file that cannot shrink. A write we cannot place
// (an address outside every region) is not a guest page and needs no bit.
import fs from 'node:fs';
import { closeFd } from '../sys/socket-calls.js';
import { mmapFd, munmap, viewBuffer, sealShrink, MAX_VIEW_BYTES, PAGE_SIZE, PROT_READ, PROT_WRITE, MAP_SHARED } from '../sys/memory-calls.js';
import { LOG_PAGE } from './vhost-user-protocol.js';
import type { GuestMemory } from './guest-memory.js';
import type { Segments } from '../fs/session.js';

export class DirtyLog {
  private base = 0n;
  private mapLength = 0;
  private bits: Uint8Array | undefined;
  /** Pages the log covers (8 per byte). */
  private pages = 0;

  /** True while QEMU has asked for logging (LOG_ALL acked) and gave us a log. */
  enabled = false;

  get mapped(): boolean {
    return this.bits !== undefined;
  }

  /** Map the log QEMU sent: `size` bytes at `offset` of `fd` (taken: closed here). */
  map(fd: number, size: number, offset: number): string | undefined {
    try {
      if (size <= 0 || size > MAX_VIEW_BYTES) return `log of ${size} bytes`;
      const st = fs.fstatSync(fd);
      if (st.isFile() && st.size < offset + size) return `log file of ${st.size} bytes, ${offset + size} needed`;
      // QEMU makes the log a memfd sealed against shrinking. One that could shrink under our
      // mapping would turn the next logged write into a SIGBUS outside guest memory, which
      // the SIGBUS guard does not cover: refuse it.
      const seal = sealShrink(fd);
      if (!seal.sealed) return `the log cannot be sealed against shrinking (${seal.reason})`;
      const delta = offset % PAGE_SIZE;
      const len = size + delta;
      const base = mmapFd(len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, offset - delta);
      this.unmap();
      this.base = base;
      this.mapLength = len;
      const view = viewBuffer(base, len);
      this.bits = new Uint8Array(view.buffer, view.byteOffset + delta, size);
      this.pages = size * 8;
      return undefined;
    } catch (err) {
      return (err as Error).message;
    } finally {
      closeFd(fd);
    }
  }

  unmap(): void {
    if (this.bits === undefined) return;
    this.bits = undefined;
    munmap(this.base, this.mapLength);
    this.mapLength = 0;
    this.pages = 0;
  }

  /** Mark guest physical [gpa, gpa + len) dirty. */
  markGuest(gpa: number, len: number): void {
    const bits = this.bits;
    if (!this.enabled || bits === undefined || len <= 0 || gpa < 0) return;
    const last = Math.min(Math.floor((gpa + len - 1) / LOG_PAGE), this.pages - 1);
    for (let p = Math.floor(gpa / LOG_PAGE); p <= last; p++) Atomics.or(bits, p >>> 3, 1 << (p & 7));
  }

  /** Mark the first `len` bytes of `segs` (ranges with host addresses in guest memory) dirty. */
  markWritten(mem: GuestMemory, segs: Segments, len: number): void {
    if (!this.enabled || this.bits === undefined) return;
    let left = len;
    for (let i = 0; i < segs.count && left > 0; i++) {
      const n = Math.min(left, segs.lens[i] as number);
      const host = segs.addrs[i] as number;
      const gpa = host >= 0 ? mem.guestOfHost(host) : -1;
      if (gpa >= 0) this.markGuest(gpa, n);
      left -= n;
    }
  }
}
