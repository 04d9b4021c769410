// The vhost-user messages of live migration, in process: DEVICE_STATE and LOG_SHMFD are
// offered only with a state handler; SET_DEVICE_STATE_FD moves the state through the
// frontend's pipe (save: what the handler gives arrives at the read end; load: what was
// written reaches the handler) and CHECK_DEVICE_STATE reports the outcome; bad requests
// are refused with the error bit and no fd back; SET_LOG_BASE maps the dirty log and
// device writes set its bits.
import test from 'ava';
import fs from 'node:fs';
import { VhostUserBackend, type DeviceStateHandler, type KickWatcher } from '../src/vhost/vhost-user-backend.js';
import { Req, Feature, ProtocolFeature, FLAG_VERSION, FLAG_NEED_REPLY, encodeU64, type Message } from '../src/vhost/vhost-user-protocol.js';
import { memfdCreate, ftruncate, MFD_ALLOW_SEALING, MFD_CLOEXEC } from '../src/sys/memory-calls.js';
import { closeFd, pipeCloexec } from '../src/sys/event-calls.js';
import type { Logger } from '../src/log.js';

function rig(t: { teardown(fn: () => void): void }, handler?: DeviceStateHandler) {
  const lines: string[] = [];
  const push = (l: string) => (m: string) => void lines.push(`${l}: ${m}`);
  const log: Logger = { error: push('error'), warn: push('warn'), info: push('info'), debug: push('debug'), trace: push('trace') };
  const kicks: KickWatcher = { watch: () => undefined, unwatch: () => undefined };
  const be = new VhostUserBackend({ log, numQueues: 2, configRequestQueues: 1, queueSizeMax: 1024, deviceState: handler }, kicks);
  t.teardown(() => be.close());
  const send = (request: number, payload = Buffer.alloc(0), fds: number[] = []): (Buffer | bigint)[] => {
    const msg: Message = { request, flags: FLAG_VERSION | FLAG_NEED_REPLY, size: payload.length, payload, fds: [...fds] };
    const replies: (Buffer | bigint)[] = [];
    be.handle(msg, (_r, p) => void replies.push(p));
    return replies;
  };
  return { be, lines, send };
}

function xfer(direction: number, phase = 0): Buffer {
  const b = Buffer.alloc(8);
  b.writeUInt32LE(direction, 0);
  b.writeUInt32LE(phase, 4);
  return b;
}

const u64 = (r: Buffer | bigint | undefined): bigint => (typeof r === 'bigint' ? r : r === undefined ? -1n : r.readBigUInt64LE(0));

test('without a handler nothing of migration is offered', (t) => {
  const r = rig(t);
  t.is(u64(r.send(Req.GET_FEATURES)[0]) & Feature.LOG_ALL, 0n);
  t.is(u64(r.send(Req.GET_PROTOCOL_FEATURES)[0]) & (ProtocolFeature.DEVICE_STATE | ProtocolFeature.LOG_SHMFD), 0n);
  const [rd, wr] = pipeCloexec();
  t.is(u64(r.send(Req.SET_DEVICE_STATE_FD, xfer(0), [wr])[0]), 0x101n, 'error, no fd back');
  closeFd(rd);
});

test('save: the handler\'s bytes come out of the pipe; CHECK says it worked', (t) => {
  const state = Buffer.from('the state of the device '.repeat(1000));
  const r = rig(t, { save: () => state, load: () => 'unused' });
  t.is(u64(r.send(Req.GET_FEATURES)[0]) & Feature.LOG_ALL, Feature.LOG_ALL);
  t.is(u64(r.send(Req.SET_PROTOCOL_FEATURES, encodeU64(ProtocolFeature.DEVICE_STATE | ProtocolFeature.LOG_SHMFD))[0]), 0n);
  t.is(u64(r.send(Req.CHECK_DEVICE_STATE)[0]), 1n, 'nothing transferred yet');
  const [rd, wr] = pipeCloexec();
  t.is(u64(r.send(Req.SET_DEVICE_STATE_FD, xfer(0), [wr])[0]), 0x100n, 'success, no fd of our own');
  const got = fs.readFileSync(rd);
  closeFd(rd);
  t.deepEqual(got, state);
  t.is(u64(r.send(Req.CHECK_DEVICE_STATE)[0]), 0n);
});

test('load: the pipe\'s bytes reach the handler; a refusal shows in CHECK', (t) => {
  let seen: Buffer | undefined;
  let answer: string | undefined;
  const r = rig(t, { save: () => 'unused', load: (b) => { seen = b; return answer; } });
  r.send(Req.SET_PROTOCOL_FEATURES, encodeU64(ProtocolFeature.DEVICE_STATE));
  for (const why of [undefined, 'inode 5: not found']) {
    answer = why;
    const [rd, wr] = pipeCloexec();
    fs.writeSync(wr, 'incoming state');
    closeFd(wr);
    t.is(u64(r.send(Req.SET_DEVICE_STATE_FD, xfer(1), [rd])[0]), 0x100n);
    t.is(seen?.toString(), 'incoming state');
    t.is(u64(r.send(Req.CHECK_DEVICE_STATE)[0]), why === undefined ? 0n : 1n);
  }
  t.true(r.lines.some((l) => /error: migration: the state could not be loaded: inode 5: not found/.test(l)));
});

test('bad transfer requests are refused with no fd back, and their fd is closed', (t) => {
  const r = rig(t, { save: () => Buffer.from('x'), load: () => undefined });
  const [rd0, wr0] = pipeCloexec();
  t.is(u64(r.send(Req.SET_DEVICE_STATE_FD, xfer(0), [wr0])[0]), 0x101n, 'DEVICE_STATE not acked');
  r.send(Req.SET_PROTOCOL_FEATURES, encodeU64(ProtocolFeature.DEVICE_STATE));
  const cases: [string, Buffer, number][] = [['phase 1', xfer(0, 1), 1], ['direction 2', xfer(2), 1], ['short payload', Buffer.alloc(4), 1], ['no fd', xfer(0), 0]];
  for (const [what, payload, nfds] of cases) {
    const [rd, wr] = pipeCloexec();
    t.is(u64(r.send(Req.SET_DEVICE_STATE_FD, payload, nfds === 1 ? [wr] : [])[0]), 0x101n, what);
    if (nfds === 0) closeFd(wr);
    // The backend closed its end: the reader sees end of file at once, not a hang.
    t.is(fs.readFileSync(rd).length, 0, what);
    closeFd(rd);
  }
  t.is(fs.readFileSync(rd0).length, 0);
  closeFd(rd0);
  // A saving handler that has nothing to give.
  const r2 = rig(t, { save: () => 'the guest is mid-request', load: () => undefined });
  r2.send(Req.SET_PROTOCOL_FEATURES, encodeU64(ProtocolFeature.DEVICE_STATE));
  const [rd, wr] = pipeCloexec();
  t.is(u64(r2.send(Req.SET_DEVICE_STATE_FD, xfer(0), [wr])[0]), 0x101n);
  closeFd(rd);
});

test('a reader that never reads does not hang the device for ever', (t) => {
  const big = Buffer.alloc(1 << 20, 7); // more than a pipe holds
  const r = rig(t, { save: () => big, load: () => undefined });
  r.send(Req.SET_PROTOCOL_FEATURES, encodeU64(ProtocolFeature.DEVICE_STATE));
  const [rd, wr] = pipeCloexec();
  closeFd(rd); // nobody will read: the write fails at once (EPIPE), not after STALL_MS
  const start = Date.now();
  r.send(Req.SET_DEVICE_STATE_FD, xfer(0), [wr]);
  t.true(Date.now() - start < 5000);
  t.is(u64(r.send(Req.CHECK_DEVICE_STATE)[0]), 1n);
});

test('SET_LOG_BASE maps the dirty log; with LOG_ALL, device writes set one bit per 4 KiB page', (t) => {
  const r = rig(t, { save: () => Buffer.alloc(0), load: () => undefined });
  r.send(Req.SET_PROTOCOL_FEATURES, encodeU64(ProtocolFeature.LOG_SHMFD | ProtocolFeature.DEVICE_STATE));
  // As QEMU makes it: a memfd that can be sealed (the backend seals it against shrinking).
  const fd = memfdCreate('dirty-log', MFD_CLOEXEC | MFD_ALLOW_SEALING);
  ftruncate(fd, 4096);
  const log = Buffer.alloc(16);
  log.writeBigUInt64LE(64n, 0);
  t.is(u64(r.send(Req.SET_LOG_BASE, log, [fs.openSync(`/proc/self/fd/${fd}`, 'r+')])[0]), 0n);
  r.be.dirtyLog.markGuest(0x5000, 0x2000);
  const bits = Buffer.alloc(64);
  fs.readSync(fd, bits, 0, 64, 0);
  t.is(bits.readUInt8(0), 0, 'not logging before LOG_ALL');
  t.is(u64(r.send(Req.SET_FEATURES, encodeU64(Feature.VERSION_1 | Feature.LOG_ALL))[0]), 0n);
  r.be.dirtyLog.markGuest(0x5000, 0x2000); // pages 5 and 6
  r.be.dirtyLog.markGuest(64 * 8 * 4096 + 10, 100); // past the log: ignored
  fs.readSync(fd, bits, 0, 64, 0);
  t.is(bits.readUInt8(0), 0b0110_0000);
  t.true(bits.subarray(1).every((b) => b === 0));
  const loose = memfdCreate('dirty-log-unsealable');
  ftruncate(loose, 4096);
  t.is(u64(r.send(Req.SET_LOG_BASE, log, [fs.openSync(`/proc/self/fd/${loose}`, 'r+')])[0]), 1n, 'a log that cannot be sealed is refused');
  t.true(r.lines.some((l) => /cannot be sealed against shrinking/.test(l)));
  closeFd(loose);
  closeFd(fd);
});
