// The `<socket-path>.pid` file, as virtiofsd keeps one: created next to the socket (mode
// 0600), locked with flock(LOCK_EX) and holding the pid of the process that serves the
// socket. vfs-launch takes the lock before it touches the socket, so a second launch on
// the same path refuses (exit 1) instead of replacing the first one's socket. The lock
// lives in the open file: vfs-launch leaves the fd open across its exec into the waiter
// (same pid, the one written in the file), which lives as long as the daemon; the daemon
// is told the fd and closes it first thing (a host file outside the share has no place in
// the sandbox). The epilogue, exec'd by the waiter when the daemon ends, removes the file.
// Not for --fd (libvirt owns that socket) nor --mountpoint, as in virtiofsd.
import fs from 'node:fs';
import { constants as osConstants } from 'node:os';
import { LOCK_EX, LOCK_NB, flock } from '../sys/lock-calls.js';

/** A locked pid file: its fd (FD_CLOEXEC still set) and path. */
export interface PidFile {
  fd: number;
  path: string;
}

export class PidFileBusyError extends Error {
  constructor(readonly path: string, readonly holder: string) {
    super(`${path} is locked by another daemon${holder === '' ? '' : ` (pid ${holder})`}: the socket is in use; stop that daemon or choose another --socket-path`);
    this.name = 'PidFileBusyError';
  }
}

export function pidFilePath(socketPath: string): string {
  return `${socketPath}.pid`;
}

/** Create (or reuse) and lock `<socketPath>.pid` and write `pid` into it. */
export function lockPidFile(socketPath: string, pid: number = process.pid): PidFile {
  const file = pidFilePath(socketPath);
  const fd = fs.openSync(file, fs.constants.O_RDWR | fs.constants.O_CREAT | fs.constants.O_NOFOLLOW, 0o600);
  const r = flock(fd, LOCK_EX | LOCK_NB);
  if (r < 0) {
    let holder = '';
    try {
      holder = fs.readFileSync(file, 'utf8').trim();
    } catch {
      // unreadable: say no pid
    }
    fs.closeSync(fd);
    if (-r === osConstants.errno.EWOULDBLOCK) throw new PidFileBusyError(file, holder);
    throw new Error(`cannot lock ${file}: errno ${-r}`);
  }
  fs.ftruncateSync(fd, 0);
  fs.writeSync(fd, `${pid}\n`, 0);
  return { fd, path: file };
}
