// File data straight to and from guest memory: preadv/pwritev over the host addresses of a
// Segments list (no Buffer view per descriptor), IOV_MAX ranges per call. Used by READ and
// WRITE of the FUSE server and of the queue threads (vhost/queue-data-path.ts).
import { preadvAddr, pwritevAddr } from '../sys/file-calls.js';
import { IovecList } from './request.js';
import type { Segments } from './session.js';

const iovs = new IovecList();

/**
 * preadv/pwritev of the bytes [from, to) of `segs` (every range with an address) at file
 * offset `pos`, until done or short. Returns bytes moved, or -errno when the first call fails.
 */
export function rangesIo(fd: number, segs: Segments, from: number, to: number, pos: number, write: boolean): number {
  let done = 0;
  while (from + done < to) {
    iovs.fill(segs, from + done, to);
    if (iovs.count === 0) break;
    const r = write ? pwritevAddr(fd, iovs.buf, iovs.count, pos + done) : preadvAddr(fd, iovs.buf, iovs.count, pos + done);
    if (r < 0) return done > 0 ? done : r;
    done += r;
    if (r < iovs.bytes) break;
  }
  return done;
}
