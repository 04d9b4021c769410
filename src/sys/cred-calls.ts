// Per-thread credentials, the process umask and the thread's own fs_struct. glibc's setresuid/setresgid broadcast
// the change to every thread of the process (POSIX semantics through a signal), but the
// kernel's credentials are per thread: the FUSE core runs a request as its caller on the
// device thread alone by calling the raw syscalls. Same return convention as
// file-calls.ts: the result, or -errno.
import koffi from 'koffi';
import { libc } from './libc.js';

const syscall3 = libc.func('syscall', 'long', ['long', 'long', 'long', 'long']);
const syscallPtr = libc.func('syscall', 'long', ['long', 'long', 'void *', 'long']);
const umaskRaw = libc.func('unsigned int umask(unsigned int mask)');
const unshareRaw = libc.func('int unshare(int flags)');
const CLONE_FS = 0x200;

const NR: Record<string, { setresuid: number; setresgid: number; setgroups: number }> = {
  x64: { setresuid: 117, setresgid: 119, setgroups: 116 },
  arm64: { setresuid: 147, setresgid: 149, setgroups: 159 },
};
const nr = NR[process.arch];
if (nr === undefined) throw new Error(`cred-calls: unsupported architecture ${process.arch}`);
const SYS_SETRESUID = nr.setresuid;
const SYS_SETRESGID = nr.setresgid;
const SYS_SETGROUPS = nr.setgroups;

/** -1 leaves that id unchanged. Applies to the calling thread only. */
export function setresuidThread(ruid: number, euid: number, suid: number): number {
  return Number(syscall3(SYS_SETRESUID, ruid, euid, suid)) < 0 ? -koffi.errno() : 0;
}

export function setresgidThread(rgid: number, egid: number, sgid: number): number {
  return Number(syscall3(SYS_SETRESGID, rgid, egid, sgid)) < 0 ? -koffi.errno() : 0;
}

/**
 * Drop this thread's supplementary groups, so that a request run with a caller's uid/gid
 * is not also granted the daemon's (root's) groups.
 */
export function clearGroupsThread(): number {
  return Number(syscall3(SYS_SETGROUPS, 0, 0, 0)) < 0 ? -koffi.errno() : 0;
}

/** Set this thread's supplementary groups to the first `n` u32 gids of `gids`. */
export function setgroupsThread(n: number, gids: Buffer): number {
  return Number(syscallPtr(SYS_SETGROUPS, n, gids, 0)) < 0 ? -koffi.errno() : 0;
}

/** Set the process-wide umask (process.umask() cannot set it from a worker thread). */
export function setUmask(mask: number): number {
  return umaskRaw(mask);
}

/**
 * Give the calling thread its own umask (and cwd and root, copied as they are): the umask
 * is per fs_struct, which every thread shares until one unshares it. --posix-acl sets the
 * request's umask around each creation on the serving thread; with its own copy, the libuv
 * pool threads keep umask 0 meanwhile. Call after the sandbox's chroot/pivot_root (a copy
 * taken before a chroot would keep the old root on one side).
 */
export function unshareFsThread(): number {
  return unshareRaw(CLONE_FS) < 0 ? -koffi.errno() : 0;
}
