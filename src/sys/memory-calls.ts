// mmap/munmap, memfd_create, ftruncate and file seals through koffi, plus zero-copy Buffer views over
// mapped memory. The vhost-user backend maps the guest's RAM that the frontend shares as
// file descriptors; the test frontend creates that RAM as a memfd. Addresses are bigint
// (koffi hands pointers over as bigint); sizes and offsets are plain numbers below 2^53.
import koffi from 'koffi';
import { libc, check, lastErrno, SysError } from './libc.js';

const mmapRaw = libc.func('void *mmap(void *addr, size_t length, int prot, int flags, int fd, int64_t offset)');
const munmapRaw = libc.func('int munmap(void *addr, size_t length)');
const memfdCreateRaw = libc.func('int memfd_create(const char *name, unsigned int flags)');
const ftruncateRaw = libc.func('int ftruncate(int fd, int64_t length)');
const sysconfRaw = libc.func('long sysconf(int name)');
const fcntlSealsRaw = libc.func('int fcntl(int fd, int cmd, long arg)');

export const PROT_NONE = 0;
export const PROT_READ = 1;
export const PROT_WRITE = 2;
export const MAP_SHARED = 0x01;
export const MAP_PRIVATE = 0x02;
export const MAP_NORESERVE = 0x4000;

export const MFD_CLOEXEC = 1;
export const MFD_ALLOW_SEALING = 2;

const SC_PAGESIZE = 30;

// fcntl file seals (linux/fcntl.h): F_LINUX_SPECIFIC_BASE (1024) + 9 and + 10.
const F_ADD_SEALS = 1033;
const F_GET_SEALS = 1034;
export const F_SEAL_SEAL = 1;
export const F_SEAL_SHRINK = 2;
export const F_SEAL_GROW = 4;

/** (void *)-1 as koffi returns it. */
const MAP_FAILED = (1n << 64n) - 1n;

/**
 * The largest ArrayBuffer we ever create over foreign memory. Node aborts the whole process
 * (uncatchably) on an external buffer above its limit, so views are kept well below it.
 */
export const MAX_VIEW_BYTES = 2 ** 30;

export const PAGE_SIZE: number = Number(sysconfRaw(SC_PAGESIZE)) || 4096;

/** Map `length` bytes of `fd` at file `offset` (page aligned); returns the address. */
export function mmapFd(length: number, prot: number, flags: number, fd: number, offset: number): bigint {
  if (!Number.isSafeInteger(length) || length <= 0 || !Number.isSafeInteger(offset) || offset < 0) {
    throw new SysError('mmap', 22, `fd ${fd} length ${length} offset ${offset}`);
  }
  const ret: unknown = mmapRaw(null, length, prot, flags, fd, offset);
  const addr = toAddress(ret);
  if (addr === MAP_FAILED || addr === 0n) throw new SysError('mmap', lastErrno(), `fd ${fd} length ${length} offset ${offset}`);
  return addr;
}

export function munmap(addr: bigint, length: number): void {
  check(munmapRaw(addr, length), 'munmap');
}

export function memfdCreate(name: string, flags = MFD_CLOEXEC): number {
  return check(memfdCreateRaw(name, flags), 'memfd_create', name);
}

/** What sealShrink() found or did. */
export type ShrinkSeal = { sealed: true; added: boolean } | { sealed: false; reason: string };

/**
 * Make sure the file behind `fd` can no longer shrink: F_SEAL_SHRINK if it is not there
 * yet. Works on memfds made with MFD_ALLOW_SEALING, through a writable fd; other files
 * (memfds without it, /dev/shm or hugetlbfs files: F_SEAL_SEAL from birth; files on other
 * file systems: EINVAL) cannot be sealed, and the reason says why.
 */
export function sealShrink(fd: number): ShrinkSeal {
  const seals = fcntlSealsRaw(fd, F_GET_SEALS, 0);
  if (seals < 0) return { sealed: false, reason: `F_GET_SEALS: ${new SysError('fcntl', lastErrno()).code} (the file does not support seals)` };
  if ((seals & F_SEAL_SHRINK) !== 0) return { sealed: true, added: false };
  if ((seals & F_SEAL_SEAL) !== 0) return { sealed: false, reason: 'F_SEAL_SEAL is set without F_SEAL_SHRINK (a memfd made without MFD_ALLOW_SEALING, or a tmpfs/hugetlbfs file)' };
  if (fcntlSealsRaw(fd, F_ADD_SEALS, F_SEAL_SHRINK) < 0) return { sealed: false, reason: `F_ADD_SEALS(F_SEAL_SHRINK): ${new SysError('fcntl', lastErrno()).code}` };
  return { sealed: true, added: true };
}

export function ftruncate(fd: number, length: number): void {
  check(ftruncateRaw(fd, length), 'ftruncate', `fd ${fd}`);
}

/**
 * A Buffer over `length` bytes of mapped memory at `addr`, no copy. The caller keeps the
 * mapping alive for as long as the Buffer is used; touching it after munmap faults.
 */
export function viewBuffer(addr: bigint, length: number): Buffer {
  if (!Number.isSafeInteger(length) || length <= 0 || length > MAX_VIEW_BYTES) {
    throw new RangeError(`viewBuffer: length ${length} outside 1..${MAX_VIEW_BYTES}`);
  }
  return Buffer.from(koffi.view(addr, length));
}

function toAddress(ret: unknown): bigint {
  if (typeof ret === 'bigint') return ret;
  if (typeof ret === 'number') return BigInt(ret);
  if (ret === null || ret === undefined) return 0n;
  return koffi.address(ret);
}
