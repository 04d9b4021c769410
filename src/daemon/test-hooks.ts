// Test-only hooks, reachable through hidden daemon options. --test-forbidden-syscall makes
// one system call that no policy allows, after seccomp is installed, so the tests can see
// what the kernel and the launcher do about it. syslog(SYSLOG_ACTION_SIZE_BUFFER) is
// chosen because it is harmless if it is let through (under --seccomp log): it only reads
// the size of the kernel log buffer.
import { libc } from '../sys/libc.js';
import { logger } from '../log.js';

const syscall1 = libc.func('long syscall(long number, long a, long b, long c)');

const SYS_SYSLOG: Record<string, number> = { x64: 103, arm64: 116 };
const SYSLOG_ACTION_SIZE_BUFFER = 10;

export function makeForbiddenSyscall(): void {
  const nr = SYS_SYSLOG[process.arch];
  if (nr === undefined) throw new Error(`test hook: no syslog syscall number for ${process.arch}`);
  const ret = Number(syscall1(nr, SYSLOG_ACTION_SIZE_BUFFER, 0, 0));
  logger('test-hook').warn(`made the forbidden syscall syslog (nr ${nr}): returned ${ret}`);
}
