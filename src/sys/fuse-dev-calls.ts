// The raw calls the /dev/fuse transport makes on its hot path: read(2)/write(2) of whole
// FUSE messages straight into and out of reusable Buffers (node:fs would turn every EAGAIN
// into an exception and cannot take a non-blocking fd's errno quietly), plus fcntl(2) to
// make the device fd non-blocking so the loop's epoll can also honour its stop eventfd.
import { libc, check, lastErrno } from './libc.js';

const readRaw = libc.func('long read(int fd, void *buf, unsigned long count)');
const writeRaw = libc.func('long write(int fd, const void *buf, unsigned long count)');
const fcntlRaw = libc.func('int fcntl(int fd, int cmd, long arg)');

const F_GETFL = 3;
const F_SETFL = 4;
export const O_NONBLOCK = 0o4000;

/** read(2): bytes read, or the negated errno (no exception on the hot path). */
export function readInto(fd: number, buf: Buffer, len = buf.length): number {
  const n = Number(readRaw(fd, buf, len));
  return n < 0 ? -lastErrno() : n;
}

/** write(2) of the first `len` bytes: bytes written, or the negated errno. */
export function writeFrom(fd: number, buf: Buffer, len: number): number {
  const n = Number(writeRaw(fd, buf, len));
  return n < 0 ? -lastErrno() : n;
}

/** Set or clear O_NONBLOCK on an fd. */
export function setNonBlocking(fd: number, on = true): void {
  const flags = check(fcntlRaw(fd, F_GETFL, 0), 'fcntl(F_GETFL)', `fd ${fd}`);
  const next = on ? flags | O_NONBLOCK : flags & ~O_NONBLOCK;
  if (next !== flags) check(fcntlRaw(fd, F_SETFL, next), 'fcntl(F_SETFL)', `fd ${fd}`);
}
