// Starting the queue threads of --queue-threads (vhost/queue-threads.ts), before the
// sandbox: their code is loaded from the host's file system, which is gone after
// pivot_root, and no thread may be created under the seccomp filter. Each thread gets its
// channel, its two eventfds and the shared handle table, and must be waiting for commands
// before this resolves (a thread still starting when the filter comes would die of it).
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import { eventfd } from '../sys/event-calls.js';
import { logLevel } from '../log.js';
import { SharedHandles } from '../fs/shared-handles.js';
import { C, QueueChannel } from '../vhost/queue-channel.js';
import { MAX_QUEUE_THREADS } from '../vhost/queue-limits.js';
import { QueueThread, QueueThreadError, QueueThreads } from '../vhost/queue-threads.js';
import type { QueueWorkerData } from '../vhost/queue-worker.js';

const START_TIMEOUT_MS = 20_000;

/** Start `n` queue threads (requests up to `maxRequest` bytes) and wait until each waits for commands. */
export async function startQueueThreads(n: number, maxRequest: number): Promise<QueueThreads> {
  if (!Number.isInteger(n) || n < 1 || n > MAX_QUEUE_THREADS) throw new QueueThreadError(`--queue-threads ${n}: 1 to ${MAX_QUEUE_THREADS}`);
  const handles = new SharedHandles();
  const entry = workerEntry();
  const started: { th: QueueThread; worker: Worker; error: () => Error | undefined }[] = [];
  for (let id = 0; id < n; id++) {
    const th = new QueueThread(id, new QueueChannel(), eventfd(), eventfd());
    const data: QueueWorkerData = {
      channel: th.ch.buffer, handles: handles.buffer, wakeFd: th.wakeFd, ownerFd: th.ownerFd, logLevel: logLevel(), maxRequest, id,
    };
    const worker = new Worker(entry.file, { workerData: data, execArgv: entry.execArgv, stdout: false, stderr: false });
    // The device loop never lets the event loop run while serving; the thread must not keep it alive either.
    worker.unref();
    let error: Error | undefined;
    worker.once('error', (err) => { error = err; });
    started.push({ th, worker, error: () => error });
  }
  const deadline = Date.now() + START_TIMEOUT_MS;
  for (const s of started) {
    while (Atomics.load(s.th.ch.ctl, C.READY) !== 1) {
      const err = s.error();
      if (err !== undefined) throw new QueueThreadError(`queue thread ${s.th.id} failed to start: ${err.message}`);
      if (Date.now() > deadline) throw new QueueThreadError(`queue thread ${s.th.id} did not start within ${START_TIMEOUT_MS} ms`);
      await new Promise((r) => setTimeout(r, 2));
    }
  }
  return new QueueThreads(started.map((s) => s.th), handles);
}

/**
 * The worker's code: the bundle next to the bundled daemon (dist/daemon/queue-worker.cjs),
 * else the compiled module (dist/vhost/queue-worker.js); from source (tsx) there is no
 * worker to load, which is said.
 */
function workerEntry(): { file: string; execArgv: string[] } {
  const here = path.dirname(fileURLToPath(import.meta.url));
  for (const f of [path.join(here, 'queue-worker.cjs'), path.join(here, '../vhost/queue-worker.js')]) {
    if (fs.existsSync(f)) return { file: f, execArgv: [] };
  }
  throw new QueueThreadError(`--queue-threads: no compiled queue thread next to ${here} (run npm run build)`);
}
