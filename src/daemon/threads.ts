// Wait until every thread Node started on its own has begun running. A thread created but
// not yet scheduled has still to run glibc's start-up (rseq registration first), and a
// seccomp filter synchronised onto it (TSYNC) before that kills the whole daemon with
// SIGSYS on rseq, which no policy allows. On a busy host a new thread can wait that long:
// seen twice under parallel tests once the daemon stopped loading ES modules (whose
// loader used to start the libuv pool early and so gave the V8 threads time). A thread
// that has started and gone to sleep (state S or D in /proc/self/task/TID/stat) is past
// that point. Run before the sandbox (/proc is gone after pivot_root); no thread is
// created between this and the filter.
import fs from 'node:fs';

export class ThreadStartError extends Error {
  constructor(pending: readonly string[], waitedMs: number) {
    super(`threads ${pending.join(', ')} had not started after ${waitedMs} ms; not installing a filter they would die of`);
    this.name = 'ThreadStartError';
  }
}

/** Threads of this process other than the calling main thread that are not asleep. */
function busyThreads(): string[] {
  // The main thread's id as this /proc numbers it: before the sandbox a namespace daemon
  // still sees the host's procfs, where it is not pid 1.
  const self = fs.readlinkSync('/proc/self');
  const out: string[] = [];
  for (const tid of fs.readdirSync('/proc/self/task')) {
    if (tid === self) continue;
    let stat: string;
    try {
      stat = fs.readFileSync(`/proc/self/task/${tid}/stat`, 'utf8');
    } catch {
      continue; // ended meanwhile
    }
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
    if (state !== 'S' && state !== 'D') out.push(`${tid} (${state})`);
  }
  return out;
}

/** Resolve once every other thread sleeps; the time waited in ms. Throws ThreadStartError after `timeoutMs`. */
export async function threadsStarted(timeoutMs = 10_000): Promise<number> {
  const t0 = Date.now();
  for (;;) {
    const busy = busyThreads();
    if (busy.length === 0) return Date.now() - t0;
    if (Date.now() - t0 > timeoutMs) throw new ThreadStartError(busy, Date.now() - t0);
    await new Promise((r) => setTimeout(r, 2));
  }
}
