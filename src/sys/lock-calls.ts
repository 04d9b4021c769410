// flock(2), for the `<socket>.pid` file vfs-launch holds locked for the daemon's life (as
// virtiofsd does), so that two daemons cannot serve one socket path. Launcher only.
import { libc, lastErrno } from './libc.js';

const flockRaw = libc.func('int flock(int fd, int operation)');

export const LOCK_EX = 2;
export const LOCK_NB = 4;

/** 0, or -errno (EWOULDBLOCK when LOCK_NB and another open file holds the lock). */
export function flock(fd: number, operation: number): number {
  return flockRaw(fd, operation) < 0 ? -lastErrno() : 0;
}
