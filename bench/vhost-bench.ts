// vhost-user-fs load generator: the test frontend (test/frontend) drives our daemon and the
// reference virtiofsd with the same FUSE workloads at queue depth 1 and 16, and prints
// ops/s and daemon CPU time per op (utime+stime from /proc/PID/stat) side by side, plus
// idle and loaded RSS (VmRSS). See bench/README.md.
//
//   node --import tsx bench/vhost-bench.ts [--seconds S] [--depths 1,16] [--only name,...]
//        [--rounds N] [--cpu-prof DIR] [--from-source]
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { execFileSync } from 'node:child_process';
import { startDaemon, vfsDaemonCommand, findVirtiofsd, cpuTicks, rssKiB, waitExit, REPO, type BackendKind, type Daemon } from '../test/frontend/daemons.js';
import { VirtioFsFrontend, HIPRIO, REQUEST, type FuseReply } from '../test/frontend/virtio-fs.js';
import { FuseClient, O_RDWR, O_CREAT, O_EXCL, S_IFREG } from '../test/frontend/fuse-client.js';
import * as F from '../test/frontend/fuse-requests.js';

const args = process.argv.slice(2);
function opt(name: string): string | undefined {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
}
const SECONDS = Number(opt('--seconds') ?? 2);
const DEPTHS = (opt('--depths') ?? '1,16').split(',').map(Number);
const ONLY = opt('--only')?.split(',');
const CPU_PROF = opt('--cpu-prof');
const FROM_SOURCE = args.includes('--from-source');
const BACKENDS = (opt('--backends') ?? 'vfs,virtiofsd').split(',') as BackendKind[];
const ROUNDS = Number(opt('--rounds') ?? 3);
const TICK_US = 1e6 / Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim() || 100);

const FILE_SIZE = 64 << 20;
const DIR_ENTRIES = 10000;

interface Req {
  parts: Buffer[];
  replyLens: number[];
  queue?: number;
}

/** One stream: gets the reply to its previous request (undefined at start), returns the next. */
type Stream = (reply: FuseReply | undefined) => Req;

interface Workload {
  name: string;
  /** Builds `depth` independent streams; `done()` counts one finished op. */
  streams(c: FuseClient, depth: number, done: () => void): Stream[];
}

function ok(r: FuseReply | undefined, what: string): FuseReply {
  if (r === undefined || r.header.error !== 0) throw new Error(`${what} failed: ${r === undefined ? 'no reply' : r.header.error}`);
  return r;
}

/** FORGET on the hiprio queue; it has no reply: fire it now, reap its used entry later. */
function forget(c: FuseClient, node: bigint, n: number): void {
  c.fe.enqueue([F.request(F.Op.FORGET, node, [F.forgetIn(n)])], [], HIPRIO);
  c.fe.queues[HIPRIO].publish();
  if (c.fe.queues[HIPRIO].freeCount < 8) c.fe.complete(HIPRIO);
  else c.fe.reap(HIPRIO);
}

const rq = (op: number, node: bigint, a: Buffer[], replyLens: number[], data?: Buffer): Req => {
  const len = F.IN_HEADER + a.reduce((n, b) => n + b.length, 0) + (data?.length ?? 0);
  const head = F.request(op, node, a, { len });
  return { parts: data === undefined ? [head] : [head, data], replyLens };
};

interface Nodes {
  small: bigint;
  big: bigint;
  bigFh: bigint;
  w: bigint;
  wFh: bigint;
  many: bigint;
}
let nodes: Nodes;
/** Distinct per run, so names created by one run never collide with another's leftovers. */
let runId = 0;

const workloads: Workload[] = [
  {
    name: 'getattr',
    streams: (_c, depth, done) =>
      Array.from({ length: depth }, () => (r) => {
        if (r !== undefined) {
          ok(r, 'GETATTR');
          done();
        }
        return rq(F.Op.GETATTR, nodes.small, [F.getattrIn()], [F.OUT_HEADER, F.ATTR_OUT]);
      }),
  },
  {
    name: 'lookup+forget',
    streams: (c, depth, done) =>
      Array.from({ length: depth }, () => (r) => {
        if (r !== undefined) {
          const e = F.parseEntry(ok(r, 'LOOKUP').body);
          // FORGET goes on the hiprio queue and has no reply: fire it, reap it later.
          forget(c, e.nodeid, 1);
          done();
        }
        return rq(F.Op.LOOKUP, F.ROOT_ID, [F.cstr('small')], [F.OUT_HEADER, F.ENTRY_OUT]);
      }),
  },
  {
    name: '4k-randread',
    streams: (_c, depth, done) =>
      Array.from({ length: depth }, () => (r) => {
        if (r !== undefined) {
          if (ok(r, 'READ').body.length !== 4096) throw new Error('short 4 KiB read');
          done();
        }
        const off = Math.floor(Math.random() * (FILE_SIZE / 4096)) * 4096;
        return rq(F.Op.READ, nodes.big, [F.rwIn(nodes.bigFh, off, 4096)], [F.OUT_HEADER, 4096]);
      }),
  },
  {
    name: '1m-seqread',
    streams: (_c, depth, done) => {
      let next = 0;
      return Array.from({ length: depth }, () => (r) => {
        if (r !== undefined) {
          if (ok(r, 'READ').body.length !== 1 << 20) throw new Error('short 1 MiB read');
          done();
        }
        const off = next;
        next = (next + (1 << 20)) % FILE_SIZE;
        return rq(F.Op.READ, nodes.big, [F.rwIn(nodes.bigFh, off, 1 << 20)], [F.OUT_HEADER, 1 << 20]);
      });
    },
  },
  {
    name: '4k-write',
    streams: (_c, depth, done) => {
      const data = Buffer.alloc(4096, 0x5a);
      return Array.from({ length: depth }, () => (r) => {
        if (r !== undefined) {
          if (ok(r, 'WRITE').body.readUInt32LE(0) !== 4096) throw new Error('short write');
          done();
        }
        const off = Math.floor(Math.random() * 4096) * 4096;
        return rq(F.Op.WRITE, nodes.w, [F.rwIn(nodes.wFh, off, 4096)], [F.OUT_HEADER, F.WRITE_OUT], data);
      });
    },
  },
  {
    name: 'create+unlink',
    streams: (c, depth, done) =>
      Array.from({ length: depth }, (_, k) => {
        let n = 0;
        let phase = 0;
        let created: { node: bigint; fh: bigint } | undefined;
        const name = (): string => `c${runId}-${k}-${n}`;
        return (r) => {
          if (r !== undefined) ok(r, ['CREATE', 'RELEASE', 'UNLINK'][phase]);
          if (r !== undefined && phase === 0) {
            created = { node: r.body.readBigUInt64LE(0), fh: r.body.readBigUInt64LE(F.ENTRY_OUT) };
            phase = 1;
            return rq(F.Op.RELEASE, created.node, [F.releaseIn(created.fh)], [F.OUT_HEADER]);
          }
          if (r !== undefined && phase === 1) {
            phase = 2;
            return rq(F.Op.UNLINK, F.ROOT_ID, [F.cstr(name())], [F.OUT_HEADER]);
          }
          if (r !== undefined && phase === 2 && created !== undefined) {
            // As the kernel does once the dentry goes: give back CREATE's lookup.
            forget(c, created.node, 1);
            done();
            n++;
          }
          phase = 0;
          return rq(F.Op.CREATE, F.ROOT_ID, [F.createIn(name(), O_RDWR | O_CREAT | O_EXCL, S_IFREG | 0o644)], [F.OUT_HEADER, F.ENTRY_OUT + F.OPEN_OUT]);
        };
      }),
  },
  {
    name: 'readdirplus-10k',
    // One op = OPENDIR, READDIRPLUS until empty, RELEASEDIR; `depth` listings run at once.
    streams: (c, depth, done) =>
      Array.from({ length: depth }, () => {
        let fh = -1n;
        let off = 0n;
        let seen = 0;
        let last = '';
        return (r) => {
          if (r !== undefined) ok(r, last);
          if (last === 'OPENDIR' && r !== undefined) {
            fh = r.body.readBigUInt64LE(0);
            off = 0n;
            seen = 0;
          } else if (last === 'READDIRPLUS' && r !== undefined) {
            const ents = F.parseDirentPlus(r.body);
            if (ents.length > 0) {
              seen += ents.length;
              off = ents[ents.length - 1].off;
              // The entries each took a lookup: give them back, as the kernel would later.
              const items = ents.filter((e) => e.entry.nodeid !== 0n).map((e) => ({ nodeid: e.entry.nodeid, nlookup: 1 }));
              if (items.length > 0) {
                c.fe.enqueue([F.request(F.Op.BATCH_FORGET, 0n, [F.batchForgetIn(items)])], [], HIPRIO);
                c.fe.queues[HIPRIO].publish();
                if (c.fe.queues[HIPRIO].freeCount < 8) c.fe.complete(HIPRIO);
                else c.fe.reap(HIPRIO);
              }
            } else {
              if (seen < DIR_ENTRIES) throw new Error(`listing ended after ${seen} entries`);
              last = 'RELEASEDIR';
              return rq(F.Op.RELEASEDIR, nodes.many, [F.releaseIn(fh)], [F.OUT_HEADER]);
            }
          } else if (last === 'RELEASEDIR') {
            done();
          }
          if (last === '' || last === 'RELEASEDIR') {
            last = 'OPENDIR';
            return rq(F.Op.OPENDIR, nodes.many, [F.openIn(0o200000)], [F.OUT_HEADER, F.OPEN_OUT]);
          }
          last = 'READDIRPLUS';
          return rq(F.Op.READDIRPLUS, nodes.many, [F.rwIn(fh, off, 64 * 1024)], [F.OUT_HEADER, 64 * 1024]);
        };
      }),
  },
];

interface Result {
  ops: number;
  seconds: number;
  /** Daemon CPU (utime+stime) over the cell. */
  cpuUs: number;
  /** The load generator's own CPU over the cell (when it nears the wall time, it is the limit). */
  frontendUs: number;
  /** Request-queue kicks the frontend sent and interrupts (call signals) it received. */
  kicks: number;
  interrupts: number;
}

/** Run `w` at `depth` for `seconds` and until at least `minOps` ops have finished. */
function run(c: FuseClient, d: Daemon, w: Workload, depth: number, seconds: number, minOps = 1): Result {
  const fe = c.fe;
  let ops = 0;
  runId++;
  const streams = w.streams(c, depth, () => ops++);
  const rq0 = fe.queues[REQUEST];
  const kicks0 = rq0.kicks;
  const irq0 = rq0.interrupts;
  const cpu0 = cpuTicks(d.pid);
  const self0 = process.cpuUsage();
  const t0 = process.hrtime.bigint();
  const end = t0 + BigInt(Math.round(seconds * 1e9));
  const submit = (k: number, r: FuseReply | undefined): void => {
    const q = streams[k](r);
    fe.enqueue(q.parts, q.replyLens, q.queue ?? REQUEST, k);
  };
  for (let k = 0; k < depth; k++) submit(k, undefined);
  fe.queues[REQUEST].publish();
  let stopping = false;
  while (fe.inFlight(REQUEST) > 0) {
    let got;
    try {
      got = fe.complete(REQUEST);
    } catch (e) {
      const q = fe.queues[REQUEST];
      console.error(`stuck after ${ops} ops: avail ${q.availIdx} used ${q.usedIdx()} lastUsed ${q.lastUsed} avail_event ${q.used.readUInt16LE(4 + 8 * q.size)} used_flags ${q.used.readUInt16LE(0)} kicks ${q.kicks} last ${JSON.stringify(q.lastDecision)}`);
      throw e;
    }
    if (!stopping && ops >= minOps && process.hrtime.bigint() >= end) stopping = true;
    for (const done of got) {
      if (!stopping) submit(done.tag, done.reply);
      else streams[done.tag](done.reply);
    }
    if (!stopping) fe.queues[REQUEST].publish();
  }
  while (fe.inFlight(HIPRIO) > 0) fe.complete(HIPRIO);
  const cpu1 = cpuTicks(d.pid);
  const t1 = process.hrtime.bigint();
  // Ops finished while draining count, and so does the drain time.
  const self = process.cpuUsage(self0);
  return { ops, seconds: Number(t1 - t0) / 1e9, cpuUs: (cpu1 - cpu0) * TICK_US, frontendUs: self.user + self.system,
    kicks: rq0.kicks - kicks0, interrupts: rq0.interrupts - irq0 };
}

function prepare(dir: string): void {
  const big = Buffer.alloc(FILE_SIZE);
  for (let i = 0; i < big.length; i += 4096) big.writeUInt32LE(i, i);
  fs.writeFileSync(path.join(dir, 'big'), big);
  fs.writeFileSync(path.join(dir, 'w'), Buffer.alloc(16 << 20));
  fs.writeFileSync(path.join(dir, 'small'), 'small file\n');
  const many = path.join(dir, 'many');
  fs.mkdirSync(many);
  for (let i = 0; i < DIR_ENTRIES; i++) fs.writeFileSync(path.join(many, `entry-${i}`), '');
}

interface Row {
  workload: string;
  depth: number;
  /** Every round's result, per backend. */
  res: Partial<Record<BackendKind, Result[]>>;
}

/** One connected backend: its process, its FUSE session, and the node ids the workloads use. */
interface Session {
  kind: BackendKind;
  d: Daemon;
  c: FuseClient;
  nodes: Nodes;
  idle: number;
  loaded: number;
  startMs: number;
}

async function openSession(kind: BackendKind, shared: string): Promise<Session> {
  // The V8 profiler makes syscalls (a sampling thread, signals, file writes) the seccomp
  // allowlist does not carry: profile without the filter.
  const extra: string[] = kind === 'vfs' && CPU_PROF !== undefined ? ['--seccomp', 'none'] : [];
  let vfsCommand: string[] | undefined;
  if (kind === 'vfs') {
    const dist = path.join(REPO, 'dist/daemon/main.js');
    const prof = CPU_PROF !== undefined ? ['--cpu-prof', '--cpu-prof-dir', path.resolve(CPU_PROF)] : [];
    const cmd = vfsDaemonCommand();
    if (FROM_SOURCE) vfsCommand = [process.execPath, ...prof, '--import', 'tsx', path.join(REPO, 'src/daemon/main.ts')];
    else vfsCommand = [cmd[0], ...prof, ...cmd.slice(1)];
    if (!FROM_SOURCE && fs.existsSync(dist) && cmd[1] !== dist) console.error('note: dist/ is older than src/, running from source (npm run build to bench the compiled daemon)');
    console.error(`vfs: ${vfsCommand.slice(1).join(' ')}`);
  } else {
    console.error(`virtiofsd: ${findVirtiofsd()}`);
  }
  const t0 = Date.now();
  const d = await startDaemon(kind, { sharedDir: shared, extraArgs: extra, vfsCommand });
  const startMs = Date.now() - t0;
  try {
    const fe = VirtioFsFrontend.open({ socketPath: d.socketPath, queueSize: 256, regions: [{ gpa: 0, size: 512 << 20 }], timeoutMs: 30000, viewReplies: true, countMismatches: true });
    const c = new FuseClient(fe);
    c.doInit();
    const big = c.lookup(F.ROOT_ID, 'big').nodeid;
    const w = c.lookup(F.ROOT_ID, 'w').nodeid;
    const n: Nodes = {
      small: c.lookup(F.ROOT_ID, 'small').nodeid,
      big,
      bigFh: c.open(big),
      w,
      wFh: c.open(w, O_RDWR),
      many: c.lookup(F.ROOT_ID, 'many').nodeid,
    };
    await new Promise((r) => setTimeout(r, 300));
    const idle = rssKiB(d.pid);
    return { kind, d, c, nodes: n, idle, loaded: idle, startMs };
  } catch (e) {
    console.error(`${kind} log (last lines):\n${d.log().split('\n').slice(-30).join('\n')}`);
    await d.stop();
    throw e;
  }
}

async function closeSession(s: Session): Promise<void> {
  try {
    s.c.fe.close();
    await waitExit(s.d, 10000);
  } finally {
    await s.d.stop();
    fs.rmSync(path.dirname(s.d.socketPath), { recursive: true, force: true });
  }
}

/** One cell of one backend: a short warm-up (JIT, page cache, inode tables), then the measurement. */
function cell(s: Session, wl: Workload, depth: number, round: number): Result {
  nodes = s.nodes;
  try {
    run(s.c, s.d, wl, depth, Math.min(0.5, SECONDS / 4));
    const r = run(s.c, s.d, wl, depth, SECONDS);
    s.loaded = Math.max(s.loaded, rssKiB(s.d.pid));
    console.error(`  round ${round} ${s.kind} ${wl.name} qd${depth}: ${(r.ops / r.seconds).toFixed(0)} ops/s, load generator CPU ${((100 * r.frontendUs) / 1e6 / r.seconds).toFixed(0)}%, kicks/op ${(r.kicks / r.ops).toFixed(2)}, interrupts/op ${(r.interrupts / r.ops).toFixed(2)}, missed interrupts ${s.c.fe.queues.map((q) => q.missedInterrupts).join('/')}, replies with another request's unique so far ${s.c.fe.mismatchedReplies}`);
    return r;
  } catch (e) {
    console.error(`${s.kind} log (last lines):\n${s.d.log().split('\n').slice(-30).join('\n')}`);
    throw e;
  }
}

function median(xs: number[]): number {
  if (xs.length === 0) return NaN;
  const a = [...xs].sort((x, y) => x - y);
  const m = a.length >> 1;
  return a.length % 2 === 1 ? a[m] : (a[m - 1] + a[m]) / 2;
}

function fmt(n: number, w: number): string {
  return n.toFixed(n >= 100 ? 0 : n >= 10 ? 1 : 2).padStart(w);
}

async function main(): Promise<void> {
  const shared = fs.mkdtempSync(path.join(os.tmpdir(), 'vfs-bench-'));
  const sessions: Session[] = [];
  try {
    prepare(shared);
    for (const kind of BACKENDS) sessions.push(await openSession(kind, shared));
    // Both backends stay connected and take turns cell by cell, the order swapped every
    // round, so a change in the machine's load (2 shared CPUs) falls on both alike; the
    // table shows each backend's median over the rounds.
    const rows: Row[] = [];
    for (const wl of workloads) {
      if (ONLY !== undefined && !ONLY.includes(wl.name)) continue;
      for (const depth of DEPTHS) {
        const row: Row = { workload: wl.name, depth, res: {} };
        rows.push(row);
        for (let round = 1; round <= ROUNDS; round++) {
          const order = round % 2 === 1 ? sessions : [...sessions].reverse();
          for (const s of order) (row.res[s.kind] ??= []).push(cell(s, wl, depth, round));
        }
      }
    }
    console.log(`\nvhost-user-fs bench: ${SECONDS}s per cell, median of ${ROUNDS} alternating rounds, ${os.cpus().length} CPUs, node ${process.version}; CPU = daemon utime+stime per op\n`);
    console.log(`${'workload'.padEnd(16)}${'qd'.padStart(4)} | ${'vfs ops/s'.padStart(10)}${'vfsd ops/s'.padStart(11)}${'ratio'.padStart(7)} | ${'vfs µs/op'.padStart(10)}${'vfsd µs/op'.padStart(11)}${'ratio'.padStart(7)} | ratio range`);
    console.log('-'.repeat(96));
    for (const r of rows) {
      const rate = (k: BackendKind): number[] => (r.res[k] ?? []).map((x) => x.ops / x.seconds);
      const cpu = (k: BackendKind): number[] => (r.res[k] ?? []).filter((x) => x.ops > 0).map((x) => x.cpuUs / x.ops);
      const ra = median(rate('vfs'));
      const rb = median(rate('virtiofsd'));
      const ca = median(cpu('vfs'));
      const cb = median(cpu('virtiofsd'));
      // Per-round ratios (same round, back to back): their spread says how far to trust the median.
      const perRound = rate('vfs').map((a, i) => a / (rate('virtiofsd')[i] ?? NaN)).filter((x) => Number.isFinite(x));
      const range = perRound.length > 0 ? `${Math.min(...perRound).toFixed(2)}-${Math.max(...perRound).toFixed(2)}` : '';
      console.log(`${r.workload.padEnd(16)}${String(r.depth).padStart(4)} | ${fmt(ra, 10)}${fmt(rb, 11)}${fmt(ra / rb, 7)} | ${fmt(ca, 10)}${fmt(cb, 11)}${fmt(ca / cb, 7)} | ${range}`);
    }
    console.log('-'.repeat(96));
    const by = (k: BackendKind): Session | undefined => sessions.find((s) => s.kind === k);
    const m = (k: BackendKind, f: 'idle' | 'loaded'): string => `${((by(k)?.[f] ?? 0) / 1024).toFixed(1)} MB`;
    console.log(`RSS idle (connected, after INIT): vfs ${m('vfs', 'idle')}, virtiofsd ${m('virtiofsd', 'idle')}`);
    console.log(`RSS loaded (max after each cell): vfs ${m('vfs', 'loaded')}, virtiofsd ${m('virtiofsd', 'loaded')}`);
    console.log(`start to listening: vfs ${by('vfs')?.startMs ?? 0} ms, virtiofsd ${by('virtiofsd')?.startMs ?? 0} ms`);
  } finally {
    for (const s of sessions) await closeSession(s);
    fs.rmSync(shared, { recursive: true, force: true });
  }
}

await main();
