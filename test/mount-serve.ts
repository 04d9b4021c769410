// Test-only entry that serves a shared dir over /dev/fuse in its own process, standing in
// for `vfs-launch --sandbox none --mountpoint` until that lands: the main thread mounts,
// a worker thread runs the FUSE core and the device loop, SIGTERM/SIGINT stop it and
// unmount. The server must never share a thread with code that makes syscalls on the mount.
//   node --import tsx test/mount-serve.ts --shared-dir DIR --mountpoint MNT [--readonly]
//        [--xattr] [--no-readdirplus] [--cache never|metadata|auto|always] [--writeback]
//        [--record-opcodes FILE]   (test instrumentation: per-opcode request and error counts,
//                                   written as JSON when the loop ends)
import fs from 'node:fs';
import { Worker, isMainThread, workerData, parentPort } from 'node:worker_threads';
import { DEFAULT_FS_OPTIONS, type CachePolicy, type FsOptions } from '../src/fs/options.js';
import { createFuseServer } from '../src/fs/fuse-server.js';
import type { FuseSession } from '../src/fs/session.js';
import { mountFuse, unmountIfMounted } from '../src/fuse-dev/mount.js';
import { runFuseDeviceLoop, fuseBufferSize } from '../src/fuse-dev/fuse-loop.js';
import { eventfd, eventfdWrite } from '../src/sys/event-calls.js';

const O_PATH = 0o10000000;
const MAX_WRITE = 1 << 20;

interface ServeData {
  record: string;
  rootFd: number;
  procSelfFd: number;
  devFd: number;
  stopFd: number;
  options: FsOptions;
}

function parse(argv: string[]): { shared: string; mountpoint: string; record: string; options: FsOptions } {
  const options: FsOptions = { ...DEFAULT_FS_OPTIONS };
  let record = '';
  let shared = '';
  let mountpoint = '';
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--shared-dir') shared = argv[++i] ?? '';
    else if (a === '--mountpoint') mountpoint = argv[++i] ?? '';
    else if (a === '--readonly') options.readonly = true;
    else if (a === '--xattr') options.xattr = true;
    else if (a === '--no-readdirplus') options.readdirplus = false;
    else if (a === '--writeback') options.writeback = true;
    else if (a === '--cache') options.cache = (argv[++i] ?? 'auto') as CachePolicy;
    else if (a === '--record-opcodes') record = argv[++i] ?? '';
    else throw new Error(`mount-serve: unknown argument ${a}`);
  }
  return { shared, mountpoint, record, options };
}

function main(): void {
  let args: ReturnType<typeof parse>;
  let rootFd: number;
  let procSelfFd: number;
  let devFd: number;
  try {
    args = parse(process.argv.slice(2));
    rootFd = fs.openSync(args.shared, O_PATH | fs.constants.O_DIRECTORY | fs.constants.O_NOFOLLOW);
    procSelfFd = fs.openSync('/proc/self/fd', O_PATH | fs.constants.O_DIRECTORY);
    devFd = mountFuse({ mountpoint: args.mountpoint, sourceName: args.shared });
  } catch (err) {
    process.stderr.write(`mount-serve: ${(err as Error).message}\n`);
    process.exit(1);
  }
  const stopFd = eventfd();
  const data: ServeData = { record: args.record, rootFd, procSelfFd, devFd, stopFd, options: args.options };
  // Node 20 does not carry tsx's loader into workers: register it in the worker first.
  const tsxApi = import.meta.resolve('tsx/esm/api');
  const worker = new Worker(
    `import(${JSON.stringify(tsxApi)}).then((m) => { m.register(); return import(${JSON.stringify(import.meta.url)}); })`,
    { eval: true, workerData: data });
  let code = 1;
  worker.on('message', (m: number) => { code = m; });
  worker.on('error', (err) => process.stderr.write(`mount-serve: worker: ${err.message}\n`));
  worker.on('exit', () => {
    unmountIfMounted(args.mountpoint);
    process.exit(code);
  });
  // Unmount first (nothing can then start new requests), then end the loop.
  const stop = (): void => {
    unmountIfMounted(args.mountpoint);
    eventfdWrite(stopFd);
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

/** Per opcode: requests seen and the errno of each error reply ("-2": count). */
type OpcodeCounts = Record<number, { calls: number; errors: Record<string, number> }>;

/** Wrap a session to count requests and error replies by opcode (test instrumentation). */
function recording(session: FuseSession, counts: OpcodeCounts): FuseSession {
  return {
    get destroyed() {
      return session.destroyed;
    },
    handle(readable, writable) {
      const opcode = readable[0].readUInt32LE(4);
      const n = session.handle(readable, writable);
      const e = (counts[opcode] ??= { calls: 0, errors: {} });
      e.calls++;
      if (n >= 16) {
        const err = writable[0].readInt32LE(4);
        if (err !== 0) e.errors[String(err)] = (e.errors[String(err)] ?? 0) + 1;
      }
      return n;
    },
  };
}

function serve(d: ServeData): void {
  const core = createFuseServer({
    rootFd: d.rootFd, procSelfFd: d.procSelfFd, options: d.options, transport: 'devfuse', maxWrite: MAX_WRITE,
  });
  const counts: OpcodeCounts = {};
  const session = d.record !== '' ? recording(core, counts) : core;
  const rc = runFuseDeviceLoop({ devFd: d.devFd, stopFd: d.stopFd, session, bufferSize: fuseBufferSize(MAX_WRITE) });
  if (d.record !== '') fs.writeFileSync(d.record, JSON.stringify(counts));
  parentPort?.postMessage(rc);
}

if (isMainThread) main();
else serve(workerData as ServeData);
