// The device loop in this very thread: the "frontend" writes its whole setup into the socket
// and fills a ring with 1000 requests before runVhostDevice starts, so everything is
// deterministic. The session asks the loop to stop while serving the first request: a
// guest that keeps its queue full must not keep the loop from seeing that (or a control
// message) until the queue is empty. Queue work is served in budgeted turns.
import test from 'ava';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { runVhostDevice, PROCESS_BUDGET } from '../src/vhost/device.js';
import { listenUnix, connectUnix, sendAll, closeFd } from '../src/sys/socket-calls.js';
import { eventfd, eventfdWrite } from '../src/sys/event-calls.js';
import { memfdCreate, ftruncate, mmapFd, munmap, viewBuffer, PROT_READ, PROT_WRITE, MAP_SHARED } from '../src/sys/memory-calls.js';
import { Req, Feature, HEADER, FLAG_VERSION, encodeHeader, encodeU64, encodeVringState, encodeVringAddr, encodeMemTable } from '../src/vhost/vhost-user-protocol.js';
import { VRING_DESC_F_NEXT, VRING_DESC_F_WRITE } from '../src/vhost/descriptor-chain.js';
import type { FuseSession } from '../src/fs/session.js';

const MiB = 2 ** 20;
const UVA = 0x7f2000000000;
const QSIZE = 1024;
const DESC = 0;
const AVAIL = 0x8000;
const USED = 0x10000;
const DATA = 0x20000;
const COUNT = 1000;

function message(fd: number, request: number, payload: Buffer = Buffer.alloc(0), fds: number[] = []): void {
  const m = Buffer.alloc(HEADER.bytes + payload.length);
  encodeHeader(request, FLAG_VERSION, payload.length, m);
  payload.copy(m, HEADER.bytes);
  sendAll(fd, m, fds);
}

test('a full queue is served in budgeted turns: a stop request gets through', (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vhost-backend-loop-'));
  const listenFd = listenUnix(path.join(dir, 's'));
  const stopFd = eventfd();
  const conn = connectUnix(path.join(dir, 's'));
  const mfd = memfdCreate('vhost-backend-loop');
  ftruncate(mfd, MiB);
  const addr = mmapFd(MiB, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
  const mem = viewBuffer(addr, MiB);
  const kick = eventfd();
  const call = eventfd();
  t.teardown(() => {
    [listenFd, stopFd, conn, mfd, kick, call].forEach(closeFd);
    munmap(addr, MiB);
    fs.rmSync(dir, { recursive: true, force: true });
  });

  // One chain (40 readable bytes, 16 writable), offered 1000 times.
  const desc = (i: number, a: number, len: number, flags: number, next: number): void => {
    mem.writeBigUInt64LE(BigInt(a), DESC + 16 * i);
    mem.writeUInt32LE(len, DESC + 16 * i + 8);
    mem.writeUInt16LE(flags, DESC + 16 * i + 12);
    mem.writeUInt16LE(next, DESC + 16 * i + 14);
  };
  desc(0, DATA, 40, VRING_DESC_F_NEXT, 1);
  desc(1, DATA + 0x1000, 16, VRING_DESC_F_WRITE, 0);
  for (let i = 0; i < COUNT; i++) mem.writeUInt16LE(0, AVAIL + 4 + 2 * i);
  mem.writeUInt16LE(COUNT, AVAIL + 2);

  message(conn, Req.SET_FEATURES, encodeU64(Feature.VERSION_1));
  message(conn, Req.SET_MEM_TABLE, encodeMemTable([{ guestAddr: 0, size: MiB, userAddr: UVA, mmapOffset: 0 }]), [mfd]);
  message(conn, Req.SET_VRING_NUM, encodeVringState({ index: 1, num: QSIZE }));
  message(conn, Req.SET_VRING_BASE, encodeVringState({ index: 1, num: 0 }));
  message(conn, Req.SET_VRING_ADDR, encodeVringAddr({ index: 1, desc: UVA + DESC, avail: UVA + AVAIL, used: UVA + USED }));
  message(conn, Req.SET_VRING_CALL, encodeU64(1), [call]);
  message(conn, Req.SET_VRING_KICK, encodeU64(1), [kick]);
  eventfdWrite(kick);

  let served = 0;
  const session: FuseSession = {
    destroyed: false,
    handle(_readable, writable) {
      if (++served === 1) eventfdWrite(stopFd);
      writable[0].fill(0x11);
      return 16;
    },
  };
  t.is(runVhostDevice({ listenFd, stopFd, makeSession: () => session }), 0);
  t.true(served >= PROCESS_BUDGET, `served ${served}`);
  t.true(served < COUNT, `served ${served} of ${COUNT} before seeing the stop request`);
  t.is(mem.readUInt16LE(USED + 2), served, 'every served request is in the used ring');
  t.is(mem.readUInt32LE(USED + 4 + 8 * (served - 1) + 4), 16);
});
