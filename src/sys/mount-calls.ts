// mount(2), umount2(2), pivot_root(2), chroot(2) and chdir through koffi: the calls the
// sandbox stage and the /dev/fuse transport need and node:fs does not have.
import { libc, check } from './libc.js';

const mountRaw = libc.func('int mount(const char *source, const char *target, const char *fstype, unsigned long flags, const char *data)');
const umount2Raw = libc.func('int umount2(const char *target, int flags)');
const chrootRaw = libc.func('int chroot(const char *path)');
const chdirRaw = libc.func('int chdir(const char *path)');
const fchdirRaw = libc.func('int fchdir(int fd)');
const syscall2 = libc.func('long syscall(long number, const char *a, const char *b)');

export const MS_RDONLY = 0x1;
export const MS_NOSUID = 0x2;
export const MS_NODEV = 0x4;
export const MS_NOEXEC = 0x8;
export const MS_REMOUNT = 0x20;
export const MS_BIND = 0x1000;
export const MS_MOVE = 0x2000;
export const MS_REC = 0x4000;
export const MS_PRIVATE = 0x40000;
export const MS_SLAVE = 0x80000;
export const MS_SHARED = 0x100000;

export const MNT_FORCE = 1;
export const MNT_DETACH = 2;
export const UMOUNT_NOFOLLOW = 8;

const SYS_PIVOT_ROOT: Record<string, number> = { x64: 155, arm64: 41 };

export function mount(source: string | null, target: string, fstype: string | null, flags: number, data: string | null = null): void {
  check(mountRaw(source, target, fstype, flags, data), 'mount', target);
}

export function umount2(target: string, flags = 0): void {
  check(umount2Raw(target, flags), 'umount2', target);
}

export function pivotRoot(newRoot: string, putOld: string): void {
  const nr = SYS_PIVOT_ROOT[process.arch];
  if (nr === undefined) throw new Error(`pivot_root: unsupported architecture ${process.arch}`);
  check(Number(syscall2(nr, newRoot, putOld)), 'pivot_root', newRoot);
}

export function chroot(path: string): void {
  check(chrootRaw(path), 'chroot', path);
}

export function chdir(path: string): void {
  check(chdirRaw(path), 'chdir', path);
}

export function fchdir(fd: number): void {
  check(fchdirRaw(fd), 'fchdir', `fd ${fd}`);
}
