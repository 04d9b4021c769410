// The AF_UNIX socket bindings the vhost-user transport stands on: listenUnix's handling of
// stale sockets, files in the way, missing directories and --socket-group; descriptor
// passing with SCM_RIGHTS both ways, and too many descriptors in one message.
import test from 'ava';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { listenUnix, connectUnix, acceptConnection, sendMsg, recvMsg, closeFd, groupId, MAX_FDS_PER_MESSAGE, MAX_FDS_SEND, MSG_DONTWAIT } from '../src/sys/socket-calls.js';
import { eventfd, eventfdRead, eventfdWrite } from '../src/sys/event-calls.js';

function tmpdir(t: { teardown(fn: () => void): void }): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vhost-backend-socket-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

test('listenUnix replaces a stale socket, refuses other files, names a missing directory', (t) => {
  const dir = tmpdir(t);
  const p = path.join(dir, 'vhost.sock');
  const first = listenUnix(p);
  closeFd(first); // leaves a stale socket file behind, as a crashed daemon would
  t.true(fs.lstatSync(p).isSocket());
  const fd = listenUnix(p);
  t.teardown(() => closeFd(fd));
  const c = connectUnix(p);
  const s = acceptConnection(fd);
  t.true(s >= 0);
  closeFd(c);
  closeFd(s);
  t.deepEqual(fs.readdirSync(dir), ['vhost.sock'], 'no temporary name left behind');

  const file = path.join(dir, 'regular');
  fs.writeFileSync(file, 'keep me');
  t.throws(() => listenUnix(file), { message: /not a socket is in the way/ });
  t.is(fs.readFileSync(file, 'utf8'), 'keep me');

  t.throws(() => listenUnix(path.join(dir, 'missing', 'vhost.sock')), { message: /directory .*missing does not exist/ });
  t.throws(() => listenUnix(path.join(dir, 'x'.repeat(120))), { message: /1 to 107 bytes/ });
});

test('--socket-group: the socket gets the group and mode 0660', (t) => {
  const dir = tmpdir(t);
  const p = path.join(dir, 'grp.sock');
  const gid = groupId('daemon');
  t.is(groupId(String(gid)), gid);
  t.throws(() => groupId('no-such-group-vfs'), { message: /unknown group/ });
  const fd = listenUnix(p, { group: 'daemon' });
  t.teardown(() => closeFd(fd));
  const st = fs.statSync(p);
  t.is(st.gid, gid);
  t.is(st.mode & 0o777, 0o660);
});

test('descriptors travel with SCM_RIGHTS; too many are refused and closed', (t) => {
  const dir = tmpdir(t);
  const l = listenUnix(path.join(dir, 's'));
  const c = connectUnix(path.join(dir, 's'));
  const s = acceptConnection(l);
  t.teardown(() => [l, c, s].forEach(closeFd));
  const ev = eventfd();
  t.is(sendMsg(c, Buffer.from('kick'), [ev]), 4);
  const fds: number[] = [];
  const buf = Buffer.alloc(16);
  t.is(recvMsg(s, buf, 0, 16, fds), 4);
  t.is(buf.toString('utf8', 0, 4), 'kick');
  t.is(fds.length, 1);
  t.not(fds[0], ev, 'a new descriptor for the same eventfd');
  eventfdWrite(ev, 3n);
  t.is(eventfdRead(fds[0]), 3n);
  closeFd(fds[0]);
  closeFd(ev);
  t.is(recvMsg(s, buf, 0, 16, fds, MSG_DONTWAIT), -1, 'nothing more: would block');

  const openFds = (): number => fs.readdirSync('/proc/self/fd').length;
  const many = Array.from({ length: MAX_FDS_PER_MESSAGE + 4 }, () => eventfd());
  t.is(sendMsg(c, Buffer.from('x'), many), 1);
  many.forEach(closeFd);
  fds.length = 0;
  const before = openFds();
  t.throws(() => recvMsg(s, buf, 0, 16, fds), { message: /control data truncated/ });
  t.is(fds.length, 0);
  t.is(openFds(), before, 'the descriptors that did arrive were closed');
  t.throws(() => sendMsg(c, Buffer.from('x'), Array.from({ length: MAX_FDS_SEND + 1 }, () => 0)), { message: /descriptors/ });
});
