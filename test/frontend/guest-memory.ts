// Guest memory as a VMM holds it: regions of memfd-backed shared memory, each with a guest
// physical address (what descriptors carry) and a frontend "virtual" address (what
// SET_VRING_ADDR carries). The frontend maps each region in windows of at most 1 GiB, like
// the backend must (a bigger koffi view aborts Node). Virtual addresses are made up and far
// from the physical ones, so a backend that confuses the two address spaces fails loudly.
import { memfdCreate, mapShared, unmap, closeFd, type Mapping } from './sys-calls.js';

export const WINDOW = 1 << 30;
/** Frontend virtual address = guest physical address + this (per region, see uaddr). */
export const UADDR_BIAS = 0x7f00_0000_0000;

export interface RegionSpec {
  /** Guest physical address of the first byte. */
  gpa: number;
  size: number;
  /** Offset of the region inside its memfd (mmap_offset in SET_MEM_TABLE); default 0. */
  fileOffset?: number;
  /** Create the memfd with MFD_ALLOW_SEALING (the backend may then seal it); default false. */
  allowSealing?: boolean;
}

export interface Region {
  gpa: number;
  size: number;
  uaddr: number;
  fd: number;
  mmapOffset: number;
  windows: (Mapping | undefined)[];
  /** Bump allocator cursor (offset within the region). */
  next: number;
}

export class GuestMemory {
  readonly regions: Region[] = [];

  constructor(specs: readonly RegionSpec[]) {
    for (const s of specs) this.addRegion(s);
  }

  /** Add a region (memory hotplug); returns its index. */
  addRegion(s: RegionSpec): number {
    {
      const i = this.regions.length;
      const off = s.fileOffset ?? 0;
      const fd = memfdCreate(`vfs-guest-${i}`, off + s.size, s.allowSealing === true);
      this.regions.push({
        gpa: s.gpa,
        size: s.size,
        uaddr: s.gpa + UADDR_BIAS,
        fd,
        mmapOffset: off,
        windows: new Array<Mapping | undefined>(Math.ceil(s.size / WINDOW)),
        next: 0,
      });
      return i;
    }
  }

  regionOf(gpa: number): Region {
    for (const r of this.regions) if (gpa >= r.gpa && gpa < r.gpa + r.size) return r;
    throw new RangeError(`guest address 0x${gpa.toString(16)} is outside guest memory`);
  }

  /** Frontend virtual address of a guest physical address (for SET_VRING_ADDR). */
  uaddrOf(gpa: number): number {
    const r = this.regionOf(gpa);
    return gpa - r.gpa + r.uaddr;
  }

  private window(r: Region, w: number): Buffer {
    let m = r.windows[w];
    if (m === undefined) {
      const start = w * WINDOW;
      m = mapShared(r.fd, r.mmapOffset + start, Math.min(WINDOW, r.size - start));
      r.windows[w] = m;
    }
    return m.buf;
  }

  /** The pieces of guest memory covering [gpa, gpa+len), split at window and region ends. */
  slices(gpa: number, len: number): Buffer[] {
    const out: Buffer[] = [];
    while (len > 0) {
      const r = this.regionOf(gpa);
      const off = gpa - r.gpa;
      const w = Math.floor(off / WINDOW);
      const inWin = off - w * WINDOW;
      const buf = this.window(r, w);
      const n = Math.min(len, buf.length - inWin);
      out.push(buf.subarray(inWin, inWin + n));
      gpa += n;
      len -= n;
    }
    return out;
  }

  /** A Buffer over [gpa, gpa+len): must not cross a window or region end. */
  view(gpa: number, len: number): Buffer {
    const s = this.slices(gpa, len);
    if (s.length !== 1) throw new RangeError(`[0x${gpa.toString(16)}, +${len}) crosses a mapping boundary`);
    return s[0];
  }

  write(gpa: number, data: Buffer): void {
    let pos = 0;
    for (const s of this.slices(gpa, data.length)) {
      data.copy(s, 0, pos, pos + s.length);
      pos += s.length;
    }
  }

  read(gpa: number, len: number): Buffer {
    const s = this.slices(gpa, len);
    return s.length === 1 ? Buffer.from(s[0]) : Buffer.concat(s);
  }

  /**
   * Reserve `len` bytes aligned to `align` in region `regionIndex` (bump allocator, never
   * freed), at or after `atLeast` bytes into the region. Returns the guest physical address.
   */
  alloc(len: number, align = 64, regionIndex = 0, atLeast = 0): number {
    const r = this.regions[regionIndex];
    let off = Math.max(r.next, atLeast);
    off = Math.ceil(off / align) * align;
    // Keep every allocation inside one window so view() works on it.
    if (Math.floor(off / WINDOW) !== Math.floor((off + len - 1) / WINDOW)) off = Math.ceil(off / WINDOW) * WINDOW;
    if (off + len > r.size) throw new RangeError(`guest region ${regionIndex} full (${len} bytes wanted)`);
    r.next = off + len;
    return r.gpa + off;
  }

  close(): void {
    for (const r of this.regions) {
      for (const m of r.windows) if (m !== undefined) unmap(m);
      r.windows.fill(undefined);
      closeFd(r.fd);
    }
  }
}
