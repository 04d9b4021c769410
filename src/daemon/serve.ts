// The daemon's serving phase, after the sandbox and the seccomp filter: build the FUSE
// session and run the device loop for the transport on the calling (main) thread until the
// frontend leaves, the file system is unmounted, or a stop signal makes stopFd readable.
// Everything it calls was loaded before the sandbox (main.ts imports it statically).
import type { FsOptions } from '../fs/options.js';
import { createFuseServer } from '../fs/fuse-server.js';
import { runVhostDevice } from '../vhost/device.js';
import type { QueueThreads } from '../vhost/queue-threads.js';
import type { FuseLoopConfig } from '../fuse-dev/fuse-loop.js';

export type Transport =
  | { kind: 'vhost'; listenFd: number; tag?: string }
  | { kind: 'fuse'; devFd: number; maxWrite: number; run: (cfg: FuseLoopConfig) => number };

export interface ServeConfig {
  rootFd: number;
  procSelfFd: number;
  fs: FsOptions;
  transport: Transport;
  /** Readable when the daemon must stop (never read by the loops). */
  stopFd: number;
  /** --queue-threads (vhost only). */
  queueThreads?: QueueThreads;
}

/** Serve until done; the exit code (0 for every orderly end). */
export function serve(c: ServeConfig): number {
  const { rootFd, procSelfFd, fs, transport, stopFd, queueThreads } = c;
  if (transport.kind === 'vhost') {
    return runVhostDevice({
      listenFd: transport.listenFd,
      stopFd,
      tag: transport.tag,
      queueThreads,
      readonlyShare: fs.readonly,
      makeSession: (maxWrite) => createFuseServer({ rootFd, procSelfFd, options: fs, transport: 'virtio', maxWrite, sharedHandles: queueThreads?.handles }),
    });
  }
  const session = createFuseServer({ rootFd, procSelfFd, options: fs, transport: 'devfuse', maxWrite: transport.maxWrite });
  return transport.run({ devFd: transport.devFd, stopFd, session, bufferSize: transport.maxWrite + 64 * 1024 });
}
