// The control plane in process, message by message (no socket): what each request does to
// the backend's state, what it replies, and that every descriptor a message carries is
// either kept (and later closed) or closed at once, whatever the outcome: a frontend that
// keeps sending bad messages must not make the daemon run out of descriptors.
import test from 'ava';
import fs from 'node:fs';
import { VhostUserBackend, OFFERED_FEATURES, MAX_MEM_SLOTS, type KickWatcher } from '../src/vhost/vhost-user-backend.js';
import {
  Req, Feature, ProtocolFeature, FLAG_VERSION, FLAG_NEED_REPLY, VRING_FD_NOFD, CONFIG, encodeU64, encodeVringState, encodeVringAddr,
  encodeMemTable, encodeSingleRegion, encodeConfigAccess, decodeVringState, type Message,
} from '../src/vhost/vhost-user-protocol.js';
import { memfdCreate, ftruncate } from '../src/sys/memory-calls.js';
import { eventfd, closeFd } from '../src/sys/event-calls.js';
import type { Logger } from '../src/log.js';

const MiB = 2 ** 20;
const UVA = 0x7f0000000000;

interface Rig {
  be: VhostUserBackend;
  lines: string[];
  watched: Map<number, number>;
  send(request: number, payload?: Buffer, fds?: number[], needReply?: boolean): (Buffer | bigint)[];
  memfd(size?: number): number;
}

function rig(t: { teardown(fn: () => void): void }, tag?: string): Rig {
  const lines: string[] = [];
  const push = (l: string) => (m: string) => void lines.push(`${l}: ${m}`);
  const log: Logger = { error: push('error'), warn: push('warn'), info: push('info'), debug: push('debug'), trace: push('trace') };
  const watched = new Map<number, number>();
  const kicks: KickWatcher = { watch: (q, fd) => void watched.set(fd, q), unwatch: (_q, fd) => void watched.delete(fd) };
  const be = new VhostUserBackend({ log, tag, numQueues: 3, configRequestQueues: 1, queueSizeMax: 1024 }, kicks);
  const keep: number[] = [];
  t.teardown(() => {
    be.close();
    keep.forEach(closeFd);
  });
  return {
    be,
    lines,
    watched,
    send(request, payload = Buffer.alloc(0), fds = [], needReply = true) {
      const msg: Message = { request, flags: FLAG_VERSION | (needReply ? FLAG_NEED_REPLY : 0), size: payload.length, payload, fds: [...fds] };
      const replies: (Buffer | bigint)[] = [];
      const out = be.handle(msg, (_r, p) => void replies.push(p));
      if (out.close) replies.push(Buffer.from(`close: ${out.reason}`));
      return replies;
    },
    memfd(size = 16 * MiB) {
      const fd = memfdCreate('vhost-backend-control');
      ftruncate(fd, size);
      keep.push(fd);
      return fd;
    },
  };
}

/** A dup the backend may consume, so the test keeps its own copy. */
function dup(fd: number): number {
  return fs.openSync(`/proc/self/fd/${fd}`, 'r+');
}

const openFds = (): number => fs.readdirSync('/proc/self/fd').length;

test('feature negotiation: what is offered, what may be acked', (t) => {
  const r = rig(t);
  t.deepEqual(r.send(Req.GET_FEATURES), [OFFERED_FEATURES]);
  t.deepEqual(r.send(Req.GET_PROTOCOL_FEATURES), [ProtocolFeature.MQ | ProtocolFeature.REPLY_ACK | ProtocolFeature.CONFIGURE_MEM_SLOTS]);
  t.deepEqual(r.send(Req.GET_QUEUE_NUM), [3n]);
  t.deepEqual(r.send(Req.GET_MAX_MEM_SLOTS), [BigInt(MAX_MEM_SLOTS)]);
  t.deepEqual(r.send(Req.SET_PROTOCOL_FEATURES, encodeU64(ProtocolFeature.CONFIG)), [1n], 'CONFIG is not offered without a tag');
  t.deepEqual(r.send(Req.SET_PROTOCOL_FEATURES, encodeU64(ProtocolFeature.REPLY_ACK)), [0n]);
  t.deepEqual(r.send(Req.SET_FEATURES, encodeU64(Feature.VERSION_1 | Feature.RING_EVENT_IDX | Feature.PROTOCOL_FEATURES)), [0n]);
  t.true(r.be.env.eventIdx);
  t.false(r.be.env.walk.indirect);
  t.true(r.be.env.protocolFeatures);
  t.false(r.be.queues[1].enabled, 'with protocol features rings start disabled');
  t.deepEqual(r.send(Req.SET_FEATURES, encodeU64(1n << 33n)), [1n]);
  t.true(r.be.env.eventIdx, 'a refused SET_FEATURES changes nothing');
  t.deepEqual(r.send(Req.SET_FEATURES, encodeU64(Feature.VERSION_1), [], false), [], 'no ack unless asked');
  t.true(r.be.queues[1].enabled, 'without protocol features rings start enabled');
});

test('memory table: SET_MEM_TABLE, ADD and REM_MEM_REG, refusals keep the old table', (t) => {
  const r = rig(t);
  const a = r.memfd();
  const b = r.memfd();
  t.deepEqual(r.send(Req.SET_MEM_TABLE, encodeMemTable([{ guestAddr: 0, size: 16 * MiB, userAddr: UVA, mmapOffset: 0 }]), [dup(a)]), [0n]);
  t.is(r.be.mem.regionCount, 1);
  const second = { guestAddr: 16 * MiB, size: 8 * MiB, userAddr: UVA + 16 * MiB, mmapOffset: 8 * MiB };
  t.deepEqual(r.send(Req.ADD_MEM_REG, encodeSingleRegion(second), [dup(b)]), [0n]);
  t.is(r.be.mem.regionCount, 2);
  t.deepEqual(r.send(Req.ADD_MEM_REG, encodeSingleRegion(second), [dup(b)]), [1n], 'overlap');
  t.deepEqual(r.send(Req.ADD_MEM_REG, encodeSingleRegion({ ...second, guestAddr: 64 * MiB, userAddr: UVA + 64 * MiB }), []), [1n], 'no fd');
  t.deepEqual(r.send(Req.REM_MEM_REG, encodeSingleRegion({ ...second, mmapOffset: 0 }), []), [0n], 'identified without the offset');
  t.deepEqual(r.send(Req.REM_MEM_REG, encodeSingleRegion(second), [dup(b)]), [1n], 'already gone (its fd closed anyway)');
  t.is(r.be.mem.regionCount, 1);
  const bad = encodeMemTable([{ guestAddr: 0, size: 32 * MiB, userAddr: UVA, mmapOffset: 0 }]);
  t.deepEqual(r.send(Req.SET_MEM_TABLE, bad, [dup(a)]), [1n], 'region larger than its file');
  t.is(r.be.mem.regionCount, 1, 'old table kept');
  const huge = encodeMemTable([{ guestAddr: 0, size: MiB, userAddr: UVA, mmapOffset: 0 }]);
  huge.writeBigUInt64LE(0xfffffffffff00000n, 8);
  t.deepEqual(r.send(Req.SET_MEM_TABLE, huge, [dup(a)]), [1n], 'address beyond 2^53');
  const nine = Buffer.alloc(8 + 9 * 32);
  nine.writeUInt32LE(9, 0);
  t.deepEqual(r.send(Req.SET_MEM_TABLE, nine, []), [1n], 'more than 8 regions');
});

test('rings: size, base, addresses, kick/call/err, enable, GET_VRING_BASE', (t) => {
  const r = rig(t);
  const a = r.memfd();
  r.send(Req.SET_MEM_TABLE, encodeMemTable([{ guestAddr: 0, size: 16 * MiB, userAddr: UVA, mmapOffset: 0 }]), [dup(a)]);
  const q = r.be.queues[1];
  t.deepEqual(r.send(Req.SET_VRING_NUM, encodeVringState({ index: 1, num: 256 })), [0n]);
  t.deepEqual(r.send(Req.SET_VRING_NUM, encodeVringState({ index: 1, num: 2048 })), [1n], 'above queueSizeMax');
  t.deepEqual(r.send(Req.SET_VRING_NUM, encodeVringState({ index: 3, num: 256 })), [1n], 'no queue 3');
  t.deepEqual(r.send(Req.SET_VRING_BASE, encodeVringState({ index: 1, num: 7 })), [0n]);
  t.deepEqual(r.send(Req.SET_VRING_BASE, encodeVringState({ index: 1, num: 0x10000 })), [1n]);
  const addr = { index: 1, desc: UVA + 0x10000, avail: UVA + 0x20000, used: UVA + 0x30000 };
  t.deepEqual(r.send(Req.SET_VRING_ADDR, encodeVringAddr({ ...addr, desc: addr.desc + 8 })), [1n], 'misaligned');
  t.deepEqual(r.send(Req.SET_VRING_ADDR, encodeVringAddr({ ...addr, used: UVA + 16 * MiB - 64 })), [1n], 'used ring runs off memory');
  t.deepEqual(r.send(Req.SET_VRING_ADDR, encodeVringAddr({ ...addr, desc: 0x10000 })), [1n], 'a guest physical address');
  t.deepEqual(r.send(Req.SET_VRING_ADDR, encodeVringAddr(addr)), [0n]);
  const kick = eventfd();
  const call = eventfd();
  t.deepEqual(r.send(Req.SET_VRING_KICK, encodeU64(1), [kick]), [0n]);
  t.deepEqual([...r.watched.values()], [1], 'the kick fd is watched');
  t.true(q.started);
  t.deepEqual(r.send(Req.SET_VRING_CALL, encodeU64(1), [call]), [0n]);
  t.deepEqual(r.send(Req.SET_VRING_ERR, encodeU64(1 | VRING_FD_NOFD)), [0n]);
  t.deepEqual(r.send(Req.SET_VRING_CALL, encodeU64(1 | 0x200), [eventfd()]), [1n], 'unknown bits');
  t.deepEqual(r.send(Req.SET_VRING_ENABLE, encodeVringState({ index: 1, num: 1 })), [0n]);
  t.deepEqual(r.send(Req.SET_VRING_ENABLE, encodeVringState({ index: 1, num: 2 })), [1n]);
  t.is(q.whyNotReady(), 'ready');
  const [reply] = r.send(Req.GET_VRING_BASE, encodeVringState({ index: 1, num: 0 }));
  t.deepEqual(decodeVringState(reply as Buffer), { index: 1, num: 7 });
  t.false(q.started);
  t.is(r.watched.size, 0, 'kick fd unwatched');
  t.is(q.kickFd, -1);
  t.is(q.callFd, -1);
  t.regex(r.send(Req.GET_VRING_BASE, encodeVringState({ index: 9, num: 0 }))[0].toString(), /close: .*no queue 9/, 'a reply we cannot give closes');
});

test('GET_CONFIG with a tag: the virtio-fs config space, ranges checked; SET_CONFIG refused', (t) => {
  const r = rig(t, 'tagged');
  t.is((r.send(Req.GET_PROTOCOL_FEATURES)[0] as bigint) & ProtocolFeature.CONFIG, ProtocolFeature.CONFIG);
  const [full] = r.send(Req.GET_CONFIG, encodeConfigAccess({ offset: 0, size: 40, flags: 0 }, Buffer.alloc(40))) as Buffer[];
  t.is(full.subarray(CONFIG.payload, CONFIG.payload + 6).toString(), 'tagged');
  t.is(full.readUInt32LE(CONFIG.payload + 36), 1);
  t.is((r.send(Req.GET_CONFIG, encodeConfigAccess({ offset: 40, size: 1, flags: 0 }, Buffer.alloc(1)))[0] as Buffer).length, 0);
  t.is((r.send(Req.GET_CONFIG, encodeConfigAccess({ offset: 0xffffffff, size: 2, flags: 0 }, Buffer.alloc(2)))[0] as Buffer).length, 0);
  t.is((r.send(Req.GET_CONFIG, encodeConfigAccess({ offset: 0, size: 40, flags: 0 }, Buffer.alloc(8)))[0] as Buffer).length, 0, 'size field lies');
  t.deepEqual(r.send(Req.SET_CONFIG, encodeConfigAccess({ offset: 0, size: 4, flags: 0 }, Buffer.alloc(4))), [1n]);
});

test('descriptors never leak, whatever a stream of bad messages carries', (t) => {
  const r = rig(t);
  const a = r.memfd();
  const before = openFds();
  for (let i = 0; i < 50; i++) {
    r.send(Req.SET_OWNER, Buffer.alloc(0), [eventfd(), eventfd()]);
    r.send(9999, Buffer.alloc(16), [eventfd()]);
    r.send(Req.SET_LOG_BASE, Buffer.alloc(16), [eventfd()]);
    r.send(Req.SET_VRING_KICK, encodeU64(1), [eventfd(), eventfd()]);
    r.send(Req.SET_VRING_KICK, encodeU64(7), [eventfd()]);
    r.send(Req.SET_VRING_CALL, encodeU64(1 | VRING_FD_NOFD), [eventfd()]);
    r.send(Req.SET_MEM_TABLE, encodeMemTable([{ guestAddr: 0, size: 64 * MiB, userAddr: UVA, mmapOffset: 0 }]), [dup(a)]);
    r.send(Req.SET_MEM_TABLE, encodeMemTable([{ guestAddr: 0, size: MiB, userAddr: UVA, mmapOffset: 0 }]), [dup(a), dup(a)]);
    r.send(Req.ADD_MEM_REG, encodeSingleRegion({ guestAddr: 0, size: 0, userAddr: UVA, mmapOffset: 0 }), [dup(a)]);
    // Accepted ones replace what they set before: the previous kick/call fds are closed.
    r.send(Req.SET_VRING_KICK, encodeU64(2), [eventfd()]);
    r.send(Req.SET_VRING_CALL, encodeU64(2), [eventfd()]);
    r.send(Req.SET_MEM_TABLE, encodeMemTable([{ guestAddr: 0, size: MiB, userAddr: UVA, mmapOffset: 0 }]), [dup(a)]);
  }
  // Two fds are held by queue 2 (kick, call); mappings hold no descriptor.
  t.is(openFds(), before + 2);
  r.be.close();
  t.is(openFds(), before);
  t.true(r.lines.some((l) => /not supported/.test(l)));
});
