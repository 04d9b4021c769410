// What vfs-launch needs to replace itself with the daemon's start-up chain instead of
// staying behind as a Node parent (issue 9: one lean process per VM): execve(2), and
// fcntl(F_SETFD) to hand chosen fds across the exec (Node opens its own with O_CLOEXEC,
// so only what we clear here survives). Launcher only, never after a seccomp filter.
import { libc, check, SysError, lastErrno } from './libc.js';

const execveRaw = libc.func('int execve(const char *path, const char **argv, const char **envp)');
const fcntlRaw = libc.func('int fcntl(int fd, int cmd, int arg)');
const dup2Raw = libc.func('int dup2(int oldfd, int newfd)');

const F_GETFD = 1;
const F_SETFD = 2;
const FD_CLOEXEC = 1;

/** Let `fd` survive execve (clear FD_CLOEXEC). */
export function keepAcrossExec(fd: number): void {
  const flags = check(fcntlRaw(fd, F_GETFD, 0), 'fcntl(F_GETFD)', `fd ${fd}`);
  check(fcntlRaw(fd, F_SETFD, flags & ~FD_CLOEXEC), 'fcntl(F_SETFD)', `fd ${fd}`);
}

/** Duplicate `oldFd` onto `newFd` (which then survives execve). */
export function dupTo(oldFd: number, newFd: number): void {
  check(dup2Raw(oldFd, newFd), 'dup2', `fd ${oldFd} -> ${newFd}`);
}

/**
 * Replace this process with `file` (an absolute path: execve does no PATH search). Returns
 * only by throwing: every thread of the Node process ends when it succeeds.
 */
export function execve(file: string, argv: readonly string[], env: Readonly<Record<string, string | undefined>>): never {
  const envp = Object.entries(env).filter((e): e is [string, string] => e[1] !== undefined).map(([k, v]) => `${k}=${v}`);
  execveRaw(file, [...argv, null], [...envp, null]);
  throw new SysError('execve', lastErrno(), file);
}
