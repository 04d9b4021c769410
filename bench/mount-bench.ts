// Throughput of a /dev/fuse mount of the passthrough core against the same operations
// run directly on the shared directory: stat storm, create+unlink, 4 KiB random read,
// 1 MiB sequential read and a 10,000-entry readdir, each for a fixed time, printed as a
// table of ops/s with the mount/direct ratio. The server runs in its own process (as the
// tests start it); this process only makes ordinary synchronous node:fs calls.
//   node --import tsx bench/mount-bench.ts [--seconds 2] [--cache auto,never]
import fs from 'node:fs';
import path from 'node:path';
import { makeDirs, startServer, type Server } from '../test/mount-helpers.js';

const FILES = 100;
const RANDOM_FILE_SIZE = 64 * 1024 * 1024;
const SEQ_FILE_SIZE = 256 * 1024 * 1024;
const DIR_ENTRIES = 10_000;

interface Workload {
  name: string;
  unit: string;
  /** Returns an op function for a root directory; called once before timing starts. */
  prepare(root: string): () => void;
}

function argValue(name: string, fallback: string): string {
  const i = process.argv.indexOf(name);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback;
}

const SECONDS = Number(argValue('--seconds', '2'));
const CACHES = argValue('--cache', 'auto,never').split(',');

/** Fill the share once on the host: small files, a random-read file, a sequential file, a big dir. */
function populate(shared: string): void {
  fs.mkdirSync(path.join(shared, 'stat'));
  for (let i = 0; i < FILES; i++) fs.writeFileSync(path.join(shared, 'stat', `f${i}`), 'x');
  fs.mkdirSync(path.join(shared, 'create'));
  const chunk = Buffer.alloc(1024 * 1024, 0xa5);
  for (const [name, size] of [['random.bin', RANDOM_FILE_SIZE], ['seq.bin', SEQ_FILE_SIZE]] as const) {
    const fd = fs.openSync(path.join(shared, name), 'w');
    for (let off = 0; off < size; off += chunk.length) fs.writeSync(fd, chunk, 0, chunk.length, off);
    fs.closeSync(fd);
  }
  fs.mkdirSync(path.join(shared, 'big'));
  for (let i = 0; i < DIR_ENTRIES; i++) fs.writeFileSync(path.join(shared, 'big', `entry-${i}`), '');
}

const workloads: Workload[] = [
  {
    name: 'stat storm', unit: 'stat/s',
    prepare(root) {
      const names = Array.from({ length: FILES }, (_, i) => path.join(root, 'stat', `f${i}`));
      let i = 0;
      return () => { fs.statSync(names[i++ % FILES]); };
    },
  },
  {
    name: 'create+unlink', unit: 'pairs/s',
    prepare(root) {
      let i = 0;
      return () => {
        const p = path.join(root, 'create', `c${i++}`);
        fs.closeSync(fs.openSync(p, fs.constants.O_CREAT | fs.constants.O_WRONLY | fs.constants.O_EXCL, 0o644));
        fs.unlinkSync(p);
      };
    },
  },
  {
    name: '4 KiB random read', unit: 'reads/s',
    prepare(root) {
      const fd = fs.openSync(path.join(root, 'random.bin'), 'r');
      const buf = Buffer.alloc(4096);
      const blocks = RANDOM_FILE_SIZE / 4096;
      let x = 12345;
      return () => {
        x = (x * 1103515245 + 12345) & 0x7fffffff;
        fs.readSync(fd, buf, 0, 4096, (x % blocks) * 4096);
      };
    },
  },
  {
    name: '1 MiB sequential read', unit: 'MiB/s',
    prepare(root) {
      const fd = fs.openSync(path.join(root, 'seq.bin'), 'r');
      const buf = Buffer.alloc(1024 * 1024);
      let off = 0;
      return () => {
        fs.readSync(fd, buf, 0, buf.length, off);
        off = (off + buf.length) % SEQ_FILE_SIZE;
      };
    },
  },
  {
    name: 'readdir 10,000 entries', unit: 'listings/s',
    prepare(root) {
      const dir = path.join(root, 'big');
      return () => {
        if (fs.readdirSync(dir).length !== DIR_ENTRIES) throw new Error('readdir count mismatch');
      };
    },
  },
];

function measure(op: () => void, seconds: number): number {
  for (let i = 0; i < 3; i++) op(); // warm-up
  const end = process.hrtime.bigint() + BigInt(Math.round(seconds * 1e9));
  const start = process.hrtime.bigint();
  let count = 0;
  let now = start;
  while (now < end) {
    for (let k = 0; k < 8; k++) op();
    count += 8;
    now = process.hrtime.bigint();
  }
  return count / (Number(now - start) / 1e9);
}

function fmt(x: number): string {
  return x >= 100 ? Math.round(x).toLocaleString('en-US') : x.toFixed(1);
}

async function main(): Promise<void> {
  const dirs = makeDirs();
  populate(dirs.shared);
  const rows: string[][] = [];
  let server: Server | undefined;
  try {
    for (const cache of CACHES) {
      server = await startServer(['--cache', cache], dirs);
      for (const w of workloads) {
        const onMount = measure(w.prepare(server.mnt), SECONDS);
        const direct = measure(w.prepare(server.shared), SECONDS);
        rows.push([`${w.name} (cache=${cache})`, w.unit, fmt(onMount), fmt(direct), (onMount / direct).toFixed(3)]);
        process.stderr.write(`${rows[rows.length - 1].join('  ')}\n`);
      }
      const res = await server.stop();
      server = undefined;
      if (res.code !== 0) process.stderr.write(`server exited with ${JSON.stringify(res)}\n`);
    }
  } finally {
    if (server) await server.stop();
    fs.rmSync(dirs.base, { recursive: true, force: true });
  }
  const header = ['workload', 'unit', 'mount', 'direct', 'mount/direct'];
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (r: string[]): string => r.map((c, i) => (i < 2 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join(' | ');
  console.log(`vfs /dev/fuse mount bench: ${SECONDS} s per cell, node ${process.version}, ${new Date().toISOString()}`);
  console.log(line(header));
  console.log(widths.map((w) => '-'.repeat(w)).join('-|-'));
  for (const r of rows) console.log(line(r));
}

await main();
