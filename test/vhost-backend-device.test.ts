// The device loop end to end, before the FUSE core is wired in: runVhostDevice in a child
// process with a stand-in session (ENOSYS for everything, plus an "echo" opcode that copies
// the request body into the reply, to check the data path), driven by the test frontend
// in test/frontend. Covers the handshake (features, queue count, config space), requests on
// the hiprio and request queues with and without EVENT_IDX and indirect tables, pipelining,
// ring stop/restart, a few bad messages, a second frontend, and exit on disconnect/stop.
import test from 'ava';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { VirtioFsFrontend, HIPRIO, REQUEST, type FrontendOptions } from './frontend/virtio-fs.js';
import { Req, FLAG_VERSION, FLAG_NEED_REPLY, vringState, u64 } from './frontend/vhost-user.js';
import { request, IN_HEADER, OUT_HEADER } from './frontend/fuse-requests.js';
import { runVhostDevice } from '../src/vhost/device.js';
import { listenUnix, connectUnix, closeFd, recvMsg, pollIn } from '../src/sys/socket-calls.js';
import { eventfd, eventfdWrite } from '../src/sys/event-calls.js';
import { Feature, ProtocolFeature, CONFIG, Req as VReq, encodeConfigAccess } from '../src/vhost/vhost-user-protocol.js';
import { OFFERED_FEATURES } from '../src/vhost/vhost-user-backend.js';
import { repoFile, startDeviceChild, type DeviceChild } from './vhost-backend-helpers.js';

const ECHO = 4242;
const ENOSYS = 38;

// The child: listen, serve one frontend with the stand-in session, exit with the code.
const CHILD = `
import { runVhostDevice } from ${repoFile('src/vhost/device.ts')};
import { listenUnix } from ${repoFile('src/sys/socket-calls.ts')};
import { eventfd } from ${repoFile('src/sys/event-calls.ts')};
import { setLogLevel } from ${repoFile('src/log.ts')};
setLogLevel('debug');
const [sock, tag] = process.argv.slice(-2);
const listenFd = listenUnix(sock);
let served = 0;
const session = {
  destroyed: false,
  handle(readable, writable) {
    const req = Buffer.concat(readable);
    served++;
    const opcode = req.readUInt32LE(4);
    const unique = req.readBigUInt64LE(8);
    const body = opcode === ${ECHO} ? req.subarray(${IN_HEADER}) : Buffer.alloc(0);
    const reply = Buffer.alloc(${OUT_HEADER} + body.length);
    reply.writeUInt32LE(reply.length, 0);
    reply.writeInt32LE(opcode === ${ECHO} ? 0 : -${ENOSYS}, 4);
    reply.writeBigUInt64LE(unique, 8);
    body.copy(reply, ${OUT_HEADER});
    let off = 0;
    for (const w of writable) { if (off >= reply.length) break; off += reply.copy(w, 0, off); }
    return off;
  },
};
const code = runVhostDevice({ listenFd, stopFd: eventfd(), tag: tag === '-' ? undefined : tag, makeSession: () => session });
console.error('served ' + served + ' exit ' + code);
process.exit(code);
`;

type Child = DeviceChild;

function startChild(t: { teardown(fn: () => void | Promise<void>): void }, tag = 'backend-test'): Promise<Child> {
  return startDeviceChild(t, 'vhost-backend-device-', CHILD, () => [tag]);
}

function open(t: { teardown(fn: () => void): void }, c: Child, opts: Partial<FrontendOptions> = {}): VirtioFsFrontend {
  const fe = VirtioFsFrontend.open({ socketPath: c.sock, regions: [{ gpa: 0, size: 64 << 20 }], queueSize: 256, slotBytes: 256 * 1024, ...opts });
  t.teardown(() => fe.close());
  return fe;
}

function echo(fe: VirtioFsFrontend, payload: Buffer, queue = REQUEST, split = 1): Buffer {
  const req = request(ECHO, 1n, [payload]);
  const parts: Buffer[] = [];
  const step = Math.ceil(req.length / split);
  for (let o = 0; o < req.length; o += step) parts.push(req.subarray(o, o + step));
  const r = fe.call(parts, [OUT_HEADER, payload.length], queue);
  if (r === undefined) throw new Error('no reply');
  if (r.header.error !== 0) throw new Error(`error ${r.header.error}`);
  return r.body;
}

test.serial('handshake: features, queue count and the virtio-fs config space with a tag', async (t) => {
  const c = await startChild(t, 'myfs');
  const fe = open(t, c, { noQueues: true });
  t.is(fe.backendFeatures, OFFERED_FEATURES);
  t.is(fe.backendFeatures, Feature.VERSION_1 | Feature.RING_INDIRECT_DESC | Feature.RING_EVENT_IDX | Feature.PROTOCOL_FEATURES);
  const pf = fe.backendProtocolFeatures;
  t.is(pf, ProtocolFeature.MQ | ProtocolFeature.REPLY_ACK | ProtocolFeature.CONFIGURE_MEM_SLOTS | ProtocolFeature.CONFIG);
  t.is(fe.queueNum, 17);
  t.is(fe.vu.getU64(Req.GET_MAX_MEM_SLOTS), 509n);
  const cfg = fe.vu.get(Req.GET_CONFIG, encodeConfigAccess({ offset: 0, size: 40, flags: 0 }, Buffer.alloc(40)));
  t.is(cfg.length, CONFIG.payload + 40);
  t.is(cfg.subarray(CONFIG.payload, CONFIG.payload + 36).toString().replace(/\0+$/, ''), 'myfs');
  t.is(cfg.readUInt32LE(CONFIG.payload + 36), 1);
  const part = fe.vu.get(Req.GET_CONFIG, encodeConfigAccess({ offset: 36, size: 4, flags: 0 }, Buffer.alloc(4)));
  t.is(part.readUInt32LE(CONFIG.payload), 1);
  const bad = fe.vu.get(Req.GET_CONFIG, encodeConfigAccess({ offset: 38, size: 4, flags: 0 }, Buffer.alloc(4)));
  t.is(bad.length, 0, 'out of range: an empty reply');
  t.not(fe.vu.set(VReq.SET_CONFIG, encodeConfigAccess({ offset: 0, size: 4, flags: 0 }, Buffer.alloc(4)), [], true), 0n, 'config is read-only');
});

test.serial('without a tag, CONFIG is not offered (QEMU 7.2 would abort) and GET_CONFIG gets an empty reply', async (t) => {
  const c = await startChild(t, '-');
  const fe = open(t, c, { noQueues: true });
  t.is(fe.backendProtocolFeatures & ProtocolFeature.CONFIG, 0n);
  t.is(fe.vu.get(Req.GET_CONFIG, encodeConfigAccess({ offset: 0, size: 40, flags: 0 }, Buffer.alloc(40))).length, 0);
});

for (const [name, opts] of [
  ['EVENT_IDX', { eventIdx: true }],
  ['no EVENT_IDX', { eventIdx: false }],
  ['indirect tables', { indirect: true }],
  ['queue size 1024', { queueSize: 1024 }],
] as [string, Partial<FrontendOptions>][]) {
  test(`requests on both queues, pipelined, zero copy data path (${name})`, async (t) => {
    const c = await startChild(t);
    const fe = open(t, c, opts);
    const r = fe.call([request(3, 1n)], [OUT_HEADER]);
    t.is(r?.header.error, -ENOSYS);
    t.is(r?.usedLen, OUT_HEADER);
    t.deepEqual(echo(fe, Buffer.from('over the hiprio queue'), HIPRIO), Buffer.from('over the hiprio queue'));
    const big = Buffer.alloc(200 * 1024, 7).fill('xyz', 1000);
    t.deepEqual(echo(fe, big, REQUEST, 5), big, 'a request in 5 readable descriptors');
    let ok = 0;
    fe.pipeline(
      1000,
      16,
      (i) => ({ parts: [request(ECHO, 1n, [Buffer.from(`req ${i}`)])], replyLens: [OUT_HEADER + 16] }),
      (i, reply) => {
        if (reply?.body.toString() === `req ${i}`) ok++;
      },
    );
    t.is(ok, 1000);
    t.is(fe.stray.length, 0);
  });
}

test.serial('GET_VRING_BASE stops a ring at the next avail index; the ring restarts from there', async (t) => {
  const c = await startChild(t);
  const fe = open(t, c);
  for (let i = 0; i < 5; i++) echo(fe, Buffer.from(`x${i}`));
  t.is(fe.getVringBase(REQUEST), 5);
  fe.startQueue(fe.queues[REQUEST], 5);
  t.deepEqual(echo(fe, Buffer.from('after restart')), Buffer.from('after restart'));
});

test.serial('bad messages fail alone; the connection keeps working', async (t) => {
  const c = await startChild(t);
  const fe = open(t, c);
  const vu = fe.vu;
  t.is(vu.set(999, Buffer.alloc(0), [], true), 1n, 'unknown request');
  t.is(vu.set(Req.SET_VRING_NUM, Buffer.alloc(4), [], true), 1n, 'short payload');
  t.is(vu.set(Req.SET_VRING_NUM, vringState(40, 128), [], true), 1n, 'no such queue');
  t.is(vu.set(Req.SET_VRING_NUM, vringState(1, 100), [], true), 1n, 'not a power of two');
  t.is(vu.set(Req.SET_VRING_NUM, vringState(1, 65536), [], true), 1n, 'too big');
  const efd = eventfd();
  t.is(vu.set(Req.SET_OWNER, Buffer.alloc(0), [efd], true), 1n, 'an extra descriptor');
  t.is(vu.set(Req.SET_VRING_KICK, u64(1), [], true), 1n, 'a missing descriptor');
  closeFd(efd);
  t.is(vu.set(Req.SET_FEATURES, u64(1n << 40n), [], true), 1n, 'a feature not offered');
  t.is(vu.getU64(Req.GET_FEATURES), OFFERED_FEATURES);
  t.deepEqual(echo(fe, Buffer.from('still serving')), Buffer.from('still serving'));
  t.regex(c.log(), /unknown|not supported/);
});

test.serial('a message cut short closes the connection; the device exits 0', async (t) => {
  const c = await startChild(t);
  const fe = open(t, c, { noQueues: true });
  fe.vu.send(Req.SET_FEATURES, Buffer.alloc(4), [], FLAG_VERSION | FLAG_NEED_REPLY, 8);
  t.is(await c.exited, 0);
  t.regex(c.log(), /message cut short/);
});

test.serial('a second frontend is refused while the first is served; disconnect exits 0', async (t) => {
  const c = await startChild(t);
  const fe = open(t, c);
  const other = connectUnix(c.sock);
  t.true(pollIn(other, 5000));
  t.is(recvMsg(other, Buffer.alloc(8), 0, 8, []), 0, 'closed at once');
  closeFd(other);
  t.deepEqual(echo(fe, Buffer.from('first')), Buffer.from('first'));
  fe.close();
  t.is(await c.exited, 0);
  t.regex(c.log(), /frontend disconnected/);
  t.regex(c.log(), /served \d+ exit 0/);
});

test('runVhostDevice returns 0 when stopFd is signalled, and refuses a bad tag', (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vhost-backend-stop-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const listenFd = listenUnix(path.join(dir, 's'));
  const stopFd = eventfd();
  t.teardown(() => {
    closeFd(listenFd);
    closeFd(stopFd);
  });
  eventfdWrite(stopFd);
  t.is(runVhostDevice({ listenFd, stopFd, makeSession: () => ({ destroyed: false, handle: () => 0 }) }), 0);
  t.throws(() => runVhostDevice({ listenFd, stopFd, tag: 'x'.repeat(37), makeSession: () => ({ destroyed: false, handle: () => 0 }) }), { message: /tag/ });
});

/** The read end of a FIFO whose writer is already gone: readable-with-HUP for ever, not an eventfd. */
function hungUpFifo(t: { teardown(fn: () => void): void }): number {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vhost-backend-fifo-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const p = path.join(dir, 'fifo');
  execFileSync('mkfifo', [p]);
  const r = fs.openSync(p, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
  fs.closeSync(fs.openSync(p, 'w'));
  t.teardown(() => fs.closeSync(r));
  return r;
}

test.serial('kick and call descriptors that are not eventfds are dropped with a log line, no spin', async (t) => {
  const c = await startChild(t);
  const fe = open(t, c);
  const q = fe.queues[REQUEST];
  const ticks = (): number => {
    const f = fs.readFileSync(`/proc/${c.proc.pid}/stat`, 'utf8').split(') ')[1].split(' ');
    return Number(f[11]) + Number(f[12]);
  };
  fe.vu.setOk(Req.SET_VRING_KICK, u64(REQUEST), [hungUpFifo(t)]);
  fe.vu.setOk(Req.SET_VRING_CALL, u64(REQUEST), [hungUpFifo(t)]);
  const before = ticks();
  await new Promise((r) => setTimeout(r, 1000));
  t.true(ticks() - before < 50, 'idle, not spinning on the hung-up descriptor');
  // The request still completes: the frontend polls the used ring when no interrupt comes.
  fe.enqueue([request(ECHO, 1n, [Buffer.from('no interrupt')])], [OUT_HEADER + 16]);
  q.publish();
  fe.vu.setOk(Req.SET_VRING_KICK, u64(REQUEST), [q.kickFd]);
  q.kick();
  t.is(fe.complete()[0].reply?.body.toString(), 'no interrupt');
  // The daemon exposes used->idx before it decides on the interrupt, so the completion can
  // be seen before the failed signal is logged: wait for that line before the call fd is
  // replaced (else the interrupt goes to the new, good descriptor and nothing fails).
  const deadline = Date.now() + 10000;
  while (!/cannot signal the call descriptor/.test(c.log()) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
  fe.vu.setOk(Req.SET_VRING_CALL, u64(REQUEST), [q.callFd]);
  t.deepEqual(echo(fe, Buffer.from('back to normal')), Buffer.from('back to normal'));
  const log = c.log();
  t.regex(log, /queue 1: kick descriptor hung up; no longer watched/);
  t.regex(log, /queue 1: cannot signal the call descriptor/);
});
