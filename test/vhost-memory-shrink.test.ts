// A frontend that shrinks its guest memory file after the daemon mapped it. The real daemon
// runs under vfs-launch (--sandbox namespace --seccomp kill). A memfd that allows sealing is
// sealed by the daemon (F_SEAL_SHRINK), so the frontend's ftruncate fails with EPERM and
// requests go on; one that does not (born with F_SEAL_SEAL) is shrunk under the daemon with
// request buffers or the rings in the lost part: the daemon's access raises SIGBUS, its
// guard absorbs it, the request fails with EIO (or the queue stops), the daemon logs it,
// stays alive, serves again once the frontend restarts its queues, and exits 0 when the
// frontend leaves (without the guard it died of SIGBUS, exit 135).
import test, { type ExecutionContext } from 'ava';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { startDaemon, waitExit, type Daemon } from './frontend/daemons.js';
import { launcherCommand } from './entry-points.js';
import { VirtioFsFrontend, REQUEST, type FrontendOptions } from './frontend/virtio-fs.js';
import { FuseClient } from './frontend/fuse-client.js';
import { crashSigns } from './frontend/harness.js';
import { Req, u64, vringState } from './frontend/vhost-user.js';
import { truncateFd, getSeals, addSeals, F_SEAL_SHRINK, F_SEAL_GROW, F_SEAL_SEAL } from './frontend/sys-calls.js';
import { eventfd, eventfdRead, closeFd } from '../src/sys/event-calls.js';
import * as F from './frontend/fuse-requests.js';
import { DAEMON, findDaemon, procStatus } from './sandbox-helpers.js';

const MiB = 2 ** 20;
const GiB = 2 ** 30;
const EPERM = os.constants.errno.EPERM;
const EIO = os.constants.errno.EIO;

async function launch(t: ExecutionContext): Promise<{ d: Daemon; shared: string }> {
  const parent = fs.mkdtempSync(path.join(os.tmpdir(), 'vfs-shrink-'));
  const shared = path.join(parent, 'shared');
  fs.mkdirSync(shared);
  fs.writeFileSync(path.join(shared, 'hello'), 'hello from the share\n');
  const d = await startDaemon('vfs', {
    sharedDir: shared,
    vfsCommand: launcherCommand(),
    sandbox: 'namespace',
    extraArgs: ['--seccomp', 'kill'],
    timeoutMs: 120000,
  });
  t.teardown(async () => {
    await d.stop();
    fs.rmSync(parent, { recursive: true, force: true });
    fs.rmSync(path.dirname(d.socketPath), { recursive: true, force: true });
  });
  // The launcher made the socket; wait for the daemon itself to be under its filter.
  const deadline = Date.now() + 60000;
  let status: string;
  for (;;) {
    const pid = findDaemon(d.pid, DAEMON);
    status = pid === undefined ? 'no daemon process yet' : `Seccomp ${procStatus(pid).Seccomp}`;
    if (status === 'Seccomp 2') break;
    if (Date.now() > deadline || d.exitCode !== undefined) throw new Error(`daemon not under seccomp (${status}): ${d.log()}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  return { d, shared };
}

function connect(t: ExecutionContext, d: Daemon, opts: Partial<FrontendOptions>): { fe: VirtioFsFrontend; c: FuseClient } {
  const fe = VirtioFsFrontend.open({ socketPath: d.socketPath, ...opts });
  let closed = false;
  t.teardown(() => {
    if (!closed) fe.close();
  });
  const c = new FuseClient(fe);
  c.doInit();
  const close = fe.close.bind(fe);
  fe.close = () => {
    closed = true;
    close();
  };
  return { fe, c };
}

/** Works end to end: GETATTR, LOOKUP + OPEN + READ of a file, CREATE + WRITE of another. */
function exercise(t: ExecutionContext, c: FuseClient, shared: string, tag: string): void {
  t.true(c.getattr(F.ROOT_ID).ino > 0n, `${tag}: GETATTR`);
  const e = c.lookup(F.ROOT_ID, 'hello');
  const fh = c.open(e.nodeid);
  t.is(c.read(e.nodeid, fh, 0, 100).toString(), 'hello from the share\n', `${tag}: READ`);
  c.release(e.nodeid, fh);
  const w = c.create(F.ROOT_ID, `written-${tag}`);
  t.is(c.write(w.entry.nodeid, w.fh, 0, Buffer.from(tag)), tag.length, `${tag}: WRITE`);
  c.release(w.entry.nodeid, w.fh);
  t.is(fs.readFileSync(path.join(shared, `written-${tag}`), 'utf8'), tag);
}

/** Wait until the daemon's log matches `re` (it writes through a file, a moment later). */
async function logMatch(d: Daemon, re: RegExp, ms = 10000): Promise<boolean> {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (re.test(d.log())) return true;
    await new Promise((r) => setTimeout(r, 50));
  }
  return false;
}

/** Poll a non-blocking eventfd until it has been written, up to `ms`. */
async function signalled(fd: number, ms = 10000): Promise<boolean> {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    try {
      if (eventfdRead(fd) > 0n) return true;
    } catch {
      // EAGAIN: not yet
    }
    await new Promise((r) => setTimeout(r, 20));
  }
  return false;
}

/** SET_VRING_ERR with a fresh eventfd on `queue`; returns our end (closed at teardown). */
function watchErr(t: ExecutionContext, fe: VirtioFsFrontend, queue: number): number {
  const efd = eventfd(0);
  t.teardown(() => closeFd(efd));
  fe.vu.setOk(Req.SET_VRING_ERR, u64(queue), [efd]);
  return efd;
}

test.serial('sealable memfd: the daemon seals it against shrinking; the frontend\'s ftruncate fails with EPERM and requests go on', async (t) => {
  const { d, shared } = await launch(t);
  const { fe, c } = connect(t, d, { regions: [{ gpa: 0, size: 64 * MiB, allowSealing: true }] });
  const fd = fe.mem.regions[0].fd;
  t.not(getSeals(fd) & F_SEAL_SHRINK, 0, 'F_SEAL_SHRINK set on the frontend\'s memfd');
  t.true(await logMatch(d, /memory table: gpa 0x0 size 0x4000000 .*\(sealed\)/), d.log().slice(-2000));
  exercise(t, c, shared, 'before');
  t.is(truncateFd(fd, 16 * MiB), EPERM, 'a shrinking ftruncate is refused');
  t.is(fs.fstatSync(fd).size, 64 * MiB, 'the memfd kept its size');
  t.is(truncateFd(fd, 128 * MiB), 0, 'growing is still allowed (not sealed by us)');
  exercise(t, c, shared, 'after');
  t.is(d.exitCode, undefined, 'daemon alive');
  fe.close();
  t.is(await waitExit(d, 20000), 0, 'clean exit when the frontend leaves');
  t.deepEqual(crashSigns(d.log()), []);
});

test.serial('memfd the frontend sealed itself (QEMU\'s seal=on: GROW|SHRINK|SEAL) is accepted as sealed', async (t) => {
  const { d, shared } = await launch(t);
  // Seal before the daemon sees it, as memory-backend-memfd does at creation.
  const opts: Partial<FrontendOptions> = { regions: [{ gpa: 0, size: 64 * MiB, allowSealing: true }], noQueues: true };
  const fe = VirtioFsFrontend.open({ socketPath: d.socketPath, ...opts });
  t.teardown(() => fe.close());
  t.is(addSeals(fe.mem.regions[0].fd, F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL), 0);
  fe.setMemTable();
  fe.startQueues();
  const c = new FuseClient(fe);
  c.doInit();
  t.true(await logMatch(d, /memory table: .*\(sealed by the frontend\)/), d.log().slice(-2000));
  t.is(truncateFd(fe.mem.regions[0].fd, MiB), EPERM);
  exercise(t, c, shared, 'qemu-sealed');
});

test.serial('unsealable memfd shrunk under a request buffer: the request fails with EIO, the daemon logs it, stays alive and serves again', async (t) => {
  const { d, shared } = await launch(t);
  // Region 0 (sealable) holds the rings, request slots and the reply buffer; region 1 (born
  // unsealable) holds one request and is cut from 64 to 16 MiB.
  const { fe, c } = connect(t, d, {
    regions: [
      { gpa: 0, size: 64 * MiB, allowSealing: true },
      { gpa: GiB, size: 64 * MiB },
    ],
    bufAtLeast: 16 * MiB,
  });
  t.true(await logMatch(d, /memory table: .*\(sealed\); gpa 0x40000000 .*\(SIGBUS guard\)/), d.log().slice(-2000));
  const errFd = watchErr(t, fe, REQUEST);
  exercise(t, c, shared, 'before');

  const reqGpa = GiB + 32 * MiB;
  const replyGpa = 8 * MiB;
  fe.mem.write(reqGpa, F.request(F.Op.GETATTR, F.ROOT_ID, [F.getattrIn()], { unique: 0xabcdn }));
  fe.mem.write(replyGpa, Buffer.alloc(F.OUT_HEADER + F.ATTR_OUT, 0xee));
  const bad = fe.mem.regions[1].fd;
  t.is(getSeals(bad) & F_SEAL_SHRINK, 0, 'region 1 could not be sealed');
  t.is(truncateFd(bad, 16 * MiB), 0, 'the frontend shrinks region 1 under the daemon');
  // From here the frontend itself must not touch region 1 above 16 MiB (it would SIGBUS too).
  const q = fe.queues[REQUEST];
  const head = q.add([{ gpa: reqGpa, len: F.IN_HEADER + F.GETATTR_IN }], [{ gpa: replyGpa, len: F.OUT_HEADER + F.ATTR_OUT }]);
  q.publish(true);
  const used = q.waitN(1, 20000);
  t.deepEqual(used, [{ id: head, len: F.OUT_HEADER }], 'completed with just an out header');
  const reply = fe.mem.read(replyGpa, F.OUT_HEADER);
  t.is(reply.readInt32LE(4), -EIO, 'the request failed with EIO');
  t.true(await signalled(errFd), 'the queue\'s error eventfd was signalled');
  t.true(await logMatch(d, /SIGBUS fault\(s\), the last at 0x[0-9a-f]+ in region gpa 0x40000000 .*shrank the file.*fails with EIO/), d.log().slice(-3000));
  t.true(await logMatch(d, /queue 1: guest memory shrank under the device; the queue is stopped/));
  t.is(d.exitCode, undefined, 'daemon alive');

  // The queue is stopped: the frontend restarts it as a VMM resetting the device would.
  const base = fe.getVringBase(REQUEST);
  t.is(base, q.availIdx, 'the device took every published chain');
  fe.startQueue(q, base);
  exercise(t, c, shared, 'after');
  // Region 1 left the table: a request in it now fails as outside memory, with no fault.
  const head2 = q.add([{ gpa: GiB + MiB, len: F.IN_HEADER + F.GETATTR_IN }], [{ gpa: replyGpa, len: F.OUT_HEADER + F.ATTR_OUT }]);
  q.publish(true);
  t.deepEqual(q.waitN(1, 20000), [{ id: head2, len: 0 }], 'a chain into the retired region fails with length 0');
  t.true(await logMatch(d, /malformed descriptor chain/));
  exercise(t, c, shared, 'later');
  t.is(d.exitCode, undefined, 'daemon alive');
  fe.close();
  t.is(await waitExit(d, 20000), 0, 'clean exit (not SIGBUS) when the frontend leaves');
  t.deepEqual(crashSigns(d.log()), []);
});

test.serial('unsealable memfd shrunk under the rings: the queue stops, the daemon logs it, stays alive and exits 0', async (t) => {
  const { d } = await launch(t);
  const { fe, c } = connect(t, d, { regions: [{ gpa: 0, size: 64 * MiB }], ringAtLeast: 32 * MiB, bufAtLeast: 40 * MiB });
  t.true(await logMatch(d, /memory table: .*\(SIGBUS guard\)/), d.log().slice(-2000));
  const errFd = watchErr(t, fe, REQUEST);
  t.true(c.getattr(F.ROOT_ID).ino > 0n);
  const q = fe.queues[REQUEST];
  t.true(q.layout.avail >= 32 * MiB);
  // Publish a request without kicking, cut the memfd below the rings, then kick.
  fe.enqueue([F.request(F.Op.GETATTR, F.ROOT_ID, [F.getattrIn()])], [F.OUT_HEADER, F.ATTR_OUT]);
  const avail = q.availIdx;
  q.avail.writeUInt16LE(avail, 2);
  t.is(truncateFd(fe.mem.regions[0].fd, 16 * MiB), 0);
  q.kick();
  t.true(await signalled(errFd), 'the queue\'s error eventfd was signalled');
  t.true(await logMatch(d, /SIGBUS fault\(s\).*in region gpa 0x0 .*shrank the file/), d.log().slice(-3000));
  t.is(d.exitCode, undefined, 'daemon alive');
  // A control message still gets an answer.
  t.is(fe.vu.set(Req.SET_VRING_NUM, vringState(REQUEST, 128), [], true), 0n, 'control plane still served');
  fe.close();
  t.is(await waitExit(d, 20000), 0, 'clean exit (not SIGBUS) when the frontend leaves');
  t.deepEqual(crashSigns(d.log()), []);
});
