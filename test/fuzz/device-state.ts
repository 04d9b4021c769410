// The frontend side of vhost-user DEVICE_STATE for tests against the sandboxed daemon: the
// protocol features negotiated on top of the frontend's own, the rings stopped and started
// again as QEMU does around a transfer, and SET_DEVICE_STATE_FD in both directions through a
// pipe (the daemon moves the bytes after its reply, so this side writes or reads only then,
// and a state of any size fits) followed by CHECK_DEVICE_STATE.
import fs from 'node:fs';
import { pipeCloexec } from '../../src/sys/event-calls.js';
import { closeFd } from '../frontend/sys-calls.js';
import { FLAG_VERSION, FLAG_NEED_REPLY, u64 } from '../frontend/vhost-user.js';
import type { VirtioFsFrontend } from '../frontend/virtio-fs.js';

export const SET_DEVICE_STATE_FD = 42;
export const CHECK_DEVICE_STATE = 43;
export const LOG_SHMFD = 1n << 1n;
export const DEVICE_STATE = 1n << 19n;
const SAVE = 0;
const LOAD = 1;

/** Add LOG_SHMFD and DEVICE_STATE to what the frontend negotiated. */
export function enableDeviceState(fe: VirtioFsFrontend): void {
  const pf = fe.vu.protocolFeatures | LOG_SHMFD | DEVICE_STATE;
  const st = fe.vu.set(16 /* SET_PROTOCOL_FEATURES */, u64(pf));
  if (st !== 0n) throw new Error(`SET_PROTOCOL_FEATURES with DEVICE_STATE refused (${st})`);
  fe.vu.protocolFeatures = pf;
}

/** Stop every ring (GET_VRING_BASE); their bases, for startRings(). */
export function stopRings(fe: VirtioFsFrontend): number[] {
  return fe.queues.map((q) => fe.getVringBase(q.index));
}

export function startRings(fe: VirtioFsFrontend, bases: readonly number[]): void {
  for (const q of fe.queues) fe.startQueue(q, bases[q.index]);
}

function transfer(fe: VirtioFsFrontend, direction: number, fd: number): bigint {
  const p = Buffer.alloc(8);
  p.writeUInt32LE(direction, 0); // phase 0: stopped
  fe.vu.send(SET_DEVICE_STATE_FD, p, [fd], FLAG_VERSION | FLAG_NEED_REPLY);
  closeFd(fd);
  return fe.vu.recv('SET_DEVICE_STATE_FD reply').payload.readBigUInt64LE(0);
}

function check(fe: VirtioFsFrontend): bigint {
  fe.vu.send(CHECK_DEVICE_STATE, Buffer.alloc(0), [], FLAG_VERSION);
  return fe.vu.recv('CHECK_DEVICE_STATE reply').payload.readBigUInt64LE(0);
}

/** Save the daemon's state: the reply's u64, the bytes, CHECK_DEVICE_STATE's u64 (0: done). */
export function saveDeviceState(fe: VirtioFsFrontend): { reply: bigint; data: Buffer; check: bigint; ms: number } {
  const start = Date.now();
  const [rd, wr] = pipeCloexec();
  const reply = transfer(fe, SAVE, wr);
  const data = (reply & 0xffn) === 0n ? fs.readFileSync(rd) : Buffer.alloc(0);
  closeFd(rd);
  return { reply, data, check: check(fe), ms: Date.now() - start };
}

/** Load `data` into the daemon: the reply's u64 and CHECK_DEVICE_STATE's u64 (0: loaded). */
export function loadDeviceState(fe: VirtioFsFrontend, data: Buffer): { reply: bigint; check: bigint; ms: number } {
  const start = Date.now();
  const [rd, wr] = pipeCloexec();
  const reply = transfer(fe, LOAD, rd);
  if ((reply & 0xffn) === 0n) {
    for (let off = 0; off < data.length;) off += fs.writeSync(wr, data, off, data.length - off);
  }
  closeFd(wr);
  return { reply, check: check(fe), ms: Date.now() - start };
}
