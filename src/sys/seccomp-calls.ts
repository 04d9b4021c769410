// FFI for installing a seccomp filter: prctl(PR_SET_NO_NEW_PRIVS) (required before an
// unprivileged filter, and wanted anyway) and seccomp(SECCOMP_SET_MODE_FILTER) through
// syscall(2), since glibc 2.36 has no seccomp() wrapper. TSYNC applies the filter to every
// thread of the process: Node's libuv pool and V8 threads exist before user code runs.
import koffi from 'koffi';
import { SysError, libc } from './libc.js';

const PR_SET_NO_NEW_PRIVS = 38;
const PR_GET_NO_NEW_PRIVS = 39;
const PR_GET_SECCOMP = 21;
export const SECCOMP_SET_MODE_FILTER = 1;
export const SECCOMP_GET_ACTION_AVAIL = 2;
export const SECCOMP_FILTER_FLAG_TSYNC = 1;
export const SECCOMP_FILTER_FLAG_LOG = 2;

/** Syscall number of seccomp(2), which differs per arch. */
const SYS_SECCOMP: Partial<Record<string, number>> = { x64: 317, arm64: 277 };

// struct sock_fprog { unsigned short len; struct sock_filter *filter; }
const SockFprog = koffi.struct('vfs_sock_fprog', { len: 'uint16_t', filter: 'void *' });

const prctl = libc.func('int prctl(int option, unsigned long arg2, unsigned long arg3, unsigned long arg4, unsigned long arg5)');
const syscall = libc.func('long syscall(long number, ...)');

export function setNoNewPrivs(): void {
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) throw new SysError('prctl(PR_SET_NO_NEW_PRIVS)', koffi.errno());
}

export function getNoNewPrivs(): boolean {
  const r = prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) as number;
  if (r < 0) throw new SysError('prctl(PR_GET_NO_NEW_PRIVS)', koffi.errno());
  return r === 1;
}

/** 0: no seccomp, 2: filter mode (for the calling thread). */
export function getSeccompMode(): number {
  const r = prctl(PR_GET_SECCOMP, 0, 0, 0, 0) as number;
  if (r < 0) throw new SysError('prctl(PR_GET_SECCOMP)', koffi.errno());
  return r;
}

export class SeccompTsyncError extends Error {
  constructor(readonly tid: number) {
    super(`seccomp(SECCOMP_SET_MODE_FILTER, TSYNC): thread ${tid} cannot be synchronised ` +
      '(it already has a different seccomp filter or mode); no filter was installed');
    this.name = 'SeccompTsyncError';
  }
}

function sysSeccomp(): number {
  const nr = SYS_SECCOMP[process.arch];
  if (nr === undefined) throw new Error(`seccomp: no syscall number for process.arch ${process.arch}`);
  return nr;
}

/**
 * seccomp(SECCOMP_SET_MODE_FILTER, flags, &prog). `program` is the raw sock_filter array.
 * With TSYNC the kernel returns the id of a thread it could not synchronise (> 0) and
 * installs nothing: that is an error naming the thread.
 */
export function seccompSetModeFilter(program: Buffer, flags: number): void {
  if (program.length === 0 || program.length % 8 !== 0) throw new Error(`seccomp: bad program size ${program.length}`);
  const prog = { len: program.length / 8, filter: program };
  const r = Number(syscall(sysSeccomp(), 'unsigned int', SECCOMP_SET_MODE_FILTER, 'unsigned int', flags,
    koffi.pointer(SockFprog), prog));
  if (r < 0) throw new SysError('seccomp(SECCOMP_SET_MODE_FILTER)', koffi.errno());
  if (r > 0 && (flags & SECCOMP_FILTER_FLAG_TSYNC) !== 0) throw new SeccompTsyncError(r);
}

/** Whether the running kernel knows a SECCOMP_RET_* action value. */
export function seccompActionAvailable(action: number): boolean {
  const buf = Buffer.alloc(4);
  buf.writeUInt32LE(action >>> 0, 0);
  const r = Number(syscall(sysSeccomp(), 'unsigned int', SECCOMP_GET_ACTION_AVAIL, 'unsigned int', 0, 'void *', buf));
  return r === 0;
}
