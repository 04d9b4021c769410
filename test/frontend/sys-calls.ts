// System calls the test frontend needs and node:fs/net lack: a unix stream socket that
// carries fds (SCM_RIGHTS), memfd + mmap for shared guest memory. Kept here, apart from
// the backend's src/sys bindings, so the frontend does not share code (and bugs) with the
// daemon it tests.
import koffi from 'koffi';
import { libc, check, lastErrno, SysError } from '../../src/sys/libc.js';

koffi.struct('vfs_fe_iovec', { iov_base: 'void *', iov_len: 'size_t' });
koffi.struct('vfs_fe_msghdr', {
  msg_name: 'void *',
  msg_namelen: 'uint32_t',
  msg_iov: 'void *',
  msg_iovlen: 'size_t',
  msg_control: 'void *',
  msg_controllen: 'size_t',
  msg_flags: 'int',
});

const socketRaw = libc.func('int socket(int domain, int type, int protocol)');
const connectRaw = libc.func('int connect(int fd, const void *addr, uint32_t len)');
const sendmsgRaw = libc.func('long sendmsg(int fd, vfs_fe_msghdr *msg, int flags)');
const recvmsgRaw = libc.func('long recvmsg(int fd, vfs_fe_msghdr *msg, int flags)');
const setsockoptRaw = libc.func('int setsockopt(int fd, int level, int name, const void *val, uint32_t len)');
const shutdownRaw = libc.func('int shutdown(int fd, int how)');
const closeRaw = libc.func('int close(int fd)');
const memfdCreateRaw = libc.func('int memfd_create(const char *name, unsigned int flags)');
const ftruncateRaw = libc.func('int ftruncate(int fd, int64_t length)');
const mmapRaw = libc.func('void *mmap(void *addr, size_t len, int prot, int flags, int fd, int64_t off)');
const munmapRaw = libc.func('int munmap(void *addr, size_t len)');
const fcntlRaw = libc.func('int fcntl(int fd, int cmd, long arg)');

const AF_UNIX = 1;
const SOCK_STREAM = 1;
const SOCK_CLOEXEC = 0o2000000;
const SOL_SOCKET = 1;
const SO_RCVTIMEO = 20;
const SCM_RIGHTS = 1;
const MSG_NOSIGNAL = 0x4000;
export const MSG_PEEK = 0x2;
const SHUT_RDWR = 2;
const MFD_CLOEXEC = 1;
const MFD_ALLOW_SEALING = 2;
const F_ADD_SEALS = 1033;
const F_GET_SEALS = 1034;
export const F_SEAL_SEAL = 1;
export const F_SEAL_SHRINK = 2;
export const F_SEAL_GROW = 4;
const PROT_READ = 1;
const PROT_WRITE = 2;
const MAP_SHARED = 1;

// struct cmsghdr: size_t cmsg_len; int cmsg_level; int cmsg_type; then data (aligned to 8).
const CMSG_HDR = 16;
const MAX_FDS = 32;

export function closeFd(fd: number): void {
  closeRaw(fd);
}

/** Connect a SOCK_STREAM unix socket to `path`; receive calls time out after `timeoutMs`. */
export function connectUnix(path: string, timeoutMs = 10000): number {
  const fd = check(socketRaw(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0), 'socket');
  const addr = Buffer.alloc(110);
  addr.writeUInt16LE(AF_UNIX, 0);
  const p = Buffer.from(path);
  if (p.length >= 108) throw new SysError('connect', 36 /* ENAMETOOLONG */, path);
  p.copy(addr, 2);
  if (connectRaw(fd, addr, 2 + p.length + 1) < 0) {
    const e = lastErrno();
    closeRaw(fd);
    throw new SysError('connect', e, path);
  }
  setRecvTimeout(fd, timeoutMs);
  return fd;
}

export function setRecvTimeout(fd: number, timeoutMs: number): void {
  const tv = Buffer.alloc(16);
  tv.writeBigInt64LE(BigInt(Math.floor(timeoutMs / 1000)), 0);
  tv.writeBigInt64LE(BigInt((timeoutMs % 1000) * 1000), 8);
  check(setsockoptRaw(fd, SOL_SOCKET, SO_RCVTIMEO, tv, 16), 'setsockopt(SO_RCVTIMEO)');
}

export function shutdownSocket(fd: number): void {
  shutdownRaw(fd, SHUT_RDWR);
}

/** Send all of `data` in one sendmsg, with `fds` attached as SCM_RIGHTS. Returns bytes sent. */
export function sendWithFds(fd: number, data: Buffer, fds: readonly number[] = []): number {
  let control: Buffer | null = null;
  if (fds.length > 0) {
    const len = CMSG_HDR + 4 * fds.length;
    control = Buffer.alloc((len + 7) & ~7);
    control.writeBigUInt64LE(BigInt(len), 0);
    control.writeInt32LE(SOL_SOCKET, 8);
    control.writeInt32LE(SCM_RIGHTS, 12);
    fds.forEach((f, i) => control?.writeInt32LE(f, CMSG_HDR + 4 * i));
  }
  const iov = [{ iov_base: data, iov_len: data.length }];
  const n = Number(
    sendmsgRaw(
      fd,
      {
        msg_name: null,
        msg_namelen: 0,
        msg_iov: koffi.as(iov, 'vfs_fe_iovec *'),
        msg_iovlen: 1,
        msg_control: control,
        msg_controllen: control?.length ?? 0,
        msg_flags: 0,
      },
      MSG_NOSIGNAL,
    ),
  );
  if (n < 0) throw new SysError('sendmsg', lastErrno());
  return n;
}

export interface Received {
  /** Bytes received; 0 means the peer closed the connection. */
  n: number;
  fds: number[];
}

/** One recvmsg into `buf` (at most `len` bytes); throws SysError (EAGAIN on timeout). */
export function recvWithFds(fd: number, buf: Buffer, len = buf.length, flags = 0): Received {
  const control = Buffer.alloc(CMSG_HDR + 4 * MAX_FDS);
  const target = len === buf.length ? buf : buf.subarray(0, len);
  const iov = [{ iov_base: target, iov_len: len }];
  const n = Number(
    recvmsgRaw(
      fd,
      {
        msg_name: null,
        msg_namelen: 0,
        msg_iov: koffi.as(iov, 'vfs_fe_iovec *'),
        msg_iovlen: 1,
        msg_control: control,
        msg_controllen: control.length,
        msg_flags: 0,
      },
      flags,
    ),
  );
  if (n < 0) throw new SysError('recvmsg', lastErrno());
  const fds: number[] = [];
  const clen = Number(control.readBigUInt64LE(0));
  if (clen > CMSG_HDR && control.readInt32LE(8) === SOL_SOCKET && control.readInt32LE(12) === SCM_RIGHTS) {
    for (let off = CMSG_HDR; off + 4 <= clen; off += 4) fds.push(control.readInt32LE(off));
  }
  return { n, fds };
}

/**
 * An anonymous shared-memory file of `size` bytes (sparse: pages are allocated on first
 * touch). Without `allowSealing` it is born with F_SEAL_SEAL (no seal can be added), like
 * QEMU's memory-backend-memfd with seal=off; with it, like seal=on before QEMU's own seals.
 */
export function memfdCreate(name: string, size: number, allowSealing = false): number {
  const fd = check(memfdCreateRaw(name, MFD_CLOEXEC | (allowSealing ? MFD_ALLOW_SEALING : 0)), 'memfd_create', name);
  if (ftruncateRaw(fd, size) < 0) {
    const e = lastErrno();
    closeRaw(fd);
    throw new SysError('ftruncate', e, name);
  }
  return fd;
}

/** ftruncate(2) as a frontend would do it to its own memory: 0, or the errno. */
export function truncateFd(fd: number, size: number): number {
  return ftruncateRaw(fd, size) < 0 ? lastErrno() : 0;
}

/** F_ADD_SEALS as QEMU's memory-backend-memfd does at creation: 0, or the errno. */
export function addSeals(fd: number, seals: number): number {
  return fcntlRaw(fd, F_ADD_SEALS, seals) < 0 ? lastErrno() : 0;
}

/** The file's seals (F_GET_SEALS), or -errno. */
export function getSeals(fd: number): number {
  const r = fcntlRaw(fd, F_GET_SEALS, 0);
  return r < 0 ? -lastErrno() : r;
}

/** A MAP_SHARED mapping of fd[offset, offset+len) and a Buffer over it (len must stay below 4 GiB). */
export interface Mapping {
  ptr: unknown;
  len: number;
  buf: Buffer;
}

export function mapShared(fd: number, offset: number, len: number): Mapping {
  const ptr: unknown = mmapRaw(null, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, offset);
  if (ptr === null || koffi.address(ptr) === 0xffffffffffffffffn) {
    throw new SysError('mmap', lastErrno(), `fd ${fd} +${offset} len ${len}`);
  }
  return { ptr, len, buf: Buffer.from(koffi.view(ptr, len)) };
}

export function unmap(m: Mapping): void {
  munmapRaw(m.ptr, m.len);
}
