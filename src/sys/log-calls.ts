// The logger's own write path: each log line goes to its fd with write(2) on the thread
// that logs it, finished before the call returns. Not node:fs and not process.stderr:
// a worker thread's process.stderr is a stream forwarded through the main thread's event
// loop, whose unsent part dies with the process (the device thread's lines were lost on
// every exit); and on a pipe or socket, Node's own stderr turns the shared file
// description O_NONBLOCK and queues what does not fit, which process.exit drops.
// So here a full non-blocking pipe is waited for with poll(2), as a blocking fd would be,
// and a short write is finished. A line that cannot be written (EPIPE: nobody reads;
// EBADF: no fd 2) is dropped: logging never throws and never stops the daemon.
import { constants as osConstants } from 'node:os';
import { libc, lastErrno } from './libc.js';

const writeRaw = libc.func('long write(int fd, const void *buf, unsigned long count)');
const pollRaw = libc.func('int poll(void *fds, unsigned long nfds, int timeout)');

const EAGAIN = osConstants.errno.EAGAIN;
const EINTR = osConstants.errno.EINTR;

/** struct pollfd { int fd; short events; short revents; } */
const POLLFD_SIZE = 8;
const POLLFD_EVENTS_OFFSET = 4;
const POLLOUT = 0x004;
const POLL_FOREVER = -1;

/** Lines up to this size are encoded into a reused buffer; longer ones (stack traces) get their own. */
const SCRATCH_SIZE = 16 * 1024;

// Module state is per thread (each worker has its own copy), so these are never shared.
const pollfd = Buffer.alloc(POLLFD_SIZE);
const scratch = Buffer.alloc(SCRATCH_SIZE);

/** Block until `fd` is writable or in error (the next write says which); false if poll itself failed. */
export function waitWritable(fd: number): boolean {
  pollfd.writeInt32LE(fd, 0);
  pollfd.writeInt16LE(POLLOUT, POLLFD_EVENTS_OFFSET);
  pollfd.writeInt16LE(0, POLLFD_EVENTS_OFFSET + 2);
  for (;;) {
    if (pollRaw(pollfd, 1, POLL_FOREVER) >= 0) return true;
    if (lastErrno() !== EINTR) return false;
  }
}

/**
 * write(2) all of `len` bytes of `buf` to `fd`, in order, from this thread: retried after
 * EINTR, waited for after EAGAIN, continued after a short write. Returns false when the fd
 * refused the rest (the errno is not ours to report: there is nowhere left to report it).
 */
export function writeFully(fd: number, buf: Buffer, len: number): boolean {
  let off = 0;
  while (off < len) {
    const n = Number(writeRaw(fd, off === 0 ? buf : buf.subarray(off), len - off));
    if (n >= 0) {
      off += n;
      continue;
    }
    const e = lastErrno();
    if (e === EINTR) continue;
    if (e === EAGAIN && waitWritable(fd)) continue;
    return false;
  }
  return true;
}

/**
 * Write `text` to `fd` as one write(2) where it fits (a pipe keeps writes of up to
 * PIPE_BUF, 4096 bytes, whole, so lines from two threads do not interleave). The UTF-8
 * bytes go through a reused buffer: no allocation per line.
 */
export function writeText(fd: number, text: string): boolean {
  // A UTF-16 unit takes at most 3 UTF-8 bytes; count exactly only when it might not fit.
  if (text.length * 3 > SCRATCH_SIZE && Buffer.byteLength(text) > SCRATCH_SIZE) {
    const big = Buffer.from(text);
    return writeFully(fd, big, big.length);
  }
  return writeFully(fd, scratch, scratch.write(text, 0));
}
