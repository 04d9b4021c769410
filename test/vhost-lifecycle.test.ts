// Connection lifecycle as virtiofsd lives it: serve one frontend, exit 0 when it goes away;
// SIGTERM is a clean exit; GET_VRING_BASE stops a ring at the right index and SET_VRING_BASE
// resumes it (VM stop/cont); RESET_OWNER followed by a full re-setup and a new FUSE INIT
// works (guest reboot); a second frontend is not served while the first is connected.
import test from 'ava';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { withDaemon, openFs, crashSigns } from './frontend/harness.js';
import { waitExit } from './frontend/daemons.js';
import { VhostUserClient, Req, BackendClosed } from './frontend/vhost-user.js';
import { REQUEST } from './frontend/virtio-fs.js';
import * as F from './frontend/fuse-requests.js';

test.serial('frontend disconnect after serving requests: the daemon exits 0', async (t) => {
  const env = await withDaemon(t, [], (s) => fs.writeFileSync(path.join(s, 'f'), 'x'));
  const { fe, c } = openFs(env, t);
  c.lookup(F.ROOT_ID, 'f');
  fe.close();
  t.is(await waitExit(env.d, 20000), 0);
  t.deepEqual(crashSigns(env.d.log()), []);
});

test.serial('a connection closed before any message: the daemon exits 0', async (t) => {
  const env = await withDaemon(t);
  const vu = new VhostUserClient(env.d.socketPath);
  vu.close();
  t.is(await waitExit(env.d, 20000), 0);
});

test.serial('disconnect in the middle of a message: the daemon exits 0', async (t) => {
  const env = await withDaemon(t);
  const vu = new VhostUserClient(env.d.socketPath);
  vu.getU64(Req.GET_FEATURES);
  // Header announces 8 bytes of payload; only 3 arrive before the connection closes.
  vu.send(Req.SET_FEATURES, Buffer.alloc(3), [], 1, 8);
  vu.close();
  t.is(await waitExit(env.d, 20000), 0);
  t.deepEqual(crashSigns(env.d.log()), []);
});

test.serial('SIGTERM while a frontend is connected: clean exit 0', async (t) => {
  const env = await withDaemon(t);
  openFs(env, t);
  env.d.proc.kill('SIGTERM');
  t.is(await waitExit(env.d, 20000), 0);
});

test.serial('GET_VRING_BASE stops the ring at the next avail index; SET_VRING_BASE resumes it', async (t) => {
  const env = await withDaemon(t);
  const { fe, c } = openFs(env, t);
  for (let i = 0; i < 5; i++) c.getattr(F.ROOT_ID);
  // INIT + 5 GETATTR consumed on the request queue, nothing on hiprio.
  t.is(fe.getVringBase(REQUEST), 6);
  t.is(fe.getVringBase(0), 0);
  // A request made while the ring is stopped is not processed...
  fe.enqueue([F.request(F.Op.GETATTR, F.ROOT_ID, [F.getattrIn()])], [F.OUT_HEADER, F.ATTR_OUT]);
  fe.queues[REQUEST].publish(true);
  t.deepEqual(fe.queues[REQUEST].wait(500), [], 'a stopped ring must not be processed');
  // ...until the VMM starts it again from the index it got back.
  fe.startQueue(fe.queues[REQUEST], 6);
  const got = fe.queues[REQUEST].waitN(1, 5000);
  t.is(got.length, 1);
  t.is(got[0].len, F.OUT_HEADER + F.ATTR_OUT);
  fe.startQueue(fe.queues[0], 0);
  t.is(c.getattr(F.ROOT_ID).mode & 0o170000, 0o040000);
});

test.serial('guest reboot: RESET_OWNER, fresh rings and a new FUSE INIT; old nodeids are gone', async (t) => {
  const env = await withDaemon(t, [], (s) => fs.writeFileSync(path.join(s, 'f'), 'x'));
  const { fe, c } = openFs(env, t);
  const old = c.lookup(F.ROOT_ID, 'f').nodeid;
  fe.getVringBase(0);
  fe.getVringBase(REQUEST);
  t.is(fe.vu.set(Req.RESET_OWNER, Buffer.alloc(0), [], fe.vu.replyAck), 0n);
  fe.restartDevice();
  const init = c.doInit();
  t.is(init.major, 7);
  const e = c.lookup(F.ROOT_ID, 'f');
  t.is(e.attr.size, 1n);
  const r = fe.call([F.request(F.Op.GETATTR, old, [F.getattrIn()])], [F.OUT_HEADER, F.ATTR_OUT]);
  if (old !== e.nodeid) t.true(r !== undefined && r.header.error < 0, 'a nodeid from before the new INIT is refused');
  else t.pass();
  t.deepEqual(crashSigns(env.d.log()), []);
});

test.serial('a second frontend is not served while the first is connected', async (t) => {
  const env = await withDaemon(t);
  const { c } = openFs(env, t);
  let served = false;
  try {
    const v2 = new VhostUserClient(env.d.socketPath, 1000);
    t.teardown(() => v2.close());
    try {
      v2.getU64(Req.GET_FEATURES);
      served = true;
    } catch (e) {
      // Closed at once (EOF, EPIPE, ECONNRESET) or left unanswered (EAGAIN after the timeout).
      t.true(e instanceof BackendClosed || ['EAGAIN', 'EPIPE', 'ECONNRESET'].includes((e as { code?: string }).code ?? ''), String(e));
    }
  } catch (e) {
    t.regex(String(e), /ENOENT|ECONNREFUSED/);
  }
  t.false(served, 'the second connection got answers');
  t.is(c.getattr(F.ROOT_ID).mode & 0o170000, 0o040000, 'the first frontend still works');
});
