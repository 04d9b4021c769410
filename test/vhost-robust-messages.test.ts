// Bad vhost-user control messages sent to a running device. The daemon must either refuse
// the message (REPLY_ACK with a non-zero status) and keep serving FUSE requests on the same
// connection, or close that connection and exit 0 — never crash, never hang, never accept
// a memory table or ring that points outside what was shared.
import test, { type ExecutionContext } from 'ava';
import { withDaemon, openFs, crashSigns, type Env } from './frontend/harness.js';
import { waitExit } from './frontend/daemons.js';
import { Req, BackendClosed, encodeMemTable, vringState, vringAddr, u64, FLAG_VERSION, FLAG_NEED_REPLY, VRING_NOFD } from './frontend/vhost-user.js';
import { REQUEST, type VirtioFsFrontend } from './frontend/virtio-fs.js';
import { memfdCreate, closeFd, setRecvTimeout } from './frontend/sys-calls.js';
import * as F from './frontend/fuse-requests.js';

const MiB = 2 ** 20;

type Outcome = { kind: 'closed' } | { kind: 'status'; status: bigint };

function isClosed(e: unknown): boolean {
  const code = (e as { code?: string }).code;
  return e instanceof BackendClosed || code === 'EPIPE' || code === 'ECONNRESET';
}

/** Run `inject` (which returns the ack status) and classify what the daemon did. */
function attempt(inject: () => bigint): Outcome {
  try {
    return { kind: 'status', status: inject() };
  } catch (e) {
    if (isClosed(e)) return { kind: 'closed' };
    throw e;
  }
}

/**
 * The common verdict: refused and still serving, or connection closed and a clean exit.
 * `acceptable` lets a case also pass when the daemon accepted the message (status 0).
 */
async function verdict(t: ExecutionContext, env: Env, fe: VirtioFsFrontend, o: Outcome, acceptable = false): Promise<void> {
  if (o.kind === 'status') {
    if (!acceptable) t.not(o.status, 0n, 'the bad message was acknowledged as success');
    // Refusing and then closing the connection is fine too; refusing and going silent is not.
    if (fe.vu.peerClosed()) o = { kind: 'closed' };
  }
  if (o.kind === 'closed') {
    t.is(await waitExit(env.d, 20000), 0, 'connection closed: the daemon exits 0');
  } else {
    t.is(env.d.exitCode, undefined, 'daemon still running');
    const r = fe.call([F.request(F.Op.GETATTR, F.ROOT_ID, [F.getattrIn()])], [F.OUT_HEADER, F.ATTR_OUT]);
    t.is(r?.header.error, 0, 'a good request on the same connection works');
    fe.close();
    t.is(await waitExit(env.d, 20000), 0, 'then a clean exit on disconnect');
  }
  t.deepEqual(crashSigns(env.d.log()), [], env.d.log().slice(-2000));
}

async function messageCase(title: string, inject: (fe: VirtioFsFrontend) => bigint, acceptable = false): Promise<void> {
  test.serial(title, async (t) => {
    const env = await withDaemon(t);
    const { fe } = openFs(env, t, { regions: [{ gpa: 0, size: 64 * MiB }] });
    t.true(fe.vu.replyAck, 'REPLY_ACK negotiated');
    await verdict(t, env, fe, attempt(() => inject(fe)), acceptable);
  });
}

void messageCase('unknown request code', (fe) => fe.vu.set(9999, u64(0), [], true));

void messageCase('GET_CONFIG-sized unknown request with a large payload', (fe) => fe.vu.set(200, Buffer.alloc(4096, 0xab), [], true));

void messageCase('size field of 4 GiB - 1 with nothing behind it', (fe) => {
  fe.vu.send(Req.GET_FEATURES, Buffer.alloc(0), [], FLAG_VERSION, 0xffffffff);
  setRecvTimeout(fe.vu.fd, 3000);
  try {
    fe.vu.recv('reply to a 4 GiB message');
  } catch (e) {
    if ((e as { code?: string }).code === 'EAGAIN') throw new Error('the daemon neither answered nor closed within 3 s', { cause: e });
    throw e;
  }
  return 1n; // Any reply at all means the stream is out of step; closing is the right answer.
});

void messageCase('SET_FEATURES with a 64-byte payload (8 expected)', (fe) => {
  fe.vu.send(Req.SET_FEATURES, Buffer.concat([u64(fe.features), Buffer.alloc(56)]), [], FLAG_VERSION | FLAG_NEED_REPLY);
  const r = fe.vu.recv();
  return r.payload.length >= 8 ? r.payload.readBigUInt64LE(0) : -1n;
});

void messageCase('SET_VRING_NUM with a 2-byte payload', (fe) => fe.vu.set(Req.SET_VRING_NUM, Buffer.alloc(2), [], true));

void messageCase('header flags with an unknown protocol version', (fe) => {
  fe.vu.send(Req.GET_FEATURES, Buffer.alloc(0), [], 0x3);
  fe.vu.recv();
  return 1n;
});

void messageCase('SET_MEM_TABLE with no fd', (fe) => {
  const m = fe.mem.regions[0];
  return fe.vu.set(Req.SET_MEM_TABLE, encodeMemTable([{ gpa: 0, size: m.size, uaddr: m.uaddr, mmapOffset: 0 }]), [], true);
});

void messageCase('SET_MEM_TABLE with two fds for one region', (fe) => {
  const m = fe.mem.regions[0];
  const extra = memfdCreate('extra', MiB);
  try {
    return fe.vu.set(Req.SET_MEM_TABLE, encodeMemTable([{ gpa: 0, size: m.size, uaddr: m.uaddr, mmapOffset: 0 }]), [m.fd, extra], true);
  } finally {
    closeFd(extra);
  }
});

void messageCase('SET_MEM_TABLE with a zero-size region', (fe) => {
  const m = fe.mem.regions[0];
  const z = memfdCreate('zero', MiB);
  try {
    const table = encodeMemTable([
      { gpa: 0, size: m.size, uaddr: m.uaddr, mmapOffset: 0 },
      { gpa: 1 << 30, size: 0, uaddr: m.uaddr + (1 << 30), mmapOffset: 0 },
    ]);
    return fe.vu.set(Req.SET_MEM_TABLE, table, [m.fd, z], true);
  } finally {
    closeFd(z);
  }
});

void messageCase('SET_MEM_TABLE with overlapping regions', (fe) => {
  const m = fe.mem.regions[0];
  const o = memfdCreate('overlap', 64 * MiB);
  try {
    const table = encodeMemTable([
      { gpa: 0, size: m.size, uaddr: m.uaddr, mmapOffset: 0 },
      { gpa: 32 * MiB, size: 64 * MiB, uaddr: m.uaddr + 256 * MiB, mmapOffset: 0 },
    ]);
    return fe.vu.set(Req.SET_MEM_TABLE, table, [m.fd, o], true);
  } finally {
    closeFd(o);
  }
});

void messageCase('SET_MEM_TABLE whose region is larger than its memfd', (fe) => {
  const small = memfdCreate('small', MiB);
  try {
    const m = fe.mem.regions[0];
    const table = encodeMemTable([{ gpa: 0, size: m.size, uaddr: m.uaddr, mmapOffset: 0 }, { gpa: 1 << 30, size: 64 * MiB, uaddr: m.uaddr + (1 << 30), mmapOffset: 0 }]);
    return fe.vu.set(Req.SET_MEM_TABLE, table, [m.fd, small], true);
  } finally {
    closeFd(small);
  }
}, true);

void messageCase('SET_MEM_TABLE with gpa + size wrapping around 2^64', (fe) => {
  const m = fe.mem.regions[0];
  const w = memfdCreate('wrap', MiB);
  try {
    const b = encodeMemTable([{ gpa: 0, size: m.size, uaddr: m.uaddr, mmapOffset: 0 }, { gpa: 0, size: MiB, uaddr: 0, mmapOffset: 0 }]);
    b.writeBigUInt64LE(0xffff_ffff_fff0_0000n, 8 + 32); // second region's gpa
    b.writeBigUInt64LE(0xffff_ffff_fff8_0000n, 8 + 32 + 16); // and its uaddr
    return fe.vu.set(Req.SET_MEM_TABLE, b, [m.fd, w], true);
  } finally {
    closeFd(w);
  }
});

function stopAndReaddress(fe: VirtioFsFrontend, desc: number, used: number, avail: number): bigint {
  const q = fe.queues[REQUEST];
  fe.getVringBase(REQUEST);
  fe.vu.setOk(Req.SET_VRING_NUM, vringState(REQUEST, q.size));
  fe.vu.setOk(Req.SET_VRING_BASE, vringState(REQUEST, q.availIdx));
  const st = fe.vu.set(Req.SET_VRING_ADDR, vringAddr(REQUEST, desc, used, avail), [], true);
  if (st !== 0n) {
    // Refused: put the ring back where it was so the verdict's good request can run.
    fe.startQueue(q, q.availIdx);
    return st;
  }
  // Accepted: start it and kick, the daemon must survive touching it.
  fe.vu.setOk(Req.SET_VRING_KICK, u64(REQUEST), [q.kickFd]);
  fe.vu.setOk(Req.SET_VRING_ENABLE, vringState(REQUEST, 1));
  q.kick();
  return 0n;
}

void messageCase('SET_VRING_ADDR with a descriptor table outside guest memory', (fe) => {
  const q = fe.queues[REQUEST];
  const m = fe.mem;
  return stopAndReaddress(fe, m.regions[0].uaddr + 1024 * MiB, m.uaddrOf(q.layout.used), m.uaddrOf(q.layout.avail));
});

void messageCase('SET_VRING_ADDR with a used ring straddling the end of guest memory', (fe) => {
  const q = fe.queues[REQUEST];
  const m = fe.mem;
  return stopAndReaddress(fe, m.uaddrOf(q.layout.desc), m.regions[0].uaddr + 64 * MiB - 16, m.uaddrOf(q.layout.avail));
});

void messageCase('SET_VRING_ADDR with guest physical instead of frontend addresses', (fe) => {
  const q = fe.queues[REQUEST];
  return stopAndReaddress(fe, q.layout.desc, q.layout.used, q.layout.avail);
});

// 0 and more than 32768 can never be a queue size; 3 (not a power of two) may be refused
// at once or when the ring starts, as virtiofsd does.
for (const [num, acceptable] of [[0, false], [3, true], [65536, false]] as const) {
  void messageCase(
    `SET_VRING_NUM ${num}`,
    (fe) => {
      fe.getVringBase(REQUEST);
      const st = fe.vu.set(Req.SET_VRING_NUM, vringState(REQUEST, num), [], true);
      fe.startQueue(fe.queues[REQUEST], fe.queues[REQUEST].availIdx);
      return st;
    },
    acceptable,
  );
}

void messageCase('SET_VRING_KICK for queue 99', (fe) => fe.vu.set(Req.SET_VRING_KICK, u64(99), [fe.queues[REQUEST].kickFd], true));

void messageCase('SET_VRING_CALL without an fd and without the NOFD flag', (fe) => fe.vu.set(Req.SET_VRING_CALL, u64(REQUEST), [], true));

void messageCase('SET_VRING_NUM for queue 99', (fe) => fe.vu.set(Req.SET_VRING_NUM, vringState(99, 128), [], true));

void messageCase('SET_VRING_KICK with NOFD for queue 99', (fe) => fe.vu.set(Req.SET_VRING_KICK, u64(VRING_NOFD | 99), [], true));
