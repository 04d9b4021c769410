// A datagram connection to the local syslog socket (/dev/log), for --syslog. It is
// opened before the sandbox (the socket lives outside the shared dir) and then only
// written to with send(2); node:dgram has no unix-domain datagram sockets.
import { constants as osConstants } from 'node:os';
import { libc, check, lastErrno, SysError } from './libc.js';
import { waitWritable } from './log-calls.js';

const socketRaw = libc.func('int socket(int domain, int type, int protocol)');
const connectRaw = libc.func('int connect(int fd, const void *addr, unsigned int len)');
const sendRaw = libc.func('long send(int fd, const void *buf, unsigned long len, int flags)');
const closeRaw = libc.func('int close(int fd)');

const AF_UNIX = 1;
const SOCK_DGRAM = 2;
const SOCK_CLOEXEC = 0o2000000;
const EAGAIN = osConstants.errno.EAGAIN;
const EINTR = osConstants.errno.EINTR;
const SUN_PATH_OFFSET = 2;
const SOCKADDR_UN_SIZE = 110;

export const SYSLOG_PATH = '/dev/log';

/** Connect a datagram socket to `path`; throws SysError naming the path. */
export function connectSyslog(path = SYSLOG_PATH): number {
  const fd = check(socketRaw(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0), 'socket(AF_UNIX, SOCK_DGRAM)');
  const addr = Buffer.alloc(SOCKADDR_UN_SIZE);
  addr.writeUInt16LE(AF_UNIX, 0);
  const n = addr.write(path, SUN_PATH_OFFSET, 'utf8');
  if (n >= SOCKADDR_UN_SIZE - SUN_PATH_OFFSET) {
    closeRaw(fd);
    throw new SysError('connect', 36 /* ENAMETOOLONG */, path);
  }
  if (connectRaw(fd, addr, SUN_PATH_OFFSET + n + 1) < 0) {
    const e = lastErrno();
    closeRaw(fd);
    throw new SysError('connect', e, path);
  }
  return fd;
}

/**
 * Send one datagram, waiting while the receiver's queue is full (as glibc's syslog(3)
 * does) so that no line is lost to a busy syslog; the socket is blocking, EAGAIN is
 * handled in case it is not. A vanished syslog (ECONNREFUSED, ...) drops the line and
 * never stops the daemon: after the sandbox there is no /dev/log to reconnect to.
 */
export function sendSyslog(fd: number, message: Buffer): boolean {
  for (;;) {
    if (Number(sendRaw(fd, message, message.length, 0)) >= 0) return true;
    const e = lastErrno();
    if (e === EINTR) continue;
    if (e === EAGAIN && waitWritable(fd)) continue;
    return false;
  }
}
