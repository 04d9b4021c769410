// The contract between a transport (/dev/fuse or a virtqueue) and the FUSE server core.
// A transport hands over the request exactly as the client wrote it, possibly scattered
// over several buffers (virtqueue descriptors are views of guest memory), plus the
// buffers the reply may be written into. The core decodes, runs the operation and
// encodes the reply in place: no transport detail leaks into src/fs.

/** Where a request came from; a few INIT answers differ between the two. */
export type TransportKind = 'virtio' | 'devfuse';

export interface FuseSession {
  /**
   * Serve one request. `readable` holds the request bytes in order (header, arguments,
   * WRITE payload); `writable` is room for the reply (out header, then data).
   * Returns the number of reply bytes written across `writable`, or 0 when the opcode
   * gets no reply (FORGET, BATCH_FORGET, INTERRUPT). Never throws: a malformed request
   * is answered with an errno and logged.
   */
  handle(readable: readonly Buffer[], writable: readonly Buffer[]): number;
  /** True once DESTROY was served (a /dev/fuse transport then stops reading). */
  readonly destroyed: boolean;
}
