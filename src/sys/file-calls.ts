// The *at file-system calls the passthrough core needs and node:fs lacks (or makes by
// path). Convention for this module: every wrapper returns the call's non-negative
// result, or -errno on failure, and never throws. The FUSE core turns a negative
// result straight into fuse_out_header.error, so the hot path builds no exception
// objects. Path and name arguments are Buffers holding NUL-terminated bytes (names
// sliced from the request or from getdents64 output are passed without conversion,
// so non-UTF-8 host names survive) or plain strings for fixed names ("", "." or an fd
// number under /proc/self/fd).
import koffi from 'koffi';
import { libc } from './libc.js';

type CStr = Buffer | string;

const errno = (): number => -koffi.errno();

const openatRaw = libc.func('int openat(int dirfd, const char *path, int flags, unsigned int mode)');
const closeRaw = libc.func('int close(int fd)');
const statxRaw = libc.func('int statx(int dirfd, const char *path, int flags, unsigned int mask, void *buf)');
const mkdiratRaw = libc.func('int mkdirat(int dirfd, const char *path, unsigned int mode)');
const mknodatRaw = libc.func('int mknodat(int dirfd, const char *path, unsigned int mode, uint64_t dev)');
const symlinkatRaw = libc.func('int symlinkat(const char *target, int dirfd, const char *path)');
const readlinkatRaw = libc.func('long readlinkat(int dirfd, const char *path, void *buf, unsigned long size)');
const linkatRaw = libc.func('int linkat(int olddirfd, const char *oldpath, int newdirfd, const char *newpath, int flags)');
const unlinkatRaw = libc.func('int unlinkat(int dirfd, const char *path, int flags)');
const renameat2Raw = libc.func(
  'int renameat2(int olddirfd, const char *oldpath, int newdirfd, const char *newpath, unsigned int flags)',
);
const fchownatRaw = libc.func('int fchownat(int dirfd, const char *path, unsigned int uid, unsigned int gid, int flags)');
const fchownRaw = libc.func('int fchown(int fd, unsigned int uid, unsigned int gid)');
const fchmodatRaw = libc.func('int fchmodat(int dirfd, const char *path, unsigned int mode, int flags)');
const fchmodRaw = libc.func('int fchmod(int fd, unsigned int mode)');
const utimensatRaw = libc.func('int utimensat(int dirfd, const char *path, void *times, int flags)');
const futimensRaw = libc.func('int futimens(int fd, void *times)');
const ftruncateRaw = libc.func('int ftruncate(int fd, int64_t length)');
const fallocateRaw = libc.func('int fallocate(int fd, int mode, int64_t offset, int64_t len)');
const lseekRaw = libc.func('int64_t lseek(int fd, int64_t offset, int whence)');
const copyFileRangeRaw = libc.func(
  'long copy_file_range(int fdIn, void *offIn, int fdOut, void *offOut, unsigned long len, unsigned int flags)',
);
const getdents64Raw = libc.func('long getdents64(int fd, void *buf, unsigned long count)');
const fsyncRaw = libc.func('int fsync(int fd)');
const fdatasyncRaw = libc.func('int fdatasync(int fd)');
const syncfsRaw = libc.func('int syncfs(int fd)');
const fstatfsRaw = libc.func('int fstatfs(int fd, void *buf)');
const dupRaw = libc.func('int dup(int fd)');
const fgetxattrRaw = libc.func('long fgetxattr(int fd, const char *name, void *value, unsigned long size)');
const fsetxattrRaw = libc.func('int fsetxattr(int fd, const char *name, const void *value, unsigned long size, int flags)');
const flistxattrRaw = libc.func('long flistxattr(int fd, void *list, unsigned long size)');
const fremovexattrRaw = libc.func('int fremovexattr(int fd, const char *name)');
const syscall6 = libc.func('syscall', 'long', ['long', 'long', 'long', 'long', 'long', 'long', 'long']);
const preadvRaw = libc.func('long preadv(int fd, void *iov, int iovcnt, int64_t offset)');
const pwritevRaw = libc.func('long pwritev(int fd, void *iov, int iovcnt, int64_t offset)');

export const AT_FDCWD = -100;
export const AT_SYMLINK_NOFOLLOW = 0x100;
export const AT_REMOVEDIR = 0x200;
export const AT_SYMLINK_FOLLOW = 0x400;
export const AT_EMPTY_PATH = 0x1000;

export const O_RDONLY = 0;
export const O_WRONLY = 1;
export const O_RDWR = 2;
export const O_ACCMODE = 3;
export const O_CREAT = 0o100;
export const O_EXCL = 0o200;
export const O_NOCTTY = 0o400;
export const O_TRUNC = 0o1000;
export const O_APPEND = 0o2000;
export const O_NONBLOCK = 0o4000;
export const O_DIRECT = process.arch === 'arm64' ? 0o200000 : 0o40000;
export const O_NOATIME = 0o1000000; // the same on x86_64 and aarch64
export const O_DIRECTORY = process.arch === 'arm64' ? 0o40000 : 0o200000;
export const O_NOFOLLOW = process.arch === 'arm64' ? 0o100000 : 0o400000;
export const O_CLOEXEC = 0o2000000;
export const O_PATH = 0o10000000;
export const O_TMPFILE = 0o20000000 | O_DIRECTORY;

export const SEEK_SET = 0;
export const SEEK_DATA = 3;
export const SEEK_HOLE = 4;

export const S_IFMT = 0o170000;
export const S_IFDIR = 0o040000;
export const S_IFREG = 0o100000;
export const S_IFLNK = 0o120000;
export const S_ISUID = 0o4000;
export const S_ISGID = 0o2000;

export const STATX_BASIC_STATS = 0x7ff;
export const STATX_MNT_ID = 0x1000;
export const STATX_SIZE = 256;

/** struct statx field offsets (linux/stat.h). */
export const STX = {
  mask: 0, blksize: 4, attributes: 8, nlink: 16, uid: 20, gid: 24, mode: 28, ino: 32, size: 40,
  blocks: 48, atime: 64, btime: 80, ctime: 96, mtime: 112, rdevMajor: 128, rdevMinor: 132,
  devMajor: 136, devMinor: 140, mntId: 144,
} as const;

/** struct statfs on x86_64 and aarch64: eleven 8-byte words, then spare. */
export const STATFS_SIZE = 120;

export function openat(dirfd: number, path: CStr, flags: number, mode = 0): number {
  const r = openatRaw(dirfd, path, flags, mode);
  return r < 0 ? errno() : r;
}

export function close(fd: number): number {
  return closeRaw(fd) < 0 ? errno() : 0;
}

export function statx(dirfd: number, path: CStr, flags: number, mask: number, buf: Buffer): number {
  return statxRaw(dirfd, path, flags, mask, buf) < 0 ? errno() : 0;
}

export function mkdirat(dirfd: number, path: CStr, mode: number): number {
  return mkdiratRaw(dirfd, path, mode) < 0 ? errno() : 0;
}

export function mknodat(dirfd: number, path: CStr, mode: number, dev: number): number {
  return mknodatRaw(dirfd, path, mode, dev) < 0 ? errno() : 0;
}

export function symlinkat(target: CStr, dirfd: number, path: CStr): number {
  return symlinkatRaw(target, dirfd, path) < 0 ? errno() : 0;
}

export function readlinkat(dirfd: number, path: CStr, buf: Buffer, size: number): number {
  const r = Number(readlinkatRaw(dirfd, path, buf, size));
  return r < 0 ? errno() : r;
}

export function linkat(olddirfd: number, oldpath: CStr, newdirfd: number, newpath: CStr, flags: number): number {
  return linkatRaw(olddirfd, oldpath, newdirfd, newpath, flags) < 0 ? errno() : 0;
}

export function unlinkat(dirfd: number, path: CStr, flags: number): number {
  return unlinkatRaw(dirfd, path, flags) < 0 ? errno() : 0;
}

export function renameat2(olddirfd: number, oldpath: CStr, newdirfd: number, newpath: CStr, flags: number): number {
  return renameat2Raw(olddirfd, oldpath, newdirfd, newpath, flags) < 0 ? errno() : 0;
}

export function fchownat(dirfd: number, path: CStr, uid: number, gid: number, flags: number): number {
  return fchownatRaw(dirfd, path, uid, gid, flags) < 0 ? errno() : 0;
}

export function fchown(fd: number, uid: number, gid: number): number {
  return fchownRaw(fd, uid, gid) < 0 ? errno() : 0;
}

export function fchmodat(dirfd: number, path: CStr, mode: number, flags: number): number {
  return fchmodatRaw(dirfd, path, mode, flags) < 0 ? errno() : 0;
}

export function fchmod(fd: number, mode: number): number {
  return fchmodRaw(fd, mode) < 0 ? errno() : 0;
}

/** `times` is two struct timespec (atime, mtime): 32 bytes. */
export function utimensat(dirfd: number, path: CStr, times: Buffer, flags: number): number {
  return utimensatRaw(dirfd, path, times, flags) < 0 ? errno() : 0;
}

export function futimens(fd: number, times: Buffer): number {
  return futimensRaw(fd, times) < 0 ? errno() : 0;
}

export function ftruncate(fd: number, length: number): number {
  return ftruncateRaw(fd, length) < 0 ? errno() : 0;
}

export function fallocate(fd: number, mode: number, offset: number, len: number): number {
  return fallocateRaw(fd, mode, offset, len) < 0 ? errno() : 0;
}

/** Offsets beyond 2^53 are passed as bigint (directory cookies). */
export function lseek(fd: number, offset: number | bigint, whence: number): number {
  const r = Number(lseekRaw(fd, offset, whence));
  return r < 0 ? errno() : r;
}

/** offIn/offOut: 8-byte Buffers holding loff_t, updated by the kernel. */
export function copyFileRange(fdIn: number, offIn: Buffer, fdOut: number, offOut: Buffer, len: number, flags: number): number {
  const r = Number(copyFileRangeRaw(fdIn, offIn, fdOut, offOut, len, flags));
  return r < 0 ? errno() : r;
}

/**
 * preadv over a struct iovec array the caller filled with raw host addresses (guest memory
 * mapped by this process; see fs/request.ts IovecList). fs.readvSync needs a Buffer view
 * per range and validates each; this takes the addresses as they are.
 */
export function preadvAddr(fd: number, iov: Buffer, iovcnt: number, offset: number): number {
  const r = Number(preadvRaw(fd, iov, iovcnt, offset));
  return r < 0 ? errno() : r;
}

/** pwritev over raw host addresses, as preadvAddr. */
export function pwritevAddr(fd: number, iov: Buffer, iovcnt: number, offset: number): number {
  const r = Number(pwritevRaw(fd, iov, iovcnt, offset));
  return r < 0 ? errno() : r;
}

export function getdents64(fd: number, buf: Buffer, count: number): number {
  const r = Number(getdents64Raw(fd, buf, count));
  return r < 0 ? errno() : r;
}

export function fsync(fd: number, dataOnly: boolean): number {
  return (dataOnly ? fdatasyncRaw(fd) : fsyncRaw(fd)) < 0 ? errno() : 0;
}

export function syncfs(fd: number): number {
  return syncfsRaw(fd) < 0 ? errno() : 0;
}

export function fstatfs(fd: number, buf: Buffer): number {
  return fstatfsRaw(fd, buf) < 0 ? errno() : 0;
}

export function dup(fd: number): number {
  const r = dupRaw(fd);
  return r < 0 ? errno() : r;
}

export function fgetxattr(fd: number, name: CStr, value: Buffer | null, size: number): number {
  const r = Number(fgetxattrRaw(fd, name, value, size));
  return r < 0 ? errno() : r;
}

export function fsetxattr(fd: number, name: CStr, value: Buffer, size: number, flags: number): number {
  return fsetxattrRaw(fd, name, value, size, flags) < 0 ? errno() : 0;
}

export function flistxattr(fd: number, list: Buffer | null, size: number): number {
  const r = Number(flistxattrRaw(fd, list, size));
  return r < 0 ? errno() : r;
}

export function fremovexattr(fd: number, name: CStr): number {
  return fremovexattrRaw(fd, name) < 0 ? errno() : 0;
}

// Extended attributes of symlinks and special files cannot go through a reopened fd
// (opening a fifo or device has side effects, a symlink cannot be opened at all) and
// node offers no path-relative variant. Linux 6.13 added the *xattrat syscalls; they
// refuse O_PATH fds with AT_EMPTY_PATH, but given (procSelfFd, "<fd>") they follow the
// /proc magic link onto the inode itself (a symlink stays the symlink). Their numbers
// are the same on x86_64 and aarch64 (the new generic table). On older kernels they
// answer ENOSYS, which the core reports as EOPNOTSUPP for those file types.
const SYS_SETXATTRAT = 463;
const SYS_GETXATTRAT = 464;
const SYS_LISTXATTRAT = 465;
const SYS_REMOVEXATTRAT = 466;
const XATTR_ARGS_SIZE = 16; // struct xattr_args { u64 value; u32 size; u32 flags; }
const xattrArgs = Buffer.alloc(XATTR_ARGS_SIZE);

function setXattrArgs(value: Buffer | null, size: number, flags: number): void {
  xattrArgs.writeBigUInt64LE(value === null ? 0n : addr(value), 0);
  xattrArgs.writeUInt32LE(size, 8);
  xattrArgs.writeUInt32LE(flags, 12);
}

function cstrArg(s: CStr): Buffer {
  return typeof s === 'string' ? Buffer.from(s + '\0') : s;
}

function addr(b: Buffer): bigint {
  return BigInt(koffi.address(b));
}

export function getxattrAt(dirfd: number, path: CStr, atFlags: number, name: CStr, value: Buffer | null, size: number): number {
  setXattrArgs(value, size, 0);
  const r = Number(syscall6(SYS_GETXATTRAT, dirfd, addr(cstrArg(path)), atFlags, addr(cstrArg(name)), addr(xattrArgs), XATTR_ARGS_SIZE));
  return r < 0 ? errno() : r;
}

export function setxattrAt(dirfd: number, path: CStr, atFlags: number, name: CStr, value: Buffer, size: number, flags: number): number {
  setXattrArgs(value, size, flags);
  const r = Number(syscall6(SYS_SETXATTRAT, dirfd, addr(cstrArg(path)), atFlags, addr(cstrArg(name)), addr(xattrArgs), XATTR_ARGS_SIZE));
  return r < 0 ? errno() : r;
}

export function listxattrAt(dirfd: number, path: CStr, atFlags: number, list: Buffer | null, size: number): number {
  const r = Number(syscall6(SYS_LISTXATTRAT, dirfd, addr(cstrArg(path)), atFlags, list === null ? 0n : addr(list), size, 0));
  return r < 0 ? errno() : r;
}

export function removexattrAt(dirfd: number, path: CStr, atFlags: number, name: CStr): number {
  const r = Number(syscall6(SYS_REMOVEXATTRAT, dirfd, addr(cstrArg(path)), atFlags, addr(cstrArg(name)), 0, 0));
  return r < 0 ? errno() : r;
}

// ---- file handles (--inode-file-handles=prefer|mandatory) ----

const nameToHandleAtRaw = libc.func('int name_to_handle_at(int dirfd, const char *path, void *handle, _Out_ int *mountId, int flags)');
const openByHandleAtRaw = libc.func('int open_by_handle_at(int mountFd, void *handle, int flags)');

/** struct file_handle: u32 handle_bytes, i32 handle_type, then the bytes (MAX_HANDLE_SZ 128). */
export const FILE_HANDLE = { bytes: 0, type: 4, data: 8, maxData: 128 } as const;
const handleScratch = Buffer.alloc(FILE_HANDLE.data + FILE_HANDLE.maxData);
const mountIdOut = [0];

/**
 * The file handle of `path` in `dirfd` (AT_EMPTY_PATH with ""), as a fresh Buffer
 * holding a struct file_handle of its exact size, or -errno (EOPNOTSUPP: the file
 * system has none).
 */
export function nameToHandleAt(dirfd: number, path: CStr, flags: number): Buffer | number {
  handleScratch.writeUInt32LE(FILE_HANDLE.maxData, FILE_HANDLE.bytes);
  if (nameToHandleAtRaw(dirfd, path, handleScratch, mountIdOut, flags) < 0) return errno();
  const n = handleScratch.readUInt32LE(FILE_HANDLE.bytes);
  return Buffer.from(handleScratch.subarray(0, FILE_HANDLE.data + Math.min(n, FILE_HANDLE.maxData)));
}

/** Open the inode a handle names, on the file system of `mountFd`; needs CAP_DAC_READ_SEARCH. */
export function openByHandleAt(mountFd: number, handle: Buffer, flags: number): number {
  const r = openByHandleAtRaw(mountFd, handle, flags);
  return r < 0 ? errno() : r;
}
