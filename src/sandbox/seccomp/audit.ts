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
  /** Wall-clock time of the event, ms since the epoch (from "audit(SECONDS.MILLIS:serial)"). */
  timeMs: number;
  comm: string;
  nr: number;
  /** Syscall name when the record's arch is one we have a table for. */
  name?: string;
  arch: number;
  /** The filter's return value ("KILL_PROCESS", "LOG"...). */
  action: string;
  /** Signal that ended the process (31 = SIGSYS), 0 when it went on. */
  sig: number;
}

const RECORD = /type=1326 audit\((\d+)\.(\d+):\d+\).*?\bpid=(\d+)\b.*?\bcomm="([^"]*)".*?\bsig=(\d+)\b.*?\barch=([0-9a-f]+)\b.*?\bsyscall=(\d+)\b.*?\bcode=(0x[0-9a-f]+)/;

export function parseAuditLine(line: string): SeccompAuditRecord | undefined {
  const m = RECORD.exec(line);
  if (!m) return undefined;
  const arch = parseInt(m[6]!, 16);
  const nr = Number(m[7]);
  return {
    timeMs: Number(m[1]) * 1000 + Number(m[2]), pid: Number(m[3]), comm: m[4]!, sig: Number(m[5]), arch, nr,
    name: archByAudit(arch)?.byNumber.get(nr), action: retName(parseInt(m[8]!, 16)),
  };
}

/** Which records to return: one process, and/or everything since a time (the daemon's start:
 * under --sandbox namespace the launcher does not know the daemon's pid, `unshare` forks it). */
export interface AuditFilter {
  pid?: number;
  sinceMs?: number;
}

/** Seccomp audit records still in the kernel log (needs CAP_SYSLOG or root). */
export function seccompAuditRecords(filter: number | AuditFilter): SeccompAuditRecord[] {
  const f: AuditFilter = typeof filter === 'number' ? { pid: filter } : filter;
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
      if (rec === undefined) continue;
      if (f.pid !== undefined && rec.pid !== f.pid) continue;
      if (f.sinceMs !== undefined && rec.timeMs < f.sinceMs) continue;
      out.push(rec);
    }
  } finally {
    closeSync(fd);
  }
  return out;
}

/** "syscall 103 (syslog)" for the last kill record of `pid` (or since a time), if the kernel logged one. */
export function describeSeccompKill(filter: number | AuditFilter): string | undefined {
  const kills = seccompAuditRecords(filter).filter((r) => r.sig !== 0);
  const last = kills[kills.length - 1];
  return last === undefined ? undefined : `syscall ${last.nr}${last.name !== undefined ? ` (${last.name})` : ''}`;
}
