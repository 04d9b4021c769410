// SIGTERM/SIGINT/SIGHUP as a file descriptor the device loop's epoll set can hold, so the
// loop can own the main thread (no worker isolate, issue 9) and still stop cleanly.
//
// Why not signalfd: a signalfd sees only signals that every thread blocks, and Node starts
// threads before any JS runs (V8 platform workers, with nothing but SIGUSR1 blocked; Node
// also clears the signal mask it inherits at exec). A SIGTERM would land on one of them and
// take its default action (the process dies) instead of reaching the signalfd. So the
// signals keep Node's own handler (process.on: libuv's handler, which runs on whatever
// thread the kernel picks), and the loop watches where that handler writes: the read end of
// libuv's per-loop signal pipe. It is found by asking the kernel, not by guessing fd
// numbers: a harmless SIGWINCH handled the same way is raised once and the one pipe that
// becomes readable is the one. The loop only waits on it, never reads it (libuv reads its
// own messages when the event loop runs again after the loop returned, and then the
// JS handler logs which signal it was).
import fs from 'node:fs';
import { Epoll, EPOLLIN } from '../sys/event-calls.js';
import type { Logger } from '../log.js';

/** In this order: SIGHUP's handler last, the waiter (launcher/spawn.ts) takes it as the sign all three exist. */
export const STOP_SIGNALS = ['SIGTERM', 'SIGINT', 'SIGHUP'] as const;
export type StopSignal = (typeof STOP_SIGNALS)[number];

export class StopSignalError extends Error {
  constructor(message: string) {
    super(`stop signals: ${message}`);
    this.name = 'StopSignalError';
  }
}

export interface StopSignals {
  /** Readable once a stop signal arrived (level-triggered; never read it). */
  readonly fd: number;
  /** The first stop signal handled so far by the event loop, if any. */
  received(): StopSignal | undefined;
}

const O_ACCMODE = 3;
const PROBE_TIMEOUT_MS = 2000;
const PROBE_ATTEMPTS = 3;

/** Read ends of the pipes this process holds (fds 0-2 left out). */
function pipeReadEnds(): number[] {
  const out: number[] = [];
  for (const name of fs.readdirSync('/proc/self/fd')) {
    const fd = Number(name);
    if (fd <= 2) continue;
    let target: string;
    try {
      target = fs.readlinkSync(`/proc/self/fd/${name}`);
    } catch {
      continue; // the directory's own fd, gone by now
    }
    if (!target.startsWith('pipe:')) continue;
    const flags = /^flags:\s+([0-7]+)/m.exec(fs.readFileSync(`/proc/self/fdinfo/${name}`, 'utf8'))?.[1];
    if (flags !== undefined && (parseInt(flags, 8) & O_ACCMODE) === 0) out.push(fd);
  }
  return out;
}

function readable(fds: readonly number[], timeoutMs: number): number[] {
  const ep = new Epoll(Math.max(1, fds.length));
  try {
    for (const fd of fds) ep.add(fd, fd, EPOLLIN);
    const n = ep.wait(timeoutMs);
    const out: number[] = [];
    for (let i = 0; i < n; i++) out.push(ep.token(i));
    return out;
  } finally {
    ep.close();
  }
}

const tick = (): Promise<void> => new Promise((r) => setImmediate(r));

/** Handle the stop signals from now on and find the fd that shows them. */
export async function watchStopSignals(log: Logger): Promise<StopSignals> {
  let first: StopSignal | undefined;
  for (const sig of STOP_SIGNALS) {
    process.on(sig, () => {
      if (first === undefined) log.info(`${sig}: stopping`);
      first ??= sig;
    });
  }
  // Pipes readable already (libuv's lock pipe holds a byte; inherited pipes; the signal pipe
  // itself if a stop signal just came) cannot tell: such a try is repeated once libuv ran.
  const probe = (): void => undefined;
  process.on('SIGWINCH', probe);
  let hit: number[] = [];
  let candidates: number[] = [];
  for (let attempt = 0; attempt < PROBE_ATTEMPTS && hit.length !== 1; attempt++) {
    if (attempt > 0) for (let i = 0; i < 3; i++) await tick();
    const before = new Set(readable(pipeReadEnds(), 0));
    candidates = pipeReadEnds().filter((fd) => !before.has(fd));
    process.kill(process.pid, 'SIGWINCH');
    hit = readable(candidates, PROBE_TIMEOUT_MS);
    // Let libuv read its message (our probe handler runs) so the pipe is empty again.
    const deadline = Date.now() + PROBE_TIMEOUT_MS;
    while (hit.length === 1 && readable(hit, 0).length > 0 && Date.now() < deadline) await tick();
  }
  process.off('SIGWINCH', probe);
  if (hit.length !== 1) throw new StopSignalError(`cannot find libuv's signal pipe (${hit.length} of ${candidates.length} pipes answered a probe signal, ${PROBE_ATTEMPTS} tries)`);
  if (readable(hit, 0).length > 0 && first === undefined) throw new StopSignalError(`libuv's signal pipe (fd ${hit[0]}) stays readable`);
  log.debug(`stop signals: libuv signal pipe fd ${hit[0]} in the device loop's epoll set`);
  return { fd: hit[0], received: () => first };
}
