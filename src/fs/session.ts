// The contract between a transport (/dev/fuse or a virtqueue) and the FUSE server core.
// A transport hands over the request exactly as the client wrote it, possibly scattered
// over several buffers (virtqueue descriptors are ranges of guest memory), plus the
// buffers the reply may be written into. The core decodes, runs the operation and
// encodes the reply: no transport detail leaks into src/fs.
//
// Scattered bytes are a Segments list: (backing buffer, offset, length) triples, plus the
// host address of each range when the transport knows it (mmap'd guest memory). Making a
// Buffer view per descriptor cost more than the rest of a GETATTR's decoding (see
// bench/README.md, "CPU per request"): the virtqueue fills these parallel arrays, the
// core copies the small part of a request out of them and moves bulk data with preadv /
// pwritev straight from the addresses, so a request allocates no objects at all.

/** Where a request came from; a few INIT answers differ between the two. */
export type TransportKind = 'virtio' | 'devfuse';

/** Ranges of bytes, in order, reused from request to request (count, not length, says how many are live). */
export class Segments {
  /** The buffer each range lies in (a guest-memory window, or a transport buffer). */
  readonly bufs: Buffer[] = [];
  /** Offset of each range in its buffer. */
  readonly offs: number[] = [];
  readonly lens: number[] = [];
  /** Host virtual address of each range's first byte; -1 when the transport did not give one. */
  readonly addrs: number[] = [];
  count = 0;
  /** Sum of lens[0..count). */
  bytes = 0;

  clear(): void {
    this.count = 0;
    this.bytes = 0;
  }

  push(buf: Buffer, off: number, len: number, addr: number): void {
    const i = this.count++;
    this.bufs[i] = buf;
    this.offs[i] = off;
    this.lens[i] = len;
    this.addrs[i] = addr;
    this.bytes += len;
  }

  /** Replace the list with whole Buffers (no addresses). */
  setBuffers(list: readonly Buffer[]): this {
    this.clear();
    for (const b of list) this.push(b, 0, b.length, -1);
    return this;
  }

  /** True when every range has a host address (bulk data can go through preadv/pwritev). */
  get addressed(): boolean {
    for (let i = 0; i < this.count; i++) if (this.addrs[i] < 0) return false;
    return true;
  }

  /** A Buffer view of range i (allocates: for tests, logs and the rare slow paths). */
  view(i: number): Buffer {
    const b = this.bufs[i] as Buffer;
    const o = this.offs[i] as number;
    return o === 0 && this.lens[i] === b.length ? b : b.subarray(o, o + (this.lens[i] as number));
  }

  /** Views of every range (allocates; see view()). */
  views(): Buffer[] {
    const out: Buffer[] = [];
    for (let i = 0; i < this.count; i++) out.push(this.view(i));
    return out;
  }
}

/** Live migration of a session's state (vhost-user DEVICE_STATE). */
export interface SessionMigration {
  /** The state as bytes (source, device stopped); a string says why it cannot be had. */
  save(): Buffer | string;
  /** Take the source's state (destination): undefined when in place, else why not. */
  load(data: Buffer): string | undefined;
}

export interface FuseSession {
  /**
   * Serve one request. `readable` holds the request bytes in order (header, arguments,
   * WRITE payload); `writable` is room for the reply (out header, then data).
   * Returns the number of reply bytes written across `writable`, or 0 when the opcode
   * gets no reply (FORGET, BATCH_FORGET, INTERRUPT). Never throws: a malformed request
   * is answered with an errno and logged.
   */
  handle(readable: readonly Buffer[], writable: readonly Buffer[]): number;
  /**
   * handle() over Segments (the virtqueue's path: no views made). Same contract. Optional:
   * a transport serves a session without it through handle() and views.
   */
  handleSegments?(readable: Segments, writable: Segments): number;
  /** True once DESTROY was served (a /dev/fuse transport then stops reading). */
  readonly destroyed: boolean;
  /** Live migration of the session's tables (absent: the transport offers none). */
  readonly migration?: SessionMigration;
}
