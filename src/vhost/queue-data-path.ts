// What a queue thread serves itself: READ and WRITE on a handle the owner has published
// (fs/shared-handles.ts), straight between the file and guest memory. Everything else, and
// every READ/WRITE this path is not sure about (a handle it does not have, a malformed
// request, a write that must clear setuid/setgid, a read-only share), goes to the owner of
// the FUSE state, which answers it exactly as on its own queues: FORWARD tells the caller so.
import { Op, ReadIn, WriteIn, WriteOut, FUSE_WRITE_KILL_SUIDGID } from '../fs/fuse-abi.js';
import { OUT_HEADER_SIZE, Reply, Request } from '../fs/request.js';
import { rangesIo } from '../fs/ranges-io.js';
import type { Segments } from '../fs/session.js';
import type { SharedHandles } from '../fs/shared-handles.js';
import { setU32 } from '../le-bytes.js';

/** handle()'s answer for a chain the owner must serve. */
export const FORWARD = -1;

export class QueueDataPath {
  private readonly req: Request;
  private readonly reply = new Reply();

  /** maxRequest: the largest request accepted, as the owner's (a WRITE payload stays in guest memory). */
  constructor(private readonly handles: SharedHandles, private readonly readonly: boolean, maxRequest: number) {
    this.req = new Request(maxRequest);
  }

  /** Serve one chain: the reply length, or FORWARD. Never throws for guest input. */
  handle(readable: Segments, writable: Segments): number {
    if (readable.bytes < OUT_HEADER_SIZE || !readable.addressed || !writable.addressed) return FORWARD;
    const req = this.req;
    // Only READ and WRITE are looked at; the opcode is at offset 4 of the in-header.
    const op = peekOpcode(readable);
    if (op !== Op.READ && (op !== Op.WRITE || this.readonly)) return FORWARD;
    if (req.load(readable) !== null) return FORWARD;
    const reply = this.reply;
    reply.begin(writable);
    return op === Op.READ ? this.read(req, reply) : this.write(req, reply);
  }

  private read(req: Request, reply: Reply): number {
    if (req.u64Big(ReadIn.off.offset)) return FORWARD;
    const fh = req.u64(ReadIn.off.fh);
    const fd = this.handles.pin(fh, req.nodeid);
    if (fd < 0) return FORWARD;
    let n: number;
    try {
      const size = reply.room(req.u32(ReadIn.off.size));
      const t = reply.target as Segments;
      n = size === 0 ? 0 : rangesIo(fd, t, OUT_HEADER_SIZE, OUT_HEADER_SIZE + size, req.u64(ReadIn.off.offset), false);
    } finally {
      this.handles.unpin(fh);
    }
    reply.dataInPlace = true;
    return reply.finish(req, n);
  }

  private write(req: Request, reply: Reply): number {
    if (req.u64Big(WriteIn.off.offset) || (req.u32(WriteIn.off.writeFlags) & FUSE_WRITE_KILL_SUIDGID) !== 0) return FORWARD;
    if (!reply.reserve(WriteOut.size)) return FORWARD;
    const src = req.source;
    if (src === undefined) return FORWARD;
    const fh = req.u64(WriteIn.off.fh);
    const fd = this.handles.pin(fh, req.nodeid);
    if (fd < 0) return FORWARD;
    let n: number;
    try {
      n = req.payloadLen === 0 ? 0 : rangesIo(fd, src, req.payloadFrom, req.payloadFrom + req.payloadLen, req.u64(WriteIn.off.offset), true);
    } finally {
      this.handles.unpin(fh);
    }
    if (n < 0) return reply.finish(req, n);
    setU32(reply.out, OUT_HEADER_SIZE + WriteOut.off.size, n);
    setU32(reply.out, OUT_HEADER_SIZE + WriteOut.off.padding, 0);
    return reply.finish(req, WriteOut.size);
  }
}

/** The opcode (u32 at offset 4) of a request spread over `segs`. */
function peekOpcode(segs: Segments): number {
  let pos = 0;
  let op = 0;
  for (let i = 0; i < segs.count && pos < 8; i++) {
    const b = segs.bufs[i] as Buffer;
    const o = segs.offs[i] as number;
    const l = segs.lens[i] as number;
    for (let j = 0; j < l && pos < 8; j++, pos++) if (pos >= 4) op |= (b[o + j] as number) << (8 * (pos - 4));
  }
  return pos < 8 ? -1 : op >>> 0;
}
