// AF_UNIX stream sockets through koffi: Node's `net` cannot pass file descriptors
// (SCM_RIGHTS), and the vhost-user protocol hands over guest memory and eventfds that way.
// The daemon listens (listenUnix) before entering its sandbox; the device thread accepts
// and exchanges messages; the test frontend connects (connectUnix). msghdr, iovec and the
// control buffer live in one native block allocated once, so a message costs no allocation
// beyond copying its (small) payload in or out.
import koffi from 'koffi';
import fs from 'node:fs';
import path from 'node:path';
import { constants as osConstants } from 'node:os';
import { libc, check, lastErrno, SysError } from './libc.js';

const socketRaw = libc.func('int socket(int domain, int type, int protocol)');
const bindRaw = libc.func('int bind(int fd, const void *addr, unsigned int addrlen)');
const listenRaw = libc.func('int listen(int fd, int backlog)');
const connectRaw = libc.func('int connect(int fd, const void *addr, unsigned int addrlen)');
const accept4Raw = libc.func('int accept4(int fd, void *addr, void *addrlen, int flags)');
const recvmsgRaw = libc.func('long recvmsg(int fd, uintptr_t msg, int flags)');
const sendmsgRaw = libc.func('long sendmsg(int fd, uintptr_t msg, int flags)');
const closeRaw = libc.func('int close(int fd)');
const shutdownRaw = libc.func('int shutdown(int fd, int how)');
const pollRaw = libc.func('int poll(void *fds, unsigned long nfds, int timeout)');
const getgrnamRaw = libc.func('void *getgrnam(const char *name)');
const memcpyToNative = libc.func('void *memcpy(uintptr_t dest, const void *src, size_t n)');
const memcpyFromNative = libc.func('void *memcpy(void *dest, uintptr_t src, size_t n)');

export const AF_UNIX = 1;
export const SOCK_STREAM = 1;
export const SOCK_NONBLOCK = 0o4000;
export const SOCK_CLOEXEC = 0o2000000;
export const MSG_DONTWAIT = 0x40;
export const MSG_NOSIGNAL = 0x4000;
export const MSG_CMSG_CLOEXEC = 0x40000000;
const MSG_CTRUNC = 0x8;
const SOL_SOCKET = 1;
const SCM_RIGHTS = 1;
const SHUT_RDWR = 2;
export const POLLIN = 0x1;
export const POLLOUT = 0x4;

const { EAGAIN, EINTR, EINVAL, ENAMETOOLONG, ENOBUFS, ETIMEDOUT } = osConstants.errno;

/** Most descriptors a received message may carry (vhost-user sends at most 8). */
export const MAX_FDS_PER_MESSAGE = 16;
/** Most descriptors we send in one message (the kernel's SCM_MAX_FD is 253). */
export const MAX_FDS_SEND = 64;

// struct sockaddr_un: sa_family_t (u16) then sun_path[108].
const SUN_PATH_OFFSET = 2;
const SUN_PATH_MAX = 108;

// 64-bit struct msghdr, struct iovec and struct cmsghdr layouts (x86_64 and aarch64).
const MSGHDR = { name: 0, namelen: 8, iov: 16, iovlen: 24, control: 32, controllen: 40, flags: 48, size: 56 } as const;
const IOVEC = { base: 0, len: 8, size: 16 } as const;
const CMSG = { len: 0, level: 8, type: 12, data: 16 } as const;
const CMSG_SPACE_MAX = CMSG.data + 4 * MAX_FDS_SEND;

// One native block: msghdr | iovec | control buffer. Addresses never move.
const NATIVE_HDR_BYTES = MSGHDR.size + IOVEC.size + CMSG_SPACE_MAX;
const nativeHdr: bigint = koffi.address(koffi.alloc('uint8_t', NATIVE_HDR_BYTES));
const hdrView = Buffer.from(koffi.view(nativeHdr, NATIVE_HDR_BYTES));
const IOV_OFFSET = MSGHDR.size;
const CONTROL_OFFSET = MSGHDR.size + IOVEC.size;

// Native data area the payload is copied through; grows on demand.
let nativeData = 0n;
let nativeDataSize = 0;

function dataArea(size: number): bigint {
  if (size > nativeDataSize) {
    if (nativeData !== 0n) koffi.free(nativeData);
    nativeDataSize = Math.max(size, 4096);
    nativeData = koffi.address(koffi.alloc('uint8_t', nativeDataSize));
  }
  return nativeData;
}

function prepareHeader(data: bigint, length: number, controlLen: number): void {
  hdrView.fill(0, 0, NATIVE_HDR_BYTES);
  hdrView.writeBigUInt64LE(nativeHdr + BigInt(IOV_OFFSET), MSGHDR.iov);
  hdrView.writeBigUInt64LE(1n, MSGHDR.iovlen);
  hdrView.writeBigUInt64LE(controlLen > 0 ? nativeHdr + BigInt(CONTROL_OFFSET) : 0n, MSGHDR.control);
  hdrView.writeBigUInt64LE(BigInt(controlLen), MSGHDR.controllen);
  hdrView.writeBigUInt64LE(data, IOV_OFFSET + IOVEC.base);
  hdrView.writeBigUInt64LE(BigInt(length), IOV_OFFSET + IOVEC.len);
}

function cmsgSpace(nfds: number): number {
  return CMSG.data + Math.ceil((4 * nfds) / 8) * 8;
}

export function closeFd(fd: number): void {
  closeRaw(fd);
}

/** Shut down both directions (the peer sees EOF) without closing the descriptor. */
export function shutdownSocket(fd: number): void {
  shutdownRaw(fd, SHUT_RDWR);
}

/**
 * Receive up to `length` bytes into buf[offset..] and the descriptors sent with them
 * (appended to `fdsOut`, close-on-exec). Returns the byte count (0: the peer closed), or
 * -1 when nothing is there (non-blocking) or the call was interrupted. Truncated control
 * data (more descriptors than we accept) closes what arrived and throws.
 */
export function recvMsg(fd: number, buf: Buffer, offset: number, length: number, fdsOut: number[], flags = 0): number {
  if (length <= 0) return 0;
  const data = dataArea(length);
  prepareHeader(data, length, cmsgSpace(MAX_FDS_PER_MESSAGE));
  const n = Number(recvmsgRaw(fd, nativeHdr, flags | MSG_CMSG_CLOEXEC));
  if (n < 0) {
    const e = lastErrno();
    if (e === EAGAIN || e === EINTR) return -1;
    throw new SysError('recvmsg', e, `fd ${fd}`);
  }
  const got = collectFds(fdsOut);
  const msgFlags = hdrView.readInt32LE(MSGHDR.flags);
  if ((msgFlags & MSG_CTRUNC) !== 0) {
    for (const f of got) closeRaw(f);
    fdsOut.length -= got.length;
    throw new SysError('recvmsg', ENOBUFS, `fd ${fd}: control data truncated (too many descriptors)`);
  }
  if (n > 0) memcpyFromNative(buf.subarray(offset, offset + n), data, n);
  return n;
}

function collectFds(fdsOut: number[]): number[] {
  const got: number[] = [];
  const controlLen = Number(hdrView.readBigUInt64LE(MSGHDR.controllen));
  let pos = 0;
  while (pos + CMSG.data <= controlLen) {
    const base = CONTROL_OFFSET + pos;
    const cmsgLen = Number(hdrView.readBigUInt64LE(base + CMSG.len));
    if (cmsgLen < CMSG.data || pos + cmsgLen > controlLen) break;
    if (hdrView.readInt32LE(base + CMSG.level) === SOL_SOCKET && hdrView.readInt32LE(base + CMSG.type) === SCM_RIGHTS) {
      const count = Math.floor((cmsgLen - CMSG.data) / 4);
      for (let i = 0; i < count; i++) got.push(hdrView.readInt32LE(base + CMSG.data + 4 * i));
    }
    pos += Math.ceil(cmsgLen / 8) * 8;
  }
  fdsOut.push(...got);
  return got;
}

/** Send `data` with `fds` attached (SCM_RIGHTS). Returns bytes sent; throws on error. */
export function sendMsg(fd: number, data: Buffer, fds: readonly number[] = [], flags = 0): number {
  if (fds.length > MAX_FDS_SEND) throw new SysError('sendmsg', EINVAL, `${fds.length} descriptors`);
  const nat = dataArea(Math.max(data.length, 1));
  if (data.length > 0) memcpyToNative(nat, data, data.length);
  const controlLen = fds.length > 0 ? cmsgSpace(fds.length) : 0;
  prepareHeader(nat, data.length, controlLen);
  if (fds.length > 0) {
    const base = CONTROL_OFFSET;
    hdrView.writeBigUInt64LE(BigInt(CMSG.data + 4 * fds.length), base + CMSG.len);
    hdrView.writeInt32LE(SOL_SOCKET, base + CMSG.level);
    hdrView.writeInt32LE(SCM_RIGHTS, base + CMSG.type);
    fds.forEach((f, i) => hdrView.writeInt32LE(f, base + CMSG.data + 4 * i));
  }
  for (;;) {
    const n = Number(sendmsgRaw(fd, nativeHdr, flags | MSG_NOSIGNAL));
    if (n >= 0) return n;
    const e = lastErrno();
    if (e !== EINTR) throw new SysError('sendmsg', e, `fd ${fd}`);
  }
}

/**
 * Send all of `data` (fds with the first chunk). With `timeoutMs`, a peer that stops
 * reading makes this throw (ETIMEDOUT) instead of blocking the caller for ever.
 */
export function sendAll(fd: number, data: Buffer, fds: readonly number[] = [], timeoutMs = -1): void {
  const flags = timeoutMs >= 0 ? MSG_DONTWAIT : 0;
  let off = 0;
  let first = true;
  while (off < data.length || first) {
    let n: number;
    try {
      n = sendMsg(fd, data.subarray(off), first ? fds : [], flags);
    } catch (err) {
      if (!(err instanceof SysError) || err.errno !== EAGAIN) throw err;
      if (!pollFd(fd, POLLOUT, timeoutMs)) throw new SysError('sendmsg', ETIMEDOUT, `fd ${fd}: peer not reading for ${timeoutMs} ms`);
      continue;
    }
    off += n;
    first = false;
  }
}

/** Wait until fd is readable or timeoutMs passes; true when readable (or hung up). */
export function pollIn(fd: number, timeoutMs: number): boolean {
  return pollFd(fd, POLLIN, timeoutMs);
}

/** Wait for `events` (POLLIN/POLLOUT) on fd for up to timeoutMs (-1: for ever); true when ready. */
export function pollFd(fd: number, events: number, timeoutMs: number): boolean {
  const pfd = Buffer.alloc(8);
  pfd.writeInt32LE(fd, 0);
  pfd.writeInt16LE(events, 4);
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const left = timeoutMs < 0 ? -1 : Math.max(0, deadline - Date.now());
    const n = pollRaw(pfd, 1, left);
    if (n > 0) return true;
    if (n === 0) return false;
    if (lastErrno() !== EINTR) throw new SysError('poll', lastErrno(), `fd ${fd}`);
  }
}

function sockaddrUn(socketPath: string): Buffer {
  const bytes = Buffer.from(socketPath);
  if (bytes.length === 0 || bytes.length >= SUN_PATH_MAX) {
    throw new SysError('bind', ENAMETOOLONG, `${socketPath}: a socket path must be 1 to ${SUN_PATH_MAX - 1} bytes`);
  }
  const addr = Buffer.alloc(SUN_PATH_OFFSET + bytes.length + 1);
  addr.writeUInt16LE(AF_UNIX, 0);
  bytes.copy(addr, SUN_PATH_OFFSET);
  return addr;
}

/** Resolve a group name or number to a gid; throws when the name is unknown. */
export function groupId(group: string | number): number {
  if (typeof group === 'number') return group;
  if (/^\d+$/.test(group)) return Number(group);
  const ret: unknown = getgrnamRaw(group);
  const addr = typeof ret === 'bigint' ? ret : ret === null || ret === undefined ? 0n : koffi.address(ret);
  if (addr === 0n) throw new Error(`unknown group: ${group}`);
  // struct group: char *gr_name; char *gr_passwd; gid_t gr_gid; ...
  return Buffer.from(koffi.view(addr, 24)).readUInt32LE(16);
}

export interface ListenOptions {
  /** Group that may connect: the socket gets this group and mode 0660 (virtiofsd's --socket-group). */
  group?: string | number;
  backlog?: number;
}

/**
 * Create a listening AF_UNIX stream socket at `socketPath`. A stale socket file left there
 * is removed first; any other kind of file is an error, as with virtiofsd. The socket is
 * bound under a temporary name and renamed into place once it listens (and has its group
 * and mode), so whoever sees the path appear can connect at once.
 */
export function listenUnix(socketPath: string, opts: ListenOptions = {}): number {
  const dir = path.dirname(path.resolve(socketPath));
  let dirStat: fs.Stats;
  try {
    dirStat = fs.statSync(dir);
  } catch {
    throw new Error(`cannot create socket ${socketPath}: directory ${dir} does not exist`);
  }
  if (!dirStat.isDirectory()) throw new Error(`cannot create socket ${socketPath}: ${dir} is not a directory`);
  const gid = opts.group !== undefined ? groupId(opts.group) : undefined;
  sockaddrUn(socketPath); // length check before touching anything
  const existing = fs.lstatSync(socketPath, { throwIfNoEntry: false });
  if (existing !== undefined && !existing.isSocket()) {
    throw new Error(`cannot create socket ${socketPath}: a file that is not a socket is in the way`);
  }
  const tmp = `${socketPath}.${process.pid.toString(36)}${Math.floor(Math.random() * 1e6).toString(36)}`;
  const bindPath = Buffer.byteLength(tmp) < SUN_PATH_MAX ? tmp : socketPath;
  const addr = sockaddrUn(bindPath);
  if (bindPath === socketPath && existing !== undefined) fs.unlinkSync(socketPath);
  const fd = check(socketRaw(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0), 'socket');
  try {
    check(bindRaw(fd, addr, addr.length), 'bind', socketPath);
    if (gid !== undefined) {
      fs.chownSync(bindPath, -1, gid);
      fs.chmodSync(bindPath, 0o660);
    }
    check(listenRaw(fd, opts.backlog ?? 16), 'listen', socketPath);
    if (bindPath !== socketPath) fs.renameSync(bindPath, socketPath);
  } catch (err) {
    closeRaw(fd);
    if (bindPath !== socketPath) fs.rmSync(bindPath, { force: true });
    throw err;
  }
  return fd;
}

/**
 * Accept one connection (close-on-exec). Returns -1 when none is pending on a non-blocking
 * listener or the call was interrupted.
 */
export function acceptConnection(listenFd: number, flags = 0): number {
  const fd = accept4Raw(listenFd, null, null, SOCK_CLOEXEC | flags);
  if (fd < 0) {
    const e = lastErrno();
    if (e === EAGAIN || e === EINTR) return -1;
    throw new SysError('accept4', e, `fd ${listenFd}`);
  }
  return fd;
}

/** Connect to a listening AF_UNIX stream socket (the test frontend's side). */
export function connectUnix(socketPath: string): number {
  const addr = sockaddrUn(socketPath);
  const fd = check(socketRaw(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0), 'socket');
  if (connectRaw(fd, addr, addr.length) < 0) {
    const e = lastErrno();
    closeRaw(fd);
    throw new SysError('connect', e, socketPath);
  }
  return fd;
}
