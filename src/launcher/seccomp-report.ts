// Which system call got the daemon killed: a process killed by a seccomp filter cannot say
// it, but the kernel logs an audit record (type=1326, "sig=31 arch=... syscall=N") for
// SECCOMP_RET_KILL_PROCESS by default. We read it back from /dev/kmsg (root, or
// kernel.dmesg_restrict=0) for the daemon's pid as the launcher sees it. Best effort: when
// the log is unreadable or has no record, the caller says only "killed by SIGSYS".
import fs from 'node:fs';

export interface SeccompKill {
  syscall: number;
  /** AUDIT_ARCH_* value from the record (c000003e x86_64, c00000b7 aarch64). */
  arch: number;
}

const RECORD_MAX = 8192;

/** Parse one kmsg/dmesg line; the record of a seccomp kill of `pid`, or undefined. */
export function parseSeccompAudit(line: string, pid: number): SeccompKill | undefined {
  if (!line.includes('type=1326')) return undefined;
  const field = (name: string): string | undefined => new RegExp(`\\b${name}=([0-9a-fx]+)`).exec(line)?.[1];
  if (field('pid') !== String(pid)) return undefined;
  const sig = field('sig');
  const syscall = field('syscall');
  const arch = field('arch');
  if (sig !== '31' || syscall === undefined || arch === undefined) return undefined;
  return { syscall: Number(syscall), arch: parseInt(arch, 16) };
}

/** All records currently in the kernel log (non-blocking). Empty when unreadable. */
function kmsgRecords(): string[] {
  let fd: number;
  try {
    fd = fs.openSync('/dev/kmsg', fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
  } catch {
    return [];
  }
  const out: string[] = [];
  const buf = Buffer.alloc(RECORD_MAX);
  try {
    for (;;) {
      let n: number;
      try {
        n = fs.readSync(fd, buf, 0, RECORD_MAX, null);
      } catch (err) {
        // EPIPE: a record was overwritten while we read; go on with the next one.
        if ((err as NodeJS.ErrnoException).code === 'EPIPE') continue;
        break; // EAGAIN: end of the log
      }
      if (n <= 0) break;
      out.push(buf.toString('utf8', 0, n));
    }
  } finally {
    fs.closeSync(fd);
  }
  return out;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Look for the audit record of `pid`'s seccomp kill, waiting briefly for kauditd. */
export async function findSeccompKill(pid: number, waitMs = 1000): Promise<SeccompKill | undefined> {
  const deadline = Date.now() + waitMs;
  for (;;) {
    const records = kmsgRecords();
    for (let i = records.length - 1; i >= 0; i--) {
      const hit = parseSeccompAudit(records[i], pid);
      if (hit !== undefined) return hit;
    }
    if (records.length === 0 || Date.now() >= deadline) return undefined;
    await sleep(100);
  }
}
