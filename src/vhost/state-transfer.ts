// Moving the backend's state through the fd of SET_DEVICE_STATE_FD (a pipe QEMU made):
// the source writes the whole state and closes its end, the destination reads until end
// of file. It runs on the device thread right after the reply (QEMU reads or writes the
// other end only once it has that reply) while every ring is stopped, so nothing else
// waits on the thread; the time is still bounded: a peer that makes no progress for
// STALL_MS, or a transfer longer than TOTAL_MS or MAX_STATE_BYTES, fails the migration
// instead of hanging the daemon.
import fs from 'node:fs';
import { closeFd, pollFd, POLLIN, POLLOUT } from '../sys/socket-calls.js';

export const STALL_MS = 10_000;
export const TOTAL_MS = 120_000;
/** Largest state we accept on load (about 2 million inodes of long names). */
export const MAX_STATE_BYTES = 1 << 30;
/** A pipe page: after POLLOUT a write of this much does not block. */
const CHUNK = 4096;

export class TransferError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'TransferError';
  }
}

function waitFor(fd: number, events: number, start: number, what: string): void {
  const left = TOTAL_MS - (Date.now() - start);
  if (left <= 0) throw new TransferError(`${what}: not done after ${TOTAL_MS} ms`);
  if (!pollFd(fd, events, Math.min(left, STALL_MS))) throw new TransferError(`${what}: no progress for ${Math.min(left, STALL_MS)} ms`);
}

/** Write all of `data` to `fd`, then close it (always closed). */
export function writeState(fd: number, data: Buffer): void {
  const start = Date.now();
  try {
    let off = 0;
    while (off < data.length) {
      waitFor(fd, POLLOUT, start, `writing the state (${off} of ${data.length} bytes)`);
      try {
        off += fs.writeSync(fd, data, off, Math.min(CHUNK, data.length - off));
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code === 'EAGAIN' || code === 'EINTR') continue;
        throw new TransferError(`writing the state (${off} of ${data.length} bytes): ${(err as Error).message}`);
      }
    }
  } finally {
    closeFd(fd);
  }
}

/** Read `fd` to end of file, then close it (always closed). */
export function readState(fd: number): Buffer {
  const start = Date.now();
  const parts: Buffer[] = [];
  let total = 0;
  let buf = Buffer.allocUnsafe(64 * 1024);
  try {
    for (;;) {
      waitFor(fd, POLLIN, start, `reading the state (${total} bytes so far)`);
      let n: number;
      try {
        n = fs.readSync(fd, buf, 0, buf.length, null);
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code === 'EAGAIN' || code === 'EINTR') continue;
        throw new TransferError(`reading the state (${total} bytes so far): ${(err as Error).message}`);
      }
      if (n === 0) break;
      total += n;
      if (total > MAX_STATE_BYTES) throw new TransferError(`state larger than ${MAX_STATE_BYTES} bytes`);
      parts.push(buf.subarray(0, n));
      buf = Buffer.allocUnsafe(buf.length);
    }
  } finally {
    closeFd(fd);
  }
  return Buffer.concat(parts, total);
}
