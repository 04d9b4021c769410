// After the daemon dies of SIGSYS the launcher should say which syscall the filter refused.
// The kernel writes one audit record per seccomp kill (type=1326, "syscall=NR", with the pid,
// when kill_process is in /proc/sys/kernel/seccomp/actions_logged, the default) to the
// kernel log; we read it from /dev/kmsg (non-blocking, each read is one record) and name the
// number with the generated table of the arch the record names.
import { closeSync, constants as fsc, openSync, readSync } from 'node:fs';
import { archByAudit } from './arch.js';
import { retName } from './bpf.js';

export interface SeccompAuditRecord {
  pid: number;
  nr: number;
  /** Syscall name when the record's arch is one we have a table for. */
  name?: string;
  arch: number;
  /** The filter's return value ("KILL_PROCESS", "LOG"...). */
  action: string;
  /** Signal that ended the process (31 = SIGSYS), 0 when it went on. */
  sig: number;
}

const RECORD = /type=1326 .*?\bpid=(\d+)\b.*?\bsig=(\d+)\b.*?\barch=([0-9a-f]+)\b.*?\bsyscall=(\d+)\b.*?\bcode=(0x[0-9a-f]+)/;

export function parseAuditLine(line: string): SeccompAuditRecord | undefined {
  const m = RECORD.exec(line);
  if (!m) return undefined;
  const arch = parseInt(m[3]!, 16);
  const nr = Number(m[4]);
  return { pid: Number(m[1]), sig: Number(m[2]), arch, nr, name: archByAudit(arch)?.byNumber.get(nr), action: retName(parseInt(m[5]!, 16)) };
}

/** Seccomp audit records for `pid` still in the kernel log (needs CAP_SYSLOG or root). */
export function seccompAuditRecords(pid: number): SeccompAuditRecord[] {
  let fd: number;
  try {
    fd = openSync('/dev/kmsg', fsc.O_RDONLY | fsc.O_NONBLOCK);
  } catch {
    return [];
  }
  const out: SeccompAuditRecord[] = [];
  const buf = Buffer.alloc(8192);
  try {
    for (;;) {
      let n: number;
      try {
        n = readSync(fd, buf, 0, buf.length, null);
      } catch (e) {
        // EPIPE: a record was overwritten while we read; go on with the next one.
        if ((e as NodeJS.ErrnoException).code === 'EPIPE') continue;
        break; // EAGAIN: the end of the log
      }
      if (n <= 0) break;
      const rec = parseAuditLine(buf.toString('utf8', 0, n));
      if (rec !== undefined && rec.pid === pid) out.push(rec);
    }
  } finally {
    closeSync(fd);
  }
  return out;
}

/** "syscall 103 (syslog)" for the last kill record of `pid`, if the kernel logged one. */
export function describeSeccompKill(pid: number): string | undefined {
  const kills = seccompAuditRecords(pid).filter((r) => r.sig !== 0);
  const last = kills[kills.length - 1];
  return last === undefined ? undefined : `syscall ${last.nr}${last.name !== undefined ? ` (${last.name})` : ''}`;
}
