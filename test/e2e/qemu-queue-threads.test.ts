// End to end in a QEMU guest (TCG) that drives several virtio-fs request queues: --queue-threads
// against the Debian 13 kernel (6.12; Linux uses more than the first request queue only from
// 6.11 on, so the host's 6.1 guests never reach a queue thread), unpacked by
// scripts/setup-trixie-kernel.sh. The device has 4 request queues and the guest 4 vCPUs; 6.12
// maps each CPU to a request queue, so one process pinned to each vCPU (taskset) sends its
// requests on a queue of its own. The daemon runs under vfs-launch (namespace sandbox, seccomp
// kill) with --queue-threads 3: request queue 1 on the main thread, 2..4 on threads. Each
// process reads a host file (cat through the page cache and dd iflag=direct), writes one of
// its own (direct and buffered), and creates, renames and unlinks files in a directory of its
// own; the guest then lists the tree. Checked: every checksum on both sides, the tree on the
// host, the requests on each queue (the daemon's debug line when the guest leaves), and from
// the daemon's own count (logged when it stops the threads) that at least
// two queue threads served requests themselves. The same guest with --queue-threads 0 is the
// baseline: the same results, with every queue on the main thread.
import test from 'ava';
import type { ExecutionContext } from 'ava';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { bootGuest, findQemu, keyed, trixieKernel } from './guest.js';
import { startBackend } from './backend.js';

const CPUS = 4;
const REQUEST_QUEUES = 4;
/** Bytes of each file a process reads, and of each it writes. */
const FILE_BYTES = 4 << 20;
/** Files each process creates in its directory (a third renamed, a third unlinked). */
const FILES = 30;

const md5 = (b: Buffer): string => crypto.createHash('md5').update(b).digest('hex');

function prepare(share: string): Map<string, string> {
  const sums = new Map<string, string>();
  for (let i = 0; i < CPUS; i++) {
    const b = crypto.randomBytes(FILE_BYTES);
    fs.writeFileSync(path.join(share, `r${i}`), b);
    sums.set(`r${i}`, md5(b));
  }
  fs.mkdirSync(path.join(share, 'tree/a/b'), { recursive: true });
  for (let i = 0; i < 40; i++) fs.writeFileSync(path.join(share, `tree/a/b/t${i}`), String(i));
  return sums;
}

// Each worker runs pinned to its vCPU; its lines are prefixed with its number. The written
// data comes from a guest tmpfs file, so its checksum is of what was sent, not of the page
// cache; after drop_caches the reads come from the daemon again.
const SCRIPT = String.raw`
cd "$VFS_MNT" || exit 90
echo "KERNEL $(uname -r)"
echo "CPUS $(nproc)"
cat > /tmp/work.sh <<'WORK'
cd "$VFS_MNT" || exit 90
i=$1
dd if=/dev/urandom of=/tmp/src$i bs=64k count=${FILE_BYTES / 65536} 2>/dev/null
echo "SRC$i $(md5sum < /tmp/src$i | cut -d' ' -f1)"
echo "CAT$i $(cat r$i | md5sum | cut -d' ' -f1)"
echo "DIRECT$i $(dd if=r$i bs=64k iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)"
dd if=/tmp/src$i of=w$i bs=64k oflag=direct 2>/dev/null || echo "ERR$i dd-write"
cat /tmp/src$i > b$i || echo "ERR$i cat-write"
mkdir d$i || echo "ERR$i mkdir"
n=0
while [ $n -lt ${FILES} ]; do echo "$i-$n" > d$i/f$n || echo "ERR$i create $n"; n=$((n+1)); done
n=0
while [ $n -lt ${FILES} ]; do
  case $((n % 3)) in
    1) mv d$i/f$n d$i/g$n || echo "ERR$i rename $n" ;;
    2) rm d$i/f$n || echo "ERR$i unlink $n" ;;
  esac
  n=$((n+1))
done
echo "LS$i $(ls d$i | wc -l)"
echo "WORKER$i done"
WORK
for i in $(seq 0 $((${CPUS} - 1))); do
  taskset -c $i sh /tmp/work.sh $i > /tmp/out$i 2>&1 &
done
wait
cat /tmp/out*
sync
echo 3 > /proc/sys/vm/drop_caches
for i in $(seq 0 $((${CPUS} - 1))); do
echo "REREAD$i $(taskset -c $i cat w$i | md5sum | cut -d' ' -f1) $(taskset -c $i cat b$i | md5sum | cut -d' ' -f1)"
done
echo "LSLR $(ls -lR . | wc -l)"
echo "TREE $(ls tree/a/b | wc -l)"
`;

interface Outcome {
  kernel: string;
  /** Each request queue's avail index when the guest left (requests the guest put on it). */
  used: Map<number, number>;
  served: Map<number, number>;
  forwarded: Map<number, number>;
  ms: number;
}

/** Requests the guest put on each request queue: its "queue N stopped at I" line (I < 65536 here). */
function queueUse(log: string): Map<number, number> {
  const used = new Map<number, number>();
  for (const m of log.matchAll(/queue (\d+) stopped at (\d+)/g)) if (Number(m[1]) >= 1) used.set(Number(m[1]), Number(m[2]));
  return used;
}

/** Each queue thread's totals, from the daemon's line when it stops them ("queue thread i (queue N): X requests served there, Y handed to the main thread"). */
function threadCounts(log: string): { served: Map<number, number>; forwarded: Map<number, number> } {
  const served = new Map<number, number>();
  const forwarded = new Map<number, number>();
  for (const m of log.matchAll(/queue thread \d+ \(queue (\d+)\): (\d+) requests served there, (\d+) handed to the main thread/g)) {
    served.set(Number(m[1]), Number(m[2]));
    forwarded.set(Number(m[1]), Number(m[3]));
  }
  return { served, forwarded };
}

async function run(t: ExecutionContext, threads: number): Promise<Outcome> {
  findQemu();
  const kernelRoot = trixieKernel();
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'vfs-e2e-qthreads-'));
  t.teardown(() => fs.rmSync(work, { recursive: true, force: true }));
  const share = path.join(work, 'share');
  fs.mkdirSync(share);
  const sums = prepare(share);
  const sock = path.join(work, 'vfs.sock');
  const backend = await startBackend({
    kind: 'ours', sharedDir: share, socketPath: sock, sandbox: 'namespace',
    daemonArgs: ['--seccomp', 'kill', '--queue-threads', String(threads), '--log-level', 'debug'],
  });
  t.teardown(async () => { await backend.stop(); });
  const start = Date.now();
  const r = await bootGuest({
    socketPath: sock, script: SCRIPT, kernelRoot, cpus: CPUS, requestQueues: REQUEST_QUEUES, memMiB: 512,
    backendExited: backend.exited, backendOutput: backend.output, timeoutMs: 100_000,
  });
  const ms = Date.now() - start;
  // The daemon ends by itself when the frontend leaves (checked below: exit 0, no SIGSYS).
  const exit = (await backend.waitExit(20_000)) ?? await backend.stop();
  t.is(r.rc, 0, r.lines.join('\n'));
  t.deepEqual(r.lines.filter((l) => l.startsWith('ERR')), []);
  const k = keyed(r.lines);
  t.is(k.get('CPUS'), String(CPUS));
  for (let i = 0; i < CPUS; i++) {
    t.is(k.get(`WORKER${i}`), 'done', `worker ${i}`);
    t.is(k.get(`CAT${i}`), sums.get(`r${i}`), `r${i} read through the page cache`);
    t.is(k.get(`DIRECT${i}`), sums.get(`r${i}`), `r${i} read direct`);
    const src = k.get(`SRC${i}`);
    t.is(md5(fs.readFileSync(path.join(share, `w${i}`))), src, `w${i} (direct writes) on the host`);
    t.is(md5(fs.readFileSync(path.join(share, `b${i}`))), src, `b${i} (buffered writes) on the host`);
    t.is(k.get(`REREAD${i}`), `${src} ${src}`, `w${i} and b${i} read back in the guest`);
    const names = fs.readdirSync(path.join(share, `d${i}`)).sort();
    const want: string[] = [];
    for (let n = 0; n < FILES; n++) if (n % 3 === 0) want.push(`f${n}`); else if (n % 3 === 1) want.push(`g${n}`);
    t.deepEqual(names, want.sort(), `d${i} on the host`);
    t.is(k.get(`LS${i}`), String(want.length));
    for (const name of want) t.is(fs.readFileSync(path.join(share, `d${i}`, name), 'utf8'), `${i}-${name.slice(1)}\n`);
  }
  t.is(k.get('TREE'), '40');
  t.true(Number(k.get('LSLR')) > 40 + CPUS * 20, `ls -lR printed ${k.get('LSLR')} lines`);
  // Under --seccomp kill a syscall outside the policy is SIGSYS: the daemon must have ended cleanly.
  t.deepEqual(exit, { code: 0, signal: null }, backend.output().slice(-3000));
  const { served, forwarded } = threadCounts(backend.output());
  const used = queueUse(backend.output());
  t.log(`--queue-threads ${threads}: kernel ${k.get('KERNEL') ?? '?'}, guest ${r.totalMs} ms (boot ${r.bootMs} ms); requests per queue ${JSON.stringify([...used])}; served on threads ${JSON.stringify([...served])}, handed over ${JSON.stringify([...forwarded])}`);
  // The guest spread its requests: every request queue carried a worker's share (> 100 each).
  for (let q = 1; q <= REQUEST_QUEUES; q++) t.true((used.get(q) ?? 0) > 100, `queue ${q}: ${used.get(q) ?? 0} requests`);
  return { kernel: k.get('KERNEL') ?? '', used, served, forwarded, ms };
}

test.serial('a 6.12 guest with 4 request queues on 4 vCPUs: 3 queue threads serve its parallel reads and writes, data and tree right on both sides', async (t) => {
  t.timeout(200_000);
  const o = await run(t, 3);
  t.is(o.served.size, 3, 'the daemon reported its three queue threads');
  t.regex(o.kernel, /^6\.(1[1-9]|[2-9]\d)/);
  const busy = [...o.served].filter(([, n]) => n > 0);
  t.true(busy.length >= 2, `queue threads that served requests: ${JSON.stringify([...o.served])}`);
  for (const [q] of busy) t.true(q >= 2 && q <= 4, `queue ${q} is a thread queue`);
});

test.serial('the same guest and workload with --queue-threads 0 (every queue on the main thread)', async (t) => {
  t.timeout(200_000);
  const o = await run(t, 0);
  t.is(o.served.size, 0, 'no queue thread');
});
