// The one handle on the C library that every FFI module in src/sys binds against,
// and the typed error those bindings throw. Node's fs lacks the *at calls, fd passing,
// mmap, epoll and the sandbox syscalls; we reach them through koffi.
import koffi from 'koffi';
import { constants as osConstants } from 'node:os';

export const libc = koffi.load('libc.so.6');

const errnoNames = new Map<number, string>();
for (const [name, value] of Object.entries(osConstants.errno)) {
  if (!errnoNames.has(value)) errnoNames.set(value, name);
}

/** Symbolic name of an errno value ("ENOENT"), or "E<n>" when unknown. */
export function errnoName(errno: number): string {
  return errnoNames.get(errno) ?? `E${errno}`;
}

/** A failed system call: which call, its errno, and the path or object it acted on. */
export class SysError extends Error {
  readonly errno: number;
  readonly code: string;
  readonly syscall: string;
  readonly target: string | undefined;

  constructor(syscall: string, errno: number, target?: string) {
    const code = errnoName(errno);
    super(`${syscall}${target !== undefined ? ` ${target}` : ''}: ${code}`);
    this.name = 'SysError';
    this.errno = errno;
    this.code = code;
    this.syscall = syscall;
    this.target = target;
  }
}

/** The errno left by the last koffi call on this thread. */
export function lastErrno(): number {
  return koffi.errno();
}

/** Throw a SysError when a libc call returned -1 (or any negative value); pass the value through otherwise. */
export function check(ret: number, syscall: string, target?: string): number {
  if (ret < 0) throw new SysError(syscall, koffi.errno(), target);
  return ret;
}

/** Like check() for calls returning a 64-bit value as bigint. */
export function checkBig(ret: bigint, syscall: string, target?: string): bigint {
  if (ret < 0n) throw new SysError(syscall, koffi.errno(), target);
  return ret;
}

/** errno of a Node fs exception (negative errno in err.errno), or EIO when it has none. */
export function errnoOf(err: unknown): number {
  if (err instanceof SysError) return err.errno;
  if (typeof err === 'object' && err !== null && 'errno' in err) {
    const e = (err as { errno: unknown }).errno;
    if (typeof e === 'number') return Math.abs(e);
  }
  return osConstants.errno.EIO;
}
