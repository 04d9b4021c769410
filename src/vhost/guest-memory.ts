// The guest's RAM as the vhost-user frontend shares it: regions (guest physical range, the
// frontend's virtual address of the same bytes, a file descriptor and an offset in it),
// each mapped once MAP_SHARED. Every guest address is untrusted: translation checks bounds
// without ever adding two untrusted numbers (so nothing wraps or loses precision), and a
// range that leaves mapped memory is refused. Node aborts on an ArrayBuffer over more than
// a few GiB of foreign memory, so a region is seen through Buffer windows of at most 1 GiB;
// consecutive windows overlap by 1 MiB so that anything up to 1 MiB (every ring, every
// indirect table) is contiguous in one window, while larger buffers become several segments.
// A frontend may also shrink a region's file after we mapped it, which would turn our next
// access to the lost pages into a SIGBUS that kills the daemon: a region's file is sealed
// against shrinking when it can be (F_SEAL_SHRINK), and otherwise its mapping is covered by
// the SIGBUS guard (sys/sigbus-guard.ts), whose absorbed faults takeFault() reports so the
// device can fail the request and retire the region (quarantine()).
import fs from 'node:fs';
import { closeFd } from '../sys/socket-calls.js';
import { fstatfs } from '../sys/file-calls.js';
import { mmapFd, munmap, viewBuffer, sealShrink, MAX_VIEW_BYTES, PAGE_SIZE, PROT_READ, PROT_WRITE, MAP_SHARED } from '../sys/memory-calls.js';
import { sigbusGuard, lastGuardError, type SigbusGuard } from '../sys/sigbus-guard.js';
import { Segments } from '../fs/session.js';

/** Window size and the overlap between consecutive windows (see the header). */
export const WINDOW_BYTES = MAX_VIEW_BYTES;
export const WINDOW_OVERLAP = 1 << 20;
const WINDOW_STEP = WINDOW_BYTES - WINDOW_OVERLAP;

/** One region as the frontend describes it; all values below 2^53 (checked at the message boundary). */
export interface RegionSpec {
  guestAddr: number;
  size: number;
  userAddr: number;
  mmapOffset: number;
}

/** A region the frontend described badly (overlap, zero size, beyond its file, ...). */
export class GuestMemoryError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'GuestMemoryError';
  }
}

/**
 * How a region is kept from shrinking under us: its file sealed (by us, or already by the
 * frontend), its mapping covered by the SIGBUS guard, or neither (no guard on this
 * architecture: a shrink then kills the daemon, as it does virtiofsd).
 */
export type RegionProtection = 'sealed' | 'sealed by the frontend' | 'SIGBUS guard' | 'unprotected';

/** A mapped region described for another thread of this process (a queue thread). */
export interface SharedRegion extends RegionSpec {
  /** The mapping's base address (page start), as a decimal string (structured-clone safe). */
  base: string;
  protection: RegionProtection;
}

/** A SIGBUS the guard absorbed in guest memory: how many since the last look, where, in which region. */
export interface MemoryFault {
  count: number;
  address: bigint;
  region: RegionSpec | undefined;
}

/** statfs f_type of hugetlbfs: its mappings are replaced in huge pages, not 4 KiB ones. */
const HUGETLBFS_MAGIC = 0x958458f6;
const STATFS_BYTES = 120;

function guardPageSize(fd: number): number {
  const buf = Buffer.alloc(STATFS_BYTES);
  if (fstatfs(fd, buf) !== 0 || buf.readUInt32LE(0) !== HUGETLBFS_MAGIC) return PAGE_SIZE;
  // hugetlbfs reports its huge page size as st_blksize.
  return fs.fstatSync(fd).blksize;
}

function hex(n: number): string {
  return '0x' + n.toString(16);
}

export function describeRegion(r: RegionSpec): string {
  return `gpa ${hex(r.guestAddr)} size ${hex(r.size)} uva ${hex(r.userAddr)} offset ${hex(r.mmapOffset)}`;
}

class MappedRegion implements RegionSpec {
  readonly guestAddr: number;
  readonly size: number;
  readonly userAddr: number;
  readonly mmapOffset: number;
  private readonly base: bigint;
  /** Host address of region offset 0 (base + delta) as a number: below 2^47, so exact. */
  private readonly hostAddr: number;
  private readonly mapLength: number;
  private readonly delta: number;
  private readonly windows: (Buffer | undefined)[];
  readonly protection: RegionProtection;
  private readonly guard: SigbusGuard | undefined;

  /** False for a region adopted from another thread's table (adopt()): it is not ours to unmap. */
  private readonly owned: boolean;

  constructor(spec: RegionSpec, fd: number, adopted?: SharedRegion) {
    this.guestAddr = spec.guestAddr;
    this.size = spec.size;
    this.userAddr = spec.userAddr;
    this.mmapOffset = spec.mmapOffset;
    // mmap wants a page-aligned file offset; map from the page start and skip `delta`.
    this.delta = spec.mmapOffset % PAGE_SIZE;
    this.mapLength = spec.size + this.delta;
    this.windows = new Array<Buffer | undefined>(Math.max(1, Math.ceil((spec.size - WINDOW_OVERLAP) / WINDOW_STEP)));
    if (adopted !== undefined) {
      // The same mapping, seen from a queue thread: the owner's table keeps it alive (it
      // takes every queue back before it changes the table).
      this.owned = false;
      this.base = BigInt(adopted.base);
      this.hostAddr = Number(this.base) + this.delta;
      this.protection = adopted.protection;
      this.guard = undefined;
      return;
    }
    this.owned = true;
    // Seal before mapping: once F_SEAL_SHRINK is on, the size checked in validate() holds.
    const seal = sealShrink(fd);
    this.guard = seal.sealed ? undefined : sigbusGuard();
    this.protection = seal.sealed ? (seal.added ? 'sealed' : 'sealed by the frontend') : this.guard !== undefined ? 'SIGBUS guard' : 'unprotected';
    // The frontend could have shrunk the file between validate()'s fstat and the seal.
    if (seal.sealed) {
      const st = fs.fstatSync(fd);
      if (st.isFile() && st.size < spec.mmapOffset + spec.size) throw new GuestMemoryError(`region ${describeRegion(spec)}: file is only ${hex(st.size)} bytes`);
    }
    const pageSize = this.guard !== undefined ? guardPageSize(fd) : PAGE_SIZE;
    this.base = mmapFd(this.mapLength, PROT_READ | PROT_WRITE, MAP_SHARED, fd, spec.mmapOffset - this.delta);
    try {
      this.guard?.add(this.base, this.mapLength, pageSize);
    } catch (err) {
      munmap(this.base, this.mapLength);
      throw new GuestMemoryError(`region ${describeRegion(spec)}: cannot be guarded: ${(err as Error).message}`);
    }
    this.hostAddr = Number(this.base) + this.delta;
  }

  /** What another thread needs to see this mapping (adopt()). */
  share(): SharedRegion {
    return { guestAddr: this.guestAddr, size: this.size, userAddr: this.userAddr, mmapOffset: this.mmapOffset, base: this.base.toString(), protection: this.protection };
  }

  /** Whether `addr` lies in this region's mapping. */
  holds(addr: bigint): boolean {
    return addr >= this.base && addr - this.base < BigInt(this.mapLength);
  }

  /** Window k covers region offsets [k*STEP, min(k*STEP + WINDOW_BYTES, size)). */
  window(k: number): Buffer {
    let w = this.windows[k];
    if (w === undefined) {
      const start = k * WINDOW_STEP;
      const len = Math.min(WINDOW_BYTES, this.size - start);
      w = viewBuffer(this.base + BigInt(this.delta + start), len);
      this.windows[k] = w;
    }
    return w;
  }

  /**
   * A view of [off, off + len) of this region when it is contiguous in one window, else
   * undefined. Precondition: off < size.
   */
  slice(off: number, len: number): Buffer | undefined {
    if (len > this.size - off) return undefined;
    const k = Math.floor(off / WINDOW_STEP);
    const start = k * WINDOW_STEP;
    const w = this.window(k);
    const woff = off - start;
    if (len > w.length - woff) return undefined;
    return w.subarray(woff, woff + len);
  }

  /**
   * Ranges of [off, off + len) clipped to this region, pushed to `out` as (window, offset
   * in it, host address); returns bytes covered.
   */
  ranges(off: number, len: number, out: Segments): number {
    let done = 0;
    const want = Math.min(len, this.size - off);
    while (done < want) {
      const pos = off + done;
      const k = Math.floor(pos / WINDOW_STEP);
      const w = this.window(k);
      const woff = pos - k * WINDOW_STEP;
      const take = Math.min(want - done, w.length - woff);
      out.push(w, woff, take, this.hostAddr + pos);
      done += take;
    }
    return done;
  }

  /** Guest physical address of host address `host`, or -1 when it is not in this region. */
  guestOf(host: number): number {
    const off = host - this.hostAddr;
    return off >= 0 && off < this.size ? this.guestAddr + off : -1;
  }

  unmap(): void {
    this.windows.fill(undefined);
    if (!this.owned) return;
    // Out of the guard's table first: the address range may be reused by the next mmap.
    this.guard?.remove(this.base);
    munmap(this.base, this.mapLength);
  }
}

function overlaps(aStart: number, aSize: number, bStart: number, bSize: number): boolean {
  // Both ranges are validated to end below 2^53, so the sums are exact.
  return aStart < bStart + bSize && bStart < aStart + aSize;
}

/** The guest memory table: regions sorted by guest address, translation and bounds checks. */
export class GuestMemory {
  private regions: MappedRegion[] = [];
  /** Regions taken out of the table after a fault, still mapped (stale views may exist) until the table is cleared. */
  private retired: MappedRegion[] = [];
  private lastHit = 0;
  /** guestSegments() walks through this (see there). */
  private readonly scratchRanges = new Segments();
  /** Bumped whenever the table changes, so cached ring views are re-resolved. */
  generation = 0;

  constructor(readonly maxRegions: number) {}

  get regionCount(): number {
    return this.regions.length;
  }

  list(): readonly RegionSpec[] {
    return this.regions;
  }

  /** The table as another thread of this process can adopt it (see adopt()). */
  share(): SharedRegion[] {
    return this.regions.map((r) => r.share());
  }

  /**
   * A table over mappings another GuestMemory of this process made (share()), for a queue
   * thread: same translation and bounds checks, nothing mapped or unmapped here.
   */
  static adopt(shared: readonly SharedRegion[], maxRegions: number): GuestMemory {
    const m = new GuestMemory(maxRegions);
    m.regions = shared.map((r) => new MappedRegion(r, -1, r)).sort((a, b) => a.guestAddr - b.guestAddr);
    m.generation++;
    return m;
  }

  /** How each region of the table is protected against shrinking, in list() order. */
  protections(): readonly RegionProtection[] {
    return this.regions.map((r) => r.protection);
  }

  /** Why unprotected regions are unprotected (the guard's install error), if any is. */
  unprotectedReason(): string | undefined {
    return this.regions.some((r) => r.protection === 'unprotected') ? (lastGuardError()?.message ?? 'no SIGBUS guard') : undefined;
  }

  /** SIGBUS faults the guard absorbed since the last call (in any mapping it covers), if any. */
  takeFault(): MemoryFault | undefined {
    const f = sigbusGuard()?.takeFaults();
    if (f === undefined) return undefined;
    return { ...f, region: [...this.regions, ...this.retired].find((r) => r.holds(f.address)) };
  }

  /**
   * Take the region holding `addr` out of the table: its file shrank, so its pages are no
   * longer the guest's. It stays mapped (and guarded) until the table is cleared, since a
   * view of it may still be held; later translations into it fail like any address outside
   * memory. Returns the region, or undefined if none holds `addr`.
   */
  quarantine(addr: bigint): RegionSpec | undefined {
    const i = this.regions.findIndex((r) => r.holds(addr));
    if (i < 0) return undefined;
    const [r] = this.regions.splice(i, 1);
    this.retired.push(r);
    this.lastHit = 0;
    this.generation++;
    return r;
  }

  /** Check a region description against itself, its file and the current table. */
  validate(spec: RegionSpec, fd: number, table: readonly RegionSpec[] = this.regions): void {
    const { guestAddr, size, userAddr, mmapOffset } = spec;
    for (const v of [guestAddr, size, userAddr, mmapOffset]) {
      if (!Number.isSafeInteger(v) || v < 0) throw new GuestMemoryError(`region ${describeRegion(spec)}: value out of range`);
    }
    if (size === 0) throw new GuestMemoryError(`region ${describeRegion(spec)}: zero size`);
    const max = Number.MAX_SAFE_INTEGER;
    if (guestAddr > max - size || userAddr > max - size || mmapOffset > max - size) {
      throw new GuestMemoryError(`region ${describeRegion(spec)}: end beyond 2^53`);
    }
    for (const r of table) {
      if (overlaps(r.guestAddr, r.size, guestAddr, size)) {
        throw new GuestMemoryError(`region ${describeRegion(spec)} overlaps guest range of ${describeRegion(r)}`);
      }
      if (overlaps(r.userAddr, r.size, userAddr, size)) {
        throw new GuestMemoryError(`region ${describeRegion(spec)} overlaps user range of ${describeRegion(r)}`);
      }
    }
    let st: fs.Stats;
    try {
      st = fs.fstatSync(fd);
    } catch (err) {
      throw new GuestMemoryError(`region ${describeRegion(spec)}: bad descriptor ${fd}: ${(err as Error).message}`);
    }
    // Mapping past the end of a file would SIGBUS on first touch: refuse it up front.
    if (st.isFile() && st.size < mmapOffset + size) {
      throw new GuestMemoryError(`region ${describeRegion(spec)}: file is only ${hex(st.size)} bytes`);
    }
    if (!st.isFile() && !st.isCharacterDevice()) {
      throw new GuestMemoryError(`region ${describeRegion(spec)}: descriptor ${fd} is not a file`);
    }
  }

  /** Validate, map and add a region. The fd is consumed (closed) in every case. */
  add(spec: RegionSpec, fd: number): void {
    try {
      if (this.regions.length >= this.maxRegions) throw new GuestMemoryError(`too many regions (max ${this.maxRegions})`);
      this.validate(spec, fd);
      const region = new MappedRegion(spec, fd);
      this.regions.push(region);
      this.regions.sort((a, b) => a.guestAddr - b.guestAddr);
      this.generation++;
    } finally {
      closeFd(fd);
    }
  }

  /**
   * Replace the whole table (SET_MEM_TABLE). All regions are validated against each other
   * first; on any error the old table stays and every fd is closed.
   */
  replace(specs: readonly RegionSpec[], fds: readonly number[]): void {
    const fresh: MappedRegion[] = [];
    try {
      if (specs.length > this.maxRegions) throw new GuestMemoryError(`too many regions (max ${this.maxRegions})`);
      const checked: RegionSpec[] = [];
      specs.forEach((s, i) => {
        this.validate(s, fds[i], checked);
        checked.push(s);
      });
      for (let i = 0; i < specs.length; i++) fresh.push(new MappedRegion(specs[i], fds[i]));
    } catch (err) {
      for (const r of fresh) r.unmap();
      throw err;
    } finally {
      for (const fd of fds) closeFd(fd);
    }
    this.clear();
    this.regions = fresh.sort((a, b) => a.guestAddr - b.guestAddr);
    this.generation++;
  }

  /** Remove the region matching guest address, size and user address (REM_MEM_REG). */
  remove(spec: RegionSpec): boolean {
    const i = this.regions.findIndex((r) => r.guestAddr === spec.guestAddr && r.size === spec.size && r.userAddr === spec.userAddr);
    if (i < 0) return false;
    const [r] = this.regions.splice(i, 1);
    r.unmap();
    this.lastHit = 0;
    this.generation++;
    return true;
  }

  clear(): void {
    for (const r of this.regions) r.unmap();
    for (const r of this.retired) r.unmap();
    this.regions = [];
    this.retired = [];
    this.lastHit = 0;
    this.generation++;
  }

  private findGuest(gpa: number): MappedRegion | undefined {
    const rs = this.regions;
    const hit = rs[this.lastHit];
    if (hit !== undefined && gpa >= hit.guestAddr && gpa - hit.guestAddr < hit.size) return hit;
    let lo = 0;
    let hi = rs.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      const r = rs[mid];
      if (gpa < r.guestAddr) hi = mid - 1;
      else if (gpa - r.guestAddr >= r.size) lo = mid + 1;
      else {
        this.lastHit = mid;
        return r;
      }
    }
    return undefined;
  }

  private findUser(uva: number): MappedRegion | undefined {
    for (const r of this.regions) if (uva >= r.userAddr && uva - r.userAddr < r.size) return r;
    return undefined;
  }

  /**
   * Push views covering guest physical [gpa, gpa + len) onto `out` (one per window or
   * region crossed). Returns false, with `out` restored, if any byte is outside memory.
   * len 0 pushes nothing and succeeds.
   */
  guestSegments(gpa: number, len: number, out: Buffer[]): boolean {
    // The rare path (an indirect table that straddles windows, tests): views made from
    // guestRanges(), so the bounds checks live in one walk.
    const ranges = this.scratchRanges;
    ranges.clear();
    if (!this.guestRanges(gpa, len, ranges)) return false;
    for (let i = 0; i < ranges.count; i++) out.push(ranges.view(i));
    ranges.clear();
    return true;
  }

  /**
   * Ranges covering guest physical [gpa, gpa + len) pushed to `out` as (window, offset, host
   * address), one per window or region crossed, no views made: what the chain walker uses. Returns false, with `out` restored, if any byte is outside memory.
   */
  guestRanges(gpa: number, len: number, out: Segments): boolean {
    if (len === 0) return true;
    const mark = out.count;
    const markBytes = out.bytes;
    let cur = gpa;
    let left = len;
    while (left > 0) {
      if (!Number.isSafeInteger(cur)) break;
      const r = this.findGuest(cur);
      if (r === undefined) break;
      left -= r.ranges(cur - r.guestAddr, left, out);
      // Only continue into the next region when it starts exactly where this one ends.
      cur = r.guestAddr + r.size;
    }
    if (left === 0) return true;
    out.count = mark;
    out.bytes = markBytes;
    return false;
  }

  /** A single view of guest physical [gpa, gpa + len), or undefined if outside memory or not contiguous. */
  guestSlice(gpa: number, len: number): Buffer | undefined {
    const r = this.findGuest(gpa);
    return r === undefined ? undefined : r.slice(gpa - r.guestAddr, len);
  }

  /** Guest physical address of a host address in one of our mappings (dirty logging), or -1. */
  guestOfHost(host: number): number {
    for (const r of this.regions) {
      const g = r.guestOf(host);
      if (g >= 0) return g;
    }
    return -1;
  }

  /** A single view of the frontend's virtual [uva, uva + len) (ring addresses), or undefined. */
  userSlice(uva: number, len: number): Buffer | undefined {
    const r = this.findUser(uva);
    return r === undefined ? undefined : r.slice(uva - r.userAddr, len);
  }
}
