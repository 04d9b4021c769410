// Test-only server for the /dev/fuse transport alone: mounts like test/mount-serve.ts but
// answers with a tiny scripted FuseSession instead of the core, so the loop's handling of
// replies the kernel refuses can be checked against the real kernel. Root holds one file,
// "good"; a LOOKUP of "bad" gets a reply the kernel rejects (positive error field), and
// one of "throw" makes the session throw (which the contract forbids; the loop survives it).
//   node --import tsx test/mount-stub-serve.ts --shared-dir IGNORED --mountpoint MNT
import { Worker, isMainThread, workerData, parentPort } from 'node:worker_threads';
import type { FuseSession } from '../src/fs/session.js';
import { mountFuse, unmountIfMounted } from '../src/fuse-dev/mount.js';
import { runFuseDeviceLoop, fuseBufferSize } from '../src/fuse-dev/fuse-loop.js';
import { eventfd, eventfdWrite } from '../src/sys/event-calls.js';

const OP_LOOKUP = 1;
const OP_GETATTR = 3;
const OP_INIT = 26;
const OP_OPENDIR = 27;
const OUT = 16; // fuse_out_header
const IN = 40; // fuse_in_header
const ENTRY_OUT = 128; // fuse_entry_out (with fuse_attr)
const ATTR_OUT = 104; // fuse_attr_out
const INIT_OUT = 64;
const ENOENT = 2;
const ENOSYS = 38;

/** fuse_attr at `off`: ino, mode, nlink; everything else zero. */
function attr(b: Buffer, off: number, ino: number, mode: number): void {
  b.writeBigUInt64LE(BigInt(ino), off);
  b.writeUInt32LE(mode, off + 60);
  b.writeUInt32LE(mode & 0o040000 ? 2 : 1, off + 64);
}

function stubSession(): FuseSession {
  return {
    destroyed: false,
    handle(readable, writable) {
      const req = readable[0];
      const out = writable[0];
      const opcode = req.readUInt32LE(4);
      const nodeid = Number(req.readBigUInt64LE(16));
      out.fill(0, 0, OUT + ENTRY_OUT);
      out.writeBigUInt64LE(req.readBigUInt64LE(8), 8);
      let len = OUT;
      let error = 0;
      if (opcode === OP_INIT) {
        out.writeUInt32LE(7, OUT);
        out.writeUInt32LE(31, OUT + 4);
        out.writeUInt32LE(65536, OUT + 20); // max_write
        len += INIT_OUT;
      } else if (opcode === OP_GETATTR && (nodeid === 1 || nodeid === 2)) {
        attr(out, OUT + 16, nodeid, nodeid === 1 ? 0o040755 : 0o100644);
        len += ATTR_OUT;
      } else if (opcode === OP_LOOKUP) {
        const name = req.subarray(IN, req.indexOf(0, IN)).toString();
        if (name === 'good') {
          out.writeBigUInt64LE(2n, OUT);
          attr(out, OUT + 40, 2, 0o100644);
          len += ENTRY_OUT;
        } else if (name === 'throw') {
          throw new Error('scripted failure');
        } else if (name === 'bad') {
          error = 5; // positive: the kernel refuses the whole reply
        } else {
          error = -ENOENT;
        }
      } else if (opcode === OP_OPENDIR) {
        error = -ENOSYS;
      } else {
        error = -ENOSYS;
      }
      out.writeUInt32LE(len, 0);
      out.writeInt32LE(error, 4);
      return opcode === 2 || opcode === 42 ? 0 : len; // FORGET, BATCH_FORGET: no reply
    },
  };
}

interface Data { devFd: number; stopFd: number }

function main(): void {
  const i = process.argv.indexOf('--mountpoint');
  const mountpoint = process.argv[i + 1];
  let devFd: number;
  try {
    devFd = mountFuse({ mountpoint, sourceName: 'vfs-stub', subtype: 'vfs-stub' });
  } catch (err) {
    process.stderr.write(`mount-stub-serve: ${(err as Error).message}\n`);
    process.exit(1);
  }
  const stopFd = eventfd();
  const tsxApi = import.meta.resolve('tsx/esm/api');
  const worker = new Worker(
    `import(${JSON.stringify(tsxApi)}).then((m) => { m.register(); return import(${JSON.stringify(import.meta.url)}); })`,
    { eval: true, workerData: { devFd, stopFd } satisfies Data });
  let code = 1;
  worker.on('message', (m: number) => { code = m; });
  worker.on('exit', () => {
    unmountIfMounted(mountpoint);
    process.exit(code);
  });
  const stop = (): void => {
    unmountIfMounted(mountpoint);
    eventfdWrite(stopFd);
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

if (isMainThread) main();
else {
  const d = workerData as Data;
  parentPort?.postMessage(runFuseDeviceLoop({ devFd: d.devFd, stopFd: d.stopFd, session: stubSession(), bufferSize: fuseBufferSize(65536) }));
}
