// --queue-threads against the real daemon as users run it (vfs-launch, --sandbox namespace,
// --seccomp kill), through the vhost-user test frontend with three request queues: queues 2
// and 3 are served by threads of their own, which serve READ and WRITE themselves and hand
// every other request to the device loop. Checked: data both ways on every queue, requests
// the threads hand over (GETATTR, OPEN, RELEASE, ...), a control message while requests are
// in flight (the threads give their rings back and take them again), a RELEASE racing with
// reads of the same handle (a read never returns another file's bytes), and from outside
// that the threads did the serving (the daemon's own count when the frontend leaves).
import test from 'ava';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {
  EntryOutHead, InitIn, Op, OpenIn, OpenOut, ReadIn, ReleaseIn, WriteIn, WriteOut,
} from '../src/fs/fuse-abi.js';
import { Req } from '../src/vhost/vhost-user-protocol.js';
import { type FuseReply } from './frontend/virtio-fs.js';
import { u64 } from './frontend/vhost-user.js';
import { eventfd } from '../src/sys/event-calls.js';
import { cstr, request, struct } from './fs-helpers.js';
import { connectSandboxed } from './fuzz/sandboxed-daemon.js';

const FILE_BYTES = 1 << 20;

async function setUp(t: { teardown(fn: () => void | Promise<void>): void }, threads: number) {
  const parent = fs.mkdtempSync(path.join(os.tmpdir(), 'vfs-qthreads-'));
  const share = path.join(parent, 'share');
  fs.mkdirSync(share);
  const a = Buffer.alloc(FILE_BYTES);
  for (let i = 0; i < a.length; i += 4) a.writeUInt32LE(i, i);
  fs.writeFileSync(path.join(share, 'a'), a);
  fs.writeFileSync(path.join(share, 'b'), Buffer.alloc(FILE_BYTES, 0xbb));
  fs.writeFileSync(path.join(share, 'w'), Buffer.alloc(0));
  t.teardown(() => fs.rmSync(parent, { recursive: true, force: true }));
  const { d, fe, closeFrontend: close } = await connectSandboxed(t, share, ['--queue-threads', String(threads), '--log-level', 'debug'],
    { requestQueues: 3, queueSize: 512, regions: [{ gpa: 0, size: 256 << 20, allowSealing: true }] });
  const ok = (op: number, parts: Buffer[], nodeid: bigint | number = 1, queue = 1): Buffer => {
    const r = fe.call([request(op, parts, { nodeid })], [16, 256 * 1024], queue);
    if (r === undefined || r.header.error !== 0) throw new Error(`${op} on queue ${queue}: ${r === undefined ? 'no reply' : `error ${r.header.error}`}`);
    return r.body;
  };
  ok(Op.INIT, [struct(InitIn, { major: 7, minor: 38, maxReadahead: 131072, flags: 0xffffffff })], 0);
  const lookup = (name: string, queue = 1): bigint => EntryOutHead.decode(ok(Op.LOOKUP, [cstr(name)], 1, queue), 0).nodeid;
  const open = (node: bigint, flags: number, queue = 1): bigint => OpenOut.decode(ok(Op.OPEN, [struct(OpenIn, { flags })], node, queue), 0).fh;
  return { share, a, d, fe, ok, lookup, open, close };
}

function readReq(fh: bigint, node: bigint, offset: number, size: number): Buffer {
  return request(Op.READ, [struct(ReadIn, { fh, offset: BigInt(offset), size })], { nodeid: node });
}

test.serial('--queue-threads 2: READ and WRITE on every request queue, handed-over requests, a control message mid-flight', async (t) => {
  t.timeout(120_000);
  const { share, a, d, fe, ok, lookup, open, close } = await setUp(t, 2);
  t.regex(d.log(), /2 queue thread\(s\) started/);
  // From outside: the queue threads dropped their capabilities to the main thread's sets
  // (capabilities are per thread; Node's own threads only have the bounding set setpriv
  // narrowed at exec), and every thread is under the seccomp filter.
  const tasks = fs.readdirSync(`/proc/${d.pid}/task`);
  const field = (tid: string, key: string): string =>
    fs.readFileSync(`/proc/${d.pid}/task/${tid}/status`, 'utf8').split('\n').find((l) => l.startsWith(`${key}:`))?.split(/\s+/)[1] ?? '';
  const mainCaps = field(String(d.pid), 'CapEff');
  const dropped = tasks.filter((tid) => field(tid, 'CapEff') === mainCaps && field(tid, 'CapPrm') === field(String(d.pid), 'CapPrm'));
  t.true(dropped.length >= 3, `the main thread and both queue threads have the reduced sets (${dropped.length} of ${tasks.length} threads)`);
  for (const tid of tasks) t.is(field(tid, 'Seccomp'), '2', `thread ${tid}: under the filter`);
  t.not(mainCaps, '000001ffffffffff', 'the main thread dropped capabilities');
  const na = lookup('a', 2); // LOOKUP on a thread's queue: handed to the device loop
  const fh = open(na, 0, 3);
  for (const q of [1, 2, 3]) {
    let good = 0;
    fe.pipeline(400, 16, (i) => ({ parts: [readReq(fh, na, ((i * 4096) * 7) % FILE_BYTES, 4096)], replyLens: [16, 4096] }),
      (i, r: FuseReply | undefined) => {
        const off = ((i * 4096) * 7) % FILE_BYTES;
        if (r?.header.error === 0 && r.body.equals(a.subarray(off, off + 4096))) good++;
      }, q);
    t.is(good, 400, `queue ${q}: every 4 KiB read has the file's bytes`);
  }
  // A read of 1 MiB in 256 page-sized descriptors, on a thread's queue.
  const whole = fe.call([readReq(fh, na, 0, FILE_BYTES)], [16, ...new Array<number>(256).fill(4096)], 2);
  t.true(whole?.body.equals(a), '1 MiB read on queue 2');
  // Writes on the threads' queues land in the file.
  const nw = lookup('w');
  const fw = open(nw, 2 /* O_RDWR */, 2);
  for (const q of [2, 3]) {
    const data = Buffer.alloc(65536, q);
    const r = fe.call([request(Op.WRITE, [struct(WriteIn, { fh: fw, offset: BigInt(q * 65536), size: data.length }), data], { nodeid: nw })], [16, WriteOut.size], q);
    t.is(r?.header.error, 0);
    t.is(WriteOut.decode(r?.body ?? Buffer.alloc(8), 0).size, data.length);
  }
  const onDisk = fs.readFileSync(path.join(share, 'w'));
  t.true(onDisk.subarray(2 * 65536, 3 * 65536).equals(Buffer.alloc(65536, 2)) && onDisk.subarray(3 * 65536, 4 * 65536).equals(Buffer.alloc(65536, 3)));
  // GETATTR and RELEASE on a thread's queue go to the device loop and are answered there.
  ok(Op.GETATTR, [Buffer.alloc(16)], na, 3);
  ok(Op.RELEASE, [struct(ReleaseIn, { fh: fw })], nw, 2);
  // A control message while reads are in flight on queue 2: the ring goes back to the
  // device loop and out again; every request completes.
  for (let i = 0; i < 32; i++) fe.enqueue([readReq(fh, na, i * 4096, 4096)], [16, 4096], 2, i);
  fe.queues[2].publish();
  fe.vu.setOk(Req.SET_VRING_CALL, u64(2), [eventfd()]);
  fe.vu.setOk(Req.SET_VRING_CALL, u64(2), [fe.queues[2].callFd]);
  let done = 0;
  const deadline = Date.now() + 20_000;
  while (done < 32 && Date.now() < deadline) {
    for (const c of fe.complete(2, 1000)) {
      if (c.reply?.header.error === 0 && c.reply.body.equals(a.subarray(c.tag * 4096, c.tag * 4096 + 4096))) done++;
    }
  }
  t.is(done, 32, 'the reads in flight across the control message all completed, with the right bytes');
  t.deepEqual(ok(Op.READ, [struct(ReadIn, { fh, offset: 4096n, size: 16 })], na, 2), a.subarray(4096, 4112), 'queue 2 serves after the message');
  close();
  const code = await d.stop();
  const log = d.log();
  t.is(code, 0, log.slice(-3000));
  const counts = [...log.matchAll(/queue (\d+) back from queue thread (\d+): (\d+) served there, (\d+) handed over/g)];
  t.true(counts.some((m) => m[1] === '2' && Number(m[3]) >= 400), `queue 2's reads were served on its thread:\n${counts.map((m) => m[0]).join('\n')}`);
  t.true(counts.some((m) => m[1] === '3' && Number(m[3]) >= 400), 'queue 3 likewise');
  t.true(counts.some((m) => Number(m[4]) >= 1), 'requests other than READ/WRITE were handed over');
  t.notRegex(log, /SIGSYS|outside the policy/);
});

test.serial('--queue-threads: a RELEASE racing with reads of the same handle never lets a read return another file\'s bytes', async (t) => {
  t.timeout(120_000);
  const { a, fe, ok, lookup, open } = await setUp(t, 1);
  const na = lookup('a');
  const nb = lookup('b');
  let stale = 0;
  let wrong = 0;
  for (let round = 0; round < 30; round++) {
    const fh = open(na, 0);
    for (let i = 0; i < 64; i++) fe.enqueue([readReq(fh, na, i * 4096, 4096)], [16, 4096], 2, i);
    fe.queues[2].publish();
    // Release on queue 1 while the thread reads on queue 2, then open b: its fd may take
    // the number a's fd had.
    ok(Op.RELEASE, [struct(ReleaseIn, { fh })], na);
    const fb = open(nb, 0);
    let done = 0;
    while (done < 64) {
      for (const c of fe.complete(2, 10_000)) {
        done++;
        const r = c.reply;
        if (r === undefined) { wrong++; continue; }
        if (r.header.error !== 0) { stale++; continue; }
        if (!r.body.equals(a.subarray(c.tag * 4096, c.tag * 4096 + 4096))) wrong++;
      }
    }
    ok(Op.RELEASE, [struct(ReleaseIn, { fh: fb })], nb);
  }
  t.is(wrong, 0, 'every read returned a\'s bytes or an error');
  t.log(`${30 * 64} reads raced with RELEASE: ${30 * 64 - stale} served, ${stale} failed (handle gone)`);
});

test.serial('--queue-threads: malformed READ/WRITE requests and chains on a thread\'s queue fail alone; the daemon keeps serving', async (t) => {
  t.timeout(120_000);
  const { a, d, fe, ok, lookup, open } = await setUp(t, 1);
  const na = lookup('a');
  const nb = lookup('b');
  const fh = open(na, 0);
  const call = (req: Buffer, replyLens: number[] = [16, 4096]): FuseReply | undefined => fe.call([req], replyLens, 2);
  const errno = (r: FuseReply | undefined): number | undefined => r?.header.error;
  const cases: [string, Buffer, number[] | undefined, number][] = [
    ['READ of a handle on another node', readReq(fh, nb, 0, 4096), undefined, -9],
    ['READ of a handle never opened', readReq(fh + 1000n, na, 0, 4096), undefined, -9],
    ['READ at offset 2^63', request(Op.READ, [struct(ReadIn, { fh, offset: 1n << 63n, size: 4096 })], { nodeid: na }), undefined, -22],
    ['READ with its arguments cut short', request(Op.READ, [struct(ReadIn, { fh, offset: 0n, size: 4096 }).subarray(0, 20)], { nodeid: na }), undefined, -22],
    ['READ whose len field lies', (() => { const r = readReq(fh, na, 0, 4096); r.writeUInt32LE(4000, 0); return r; })(), undefined, -22],
    ['WRITE whose size disagrees with its payload', request(Op.WRITE, [struct(WriteIn, { fh, offset: 0n, size: 100 }), Buffer.alloc(10)], { nodeid: na }), undefined, -22],
    ['WRITE on a read-only handle', request(Op.WRITE, [struct(WriteIn, { fh, offset: 0n, size: 4 }), Buffer.from('nope')], { nodeid: na }), undefined, -9],
    ['READ with room for a header only', readReq(fh, na, 0, 4096), [16], 0],
  ];
  for (const [what, req, lens, want] of cases) {
    const r = call(req, lens);
    t.is(errno(r), want, what);
  }
  // A reply descriptor outside guest memory: the chain is refused (length 0), nothing written.
  t.throws(() => fe.callAt([{ gpa: 64 << 20, data: readReq(fh, na, 0, 4096) }], [{ gpa: (256 << 20) + 4096, len: 4096 }], 2),
    { message: /reply of 0 bytes/ }, 'a chain pointing outside guest memory completes with length 0');
  // A header shorter than fuse_in_header.
  const short = fe.call([Buffer.alloc(8)], [16, 16], 2);
  t.true(short === undefined || short.usedLen === 0 || (short.header.error ?? 0) < 0, 'a request shorter than its header fails');
  t.deepEqual(ok(Op.READ, [struct(ReadIn, { fh, offset: 8192n, size: 16 })], na, 2), a.subarray(8192, 8208), 'the thread still serves');
  t.regex(d.log(), /malformed descriptor chain/, 'the refused chain is logged');
  t.true(d.alive(), 'the daemon is alive');
  t.notRegex(d.log(), /SIGSYS|outside the policy/);
});
