// `policy record`: which syscalls does a real run make? Implemented with strace(1) -f (every
// thread and child), not with a SECCOMP_RET_LOG filter: the kernel's audit lines for RET_LOG
// go through printk and are rate-limited and lost under load, strace's are not. When the
// traced program installs a seccomp filter (the daemon does, after its sandbox setup), only
// syscalls after that point count: those are the ones a policy has to allow.
import { execa } from 'execa';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Arch } from './arch.js';
import { archInfo } from './arch.js';

export interface Recording {
  /** Syscall name -> number of calls after the start marker. */
  counts: Map<string, number>;
  /** Whether a seccomp(SECCOMP_SET_MODE_FILTER) call was seen and counting started there. */
  sawSeccomp: boolean;
  /** Threads/processes seen. */
  tids: number;
  /** Names strace printed that are not in this arch's table (shown, not dropped). */
  unknown: string[];
}

const LINE = /^(\d+)\s+(?:\d+:\d+:\d+(?:\.\d+)?\s+)?([a-z_][a-z0-9_]*)\(/;
const CLONE = /^(\d+)\s+(?:\d+:\d+:\d+(?:\.\d+)?\s+)?(?:(clone3?|fork|vfork)\(|<\.\.\. (clone3?|fork|vfork) resumed>)(.*)$/;

/** Thread id -> thread-group (process) id, from the clone calls in the trace. */
function threadGroups(lines: readonly string[]): Map<number, number> {
  const parent = new Map<number, { tid: number; thread: boolean }>();
  const pendingThread = new Map<number, boolean>();
  for (const l of lines) {
    const m = CLONE.exec(l);
    if (!m) continue;
    const tid = Number(m[1]);
    const rest = m[4]!;
    const thread = m[2] !== undefined ? /CLONE_THREAD/.test(rest) : (pendingThread.get(tid) ?? false);
    if (m[2] !== undefined) pendingThread.set(tid, thread);
    const r = /= (\d+)(?:\s|$)/.exec(rest);
    if (r) parent.set(Number(r[1]), { tid, thread });
  }
  const groups = new Map<number, number>();
  const tgid = (tid: number, depth = 0): number => {
    const known = groups.get(tid);
    if (known !== undefined) return known;
    const p = parent.get(tid);
    const g = p !== undefined && p.thread && depth < 10000 ? tgid(p.tid, depth + 1) : tid;
    groups.set(tid, g);
    return g;
  };
  for (const tid of parent.keys()) tgid(tid);
  return new Map([...parent.keys()].map((t) => [t, tgid(t)]));
}

/**
 * Parse `strace -f -o FILE` output. With fromSeccomp, a process counts from its own first
 * filter install on (and so do processes it forks afterwards: they inherit the filter);
 * processes that never install one (strace'd test runners, helpers) are left out. Without
 * any install in the trace, everything counts.
 */
export function parseStrace(text: string, arch: Arch, fromSeccomp: boolean): Recording {
  const counts = new Map<string, number>();
  const tids = new Set<number>();
  const lines = text.split('\n');
  const groups = threadGroups(lines);
  const groupOf = (tid: number): number => groups.get(tid) ?? tid;
  const MARK = /\sseccomp\(SECCOMP_SET_MODE_FILTER/;
  const sawSeccomp = fromSeccomp && lines.some((l) => MARK.test(l));
  const filtered = new Set<number>();
  for (const l of lines) {
    const tid = Number(/^(\d+)\s/.exec(l)?.[1] ?? NaN);
    if (Number.isNaN(tid)) continue;
    if (sawSeccomp) {
      if (!filtered.has(groupOf(tid))) {
        if (MARK.test(l)) filtered.add(groupOf(tid));
        continue;
      }
      const child = /= (\d+)(?:\s|$)/.exec(CLONE.exec(l)?.[4] ?? '');
      if (child) filtered.add(groupOf(Number(child[1])));
    }
    const m = LINE.exec(l);
    if (!m) continue;
    tids.add(tid);
    counts.set(m[2]!, (counts.get(m[2]!) ?? 0) + 1);
  }
  const table = archInfo(arch).byName;
  return { counts, sawSeccomp, tids: tids.size, unknown: [...counts.keys()].filter((n) => !table.has(n)) };
}

export interface RecordOptions {
  arch: Arch;
  /** Run while the traced command is up; when it resolves the command gets SIGTERM. */
  workload?: (pid: number) => Promise<void>;
  /** Count only after the program's own seccomp filter install (default true). */
  fromSeccomp?: boolean;
  env?: NodeJS.ProcessEnv;
}

/** Run argv under strace -f and return what it called. */
export async function recordCommand(argv: readonly string[], opts: RecordOptions): Promise<Recording> {
  const dir = mkdtempSync(join(tmpdir(), 'vfs-record-'));
  const out = join(dir, 'strace.out');
  try {
    const child = execa('strace', ['-f', '-qq', '-o', out, '--', ...argv], {
      env: opts.env, stdio: ['ignore', 'inherit', 'inherit'], reject: false,
    });
    if (opts.workload !== undefined) {
      // SIGTERM must reach the traced program: strace itself would detach and leave it running.
      const traced = (): number | undefined => {
        try {
          const kids = readFileSync(`/proc/${child.pid}/task/${child.pid}/children`, 'utf8').trim().split(/\s+/);
          return kids[0] ? Number(kids[0]) : undefined;
        } catch {
          return undefined;
        }
      };
      try {
        await opts.workload(child.pid ?? 0);
      } finally {
        const pid = traced();
        if (pid !== undefined) process.kill(pid, 'SIGTERM');
        else child.kill('SIGTERM');
      }
    }
    await child;
    return parseStrace(readFileSync(out, 'utf8'), opts.arch, opts.fromSeccomp ?? true);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** An OCI profile fragment allowing what was recorded, one rule per syscall with its count. */
export function recordingToPolicy(rec: Recording, arch: Arch, what: string): string {
  const names = [...rec.counts.keys()].filter((n) => archInfo(arch).byName.has(n)).sort();
  const rules = names.map((n) => ({
    names: [n],
    action: 'SCMP_ACT_ALLOW',
    comment: `recorded: ${rec.counts.get(n)} calls during ${what}; TODO say why it is needed`,
  }));
  return JSON.stringify({
    defaultAction: 'SCMP_ACT_KILL_PROCESS',
    architectures: [archInfo(arch).ociName],
    syscalls: rules,
  }, null, 2);
}
