// eventfd and epoll through koffi: libuv can neither poll an eventfd nor wait on a set
// of them synchronously, and the device loops (vhost-user and /dev/fuse) block in
// epoll_wait on their own thread. struct epoll_event is packed (12 bytes) on x86_64
// and naturally aligned (16 bytes) on aarch64; we read it through a Buffer with the
// right stride instead of a koffi struct, so waiting allocates nothing.
import { libc, check, lastErrno, SysError } from './libc.js';
import { constants as osConstants } from 'node:os';

const eventfdRaw = libc.func('int eventfd(unsigned int initval, int flags)');
const epollCreate1 = libc.func('int epoll_create1(int flags)');
const epollCtlRaw = libc.func('int epoll_ctl(int epfd, int op, int fd, void *event)');
const epollWaitRaw = libc.func('int epoll_wait(int epfd, void *events, int maxevents, int timeout)');
const readRaw = libc.func('long read(int fd, void *buf, unsigned long count)');
const writeRaw = libc.func('long write(int fd, const void *buf, unsigned long count)');
const closeRaw = libc.func('int close(int fd)');

export const EFD_NONBLOCK = 0o4000;
export const EFD_CLOEXEC = 0o2000000;
export const EPOLL_CLOEXEC = 0o2000000;

export const EPOLLIN = 0x001;
export const EPOLLOUT = 0x004;
export const EPOLLERR = 0x008;
export const EPOLLHUP = 0x010;
export const EPOLLRDHUP = 0x2000;

const EPOLL_CTL_ADD = 1;
const EPOLL_CTL_DEL = 2;
const EPOLL_CTL_MOD = 3;

/** Size of struct epoll_event on this architecture, and the offset of its data field. */
export const EPOLL_EVENT_SIZE = process.arch === 'x64' ? 12 : 16;
const EPOLL_DATA_OFFSET = process.arch === 'x64' ? 4 : 8;

const EAGAIN = osConstants.errno.EAGAIN;
const EINTR = osConstants.errno.EINTR;

export function eventfd(initval = 0, flags = EFD_CLOEXEC | EFD_NONBLOCK): number {
  return check(eventfdRaw(initval, flags), 'eventfd');
}

export function closeFd(fd: number): void {
  closeRaw(fd);
}

const counter = Buffer.alloc(8);
/** The common value, encoded once: writeBigUInt64LE per interrupt showed in profiles. */
const ONE = Buffer.from([1, 0, 0, 0, 0, 0, 0, 0]);

/** Add `value` to an eventfd's counter (a kick, a call, or a stop request). */
export function eventfdWrite(fd: number, value = 1n): void {
  let buf = ONE;
  if (value !== 1n) {
    counter.writeBigUInt64LE(value, 0);
    buf = counter;
  }
  const n = Number(writeRaw(fd, buf, 8));
  if (n < 0 && lastErrno() !== EAGAIN) throw new SysError('write(eventfd)', lastErrno());
}

/** Drain an eventfd; returns the counter, or 0n when it was not signalled (non-blocking fd). */
export function eventfdRead(fd: number): bigint {
  const n = Number(readRaw(fd, counter, 8));
  if (n < 0) {
    const e = lastErrno();
    if (e === EAGAIN || e === EINTR) return 0n;
    throw new SysError('read(eventfd)', e);
  }
  return counter.readBigUInt64LE(0);
}

/** An epoll instance whose registrations carry a 32-bit token chosen by the caller. */
export class Epoll {
  readonly fd: number;
  private readonly ev = Buffer.alloc(EPOLL_EVENT_SIZE);
  private readonly out: Buffer;
  private readonly max: number;

  constructor(maxEvents = 64) {
    this.fd = check(epollCreate1(EPOLL_CLOEXEC), 'epoll_create1');
    this.max = maxEvents;
    this.out = Buffer.alloc(EPOLL_EVENT_SIZE * maxEvents);
  }

  private ctl(op: number, fd: number, events: number, token: number, name: string): void {
    this.ev.fill(0);
    this.ev.writeUInt32LE(events >>> 0, 0);
    this.ev.writeUInt32LE(token >>> 0, EPOLL_DATA_OFFSET);
    check(epollCtlRaw(this.fd, op, fd, this.ev), name, `fd ${fd}`);
  }

  add(fd: number, token: number, events = EPOLLIN): void {
    this.ctl(EPOLL_CTL_ADD, fd, events, token, 'epoll_ctl(ADD)');
  }

  modify(fd: number, token: number, events = EPOLLIN): void {
    this.ctl(EPOLL_CTL_MOD, fd, events, token, 'epoll_ctl(MOD)');
  }

  /** Remove fd; an fd that is not registered (or already closed) is ignored. */
  remove(fd: number): void {
    epollCtlRaw(this.fd, EPOLL_CTL_DEL, fd, null);
  }

  /**
   * Block until events arrive (timeoutMs -1: forever). Returns the count; read each with
   * token(i) and events(i). EINTR returns 0.
   */
  wait(timeoutMs = -1): number {
    const n = epollWaitRaw(this.fd, this.out, this.max, timeoutMs);
    if (n < 0) {
      const e = lastErrno();
      if (e === EINTR) return 0;
      throw new SysError('epoll_wait', e);
    }
    return n;
  }

  token(i: number): number {
    return this.out.readUInt32LE(i * EPOLL_EVENT_SIZE + EPOLL_DATA_OFFSET);
  }

  events(i: number): number {
    return this.out.readUInt32LE(i * EPOLL_EVENT_SIZE);
  }

  close(): void {
    closeRaw(this.fd);
  }
}

const pipe2Raw = libc.func('int pipe2(_Out_ int *fds, int flags)');
const O_CLOEXEC = 0o2000000;

/** A close-on-exec pipe outside Node's stream machinery: [readFd, writeFd]. */
export function pipeCloexec(): [number, number] {
  const fds = [0, 0];
  check(pipe2Raw(fds, O_CLOEXEC), 'pipe2');
  return [fds[0], fds[1]];
}
