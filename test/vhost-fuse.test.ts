// FUSE over vhost-user against the daemon, driven by the TypeScript test frontend: INIT,
// lookup/getattr, create/write/read (1 MiB), readdirplus of 10,000 entries, FORGET on the
// hiprio queue, a 1024-entry queue under a deep pipeline, indirect descriptors, no EVENT_IDX.
import test from 'ava';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { withDaemon, openFs, crashSigns } from './frontend/harness.js';
import { FuseError, ENOENT, S_IFDIR, S_IFREG, O_RDONLY } from './frontend/fuse-client.js';
import * as F from './frontend/fuse-requests.js';
import { HIPRIO } from './frontend/virtio-fs.js';

test.serial('INIT negotiates FUSE 7.x with a 1 MiB max_write', async (t) => {
  const env = await withDaemon(t);
  const { c, fe } = openFs(env, t);
  const init = c.init;
  t.truthy(init);
  t.is(init?.major, 7);
  t.true((init?.minor ?? 0) >= 31, `minor ${init?.minor}`);
  t.true((init?.maxWrite ?? 0) >= 1 << 20, `max_write ${init?.maxWrite}`);
  // The device must have been notified and must have interrupted us through the call eventfd.
  t.true(fe.queues[1].kicks >= 1);
  t.deepEqual(crashSigns(env.d.log()), []);
});

test.serial('LOOKUP and GETATTR see the host file; a missing name is ENOENT', async (t) => {
  const env = await withDaemon(t, [], (s) => {
    fs.writeFileSync(path.join(s, 'hello.txt'), 'hello world');
    fs.mkdirSync(path.join(s, 'sub'));
  });
  const { c } = openFs(env, t);
  const st = fs.statSync(path.join(env.shared, 'hello.txt'));
  const e = c.lookup(F.ROOT_ID, 'hello.txt');
  t.not(e.nodeid, 0n);
  t.is(e.attr.ino, BigInt(st.ino));
  t.is(e.attr.size, 11n);
  t.is(e.attr.mode & 0o170000, S_IFREG);
  const a = c.getattr(e.nodeid);
  t.is(a.ino, BigInt(st.ino));
  t.is(a.size, 11n);
  t.is(c.getattr(F.ROOT_ID).mode & 0o170000, S_IFDIR);
  t.is(c.lookup(F.ROOT_ID, 'sub').attr.mode & 0o170000, S_IFDIR);
  const err = t.throws(() => c.lookup(F.ROOT_ID, 'nope'));
  t.true(err instanceof FuseError && err.errno === ENOENT, String(err));
});

test.serial('CREATE, 1 MiB WRITE and READ, RELEASE, UNLINK reach the host file', async (t) => {
  const env = await withDaemon(t);
  const { c } = openFs(env, t);
  const data = Buffer.alloc(1 << 20);
  for (let i = 0; i < data.length; i += 4) data.writeUInt32LE((i * 2654435761) >>> 0, i);
  const { entry, fh } = c.create(F.ROOT_ID, 'big.bin');
  t.is(entry.attr.mode & 0o170000, S_IFREG);
  t.is(c.write(entry.nodeid, fh, 0, data), data.length);
  t.is(c.write(entry.nodeid, fh, data.length, Buffer.from('tail')), 4);
  const back = c.read(entry.nodeid, fh, 0, 1 << 20);
  t.true(back.equals(data), 'read back differs');
  t.is(c.read(entry.nodeid, fh, data.length, 100).toString(), 'tail');
  t.is(c.read(entry.nodeid, fh, data.length + 4, 100).length, 0, 'read at EOF');
  c.release(entry.nodeid, fh);
  const host = fs.readFileSync(path.join(env.shared, 'big.bin'));
  t.true(host.subarray(0, data.length).equals(data));
  t.is(host.subarray(data.length).toString(), 'tail');
  // Host-side writes are seen through a fresh open.
  fs.writeFileSync(path.join(env.shared, 'big.bin'), 'rewritten');
  const fh2 = c.open(entry.nodeid, O_RDONLY);
  t.is(c.read(entry.nodeid, fh2, 0, 4096).toString(), 'rewritten');
  c.release(entry.nodeid, fh2);
  c.unlink(F.ROOT_ID, 'big.bin');
  t.false(fs.existsSync(path.join(env.shared, 'big.bin')));
});

test.serial('READDIRPLUS lists 10,000 entries with their attributes', async (t) => {
  const N = 10000;
  const env = await withDaemon(t, [], (s) => {
    const d = path.join(s, 'many');
    fs.mkdirSync(d);
    for (let i = 0; i < N; i++) fs.writeFileSync(path.join(d, `f${i}`), Buffer.alloc(i % 97));
  });
  const { c, fe } = openFs(env, t);
  const dir = c.lookup(F.ROOT_ID, 'many');
  const { entries, calls } = c.readdirplusAll(dir.nodeid);
  const files = entries.filter((e) => e.name !== '.' && e.name !== '..');
  t.is(files.length, N);
  t.is(new Set(files.map((e) => e.name)).size, N, 'no duplicates');
  t.true(calls > 1, 'more than one READDIRPLUS call was needed');
  let bad = 0;
  for (const e of files) {
    const i = Number(e.name.slice(1));
    if (e.entry.nodeid === 0n || e.entry.attr.size !== BigInt(i % 97) || (e.entry.attr.mode & 0o170000) !== S_IFREG) bad++;
  }
  t.is(bad, 0, 'entries with a wrong nodeid, size or type');
  // Every entry with a nodeid counts as a lookup: give them all back on the hiprio queue.
  const items = files.map((e) => ({ nodeid: e.entry.nodeid, nlookup: 1 }));
  for (let i = 0; i < items.length; i += 500) c.batchForget(items.slice(i, i + 500));
  t.is(c.getattr(dir.nodeid).mode & 0o170000, S_IFDIR);
  t.true(fe.queues[HIPRIO].lastUsed > 0);
});

function fdCount(pid: number): number {
  return fs.readdirSync(`/proc/${pid}/fd`).length;
}

test.serial('FORGET on the hiprio queue releases the inodes LOOKUP took', async (t) => {
  const N = 200;
  const env = await withDaemon(t, [], (s) => {
    for (let i = 0; i < N; i++) fs.writeFileSync(path.join(s, `g${i}`), 'x');
  });
  const { c, fe } = openFs(env, t);
  const before = fdCount(env.d.pid);
  const ids: bigint[] = [];
  for (let i = 0; i < N; i++) {
    ids.push(c.lookup(F.ROOT_ID, `g${i}`).nodeid);
    c.lookup(F.ROOT_ID, `g${i}`); // a second lookup of the same inode: nlookup 2
  }
  const held = fdCount(env.d.pid);
  t.true(held - before >= N, `the daemon holds an fd per looked-up inode (${before} -> ${held})`);
  for (const id of ids) c.forget(id, 2);
  t.is(fe.queues[HIPRIO].lastUsed, N, 'every FORGET chain came back on the hiprio used ring');
  // FORGET has no reply, so check the effect: a GETATTR after it proves the forgets were handled.
  c.getattr(F.ROOT_ID);
  const after = fdCount(env.d.pid);
  t.true(held - after >= N, `fds released after FORGET (${held} -> ${after})`);
  // A fresh lookup after forget works and gets a usable nodeid.
  t.is(c.getattr(c.lookup(F.ROOT_ID, 'g0').nodeid).size, 1n);
});

test.serial('queue size 1024 with 320 requests (960 descriptors) in flight', async (t) => {
  const env = await withDaemon(t, [], (s) => fs.writeFileSync(path.join(s, 'f'), 'abc'));
  const { c, fe } = openFs(env, t, { queueSize: 1024, slotBytes: 8192 });
  const node = c.lookup(F.ROOT_ID, 'f').nodeid;
  const uniques = new Map<number, bigint>();
  let bad = 0;
  fe.pipeline(
    5000,
    320,
    (i) => {
      const req = F.request(F.Op.GETATTR, node, [F.getattrIn()]);
      uniques.set(i, req.readBigUInt64LE(8));
      return { parts: [req], replyLens: [F.OUT_HEADER, F.ATTR_OUT] };
    },
    (i, r) => {
      if (r === undefined || r.header.error !== 0 || r.header.unique !== uniques.get(i) || F.parseAttr(r.body, 16).size !== 3n) bad++;
    },
  );
  t.is(bad, 0);
  t.is(fe.queues[1].lastUsed, (5000 + 2) & 0xffff, 'INIT + LOOKUP + 5000 GETATTR used entries');
});

test.serial('requests through indirect descriptor tables', async (t) => {
  const env = await withDaemon(t, [], (s) => fs.writeFileSync(path.join(s, 'f'), 'indirect'));
  const { c, fe } = openFs(env, t, { indirect: true });
  t.true(fe.features !== 0n);
  const e = c.lookup(F.ROOT_ID, 'f');
  const fh = c.open(e.nodeid);
  t.is(c.read(e.nodeid, fh, 0, 100).toString(), 'indirect');
  c.release(e.nodeid, fh);
  const w = c.create(F.ROOT_ID, 'w');
  t.is(c.write(w.entry.nodeid, w.fh, 0, Buffer.alloc(300000, 1)), 300000);
  t.is(fs.statSync(path.join(env.shared, 'w')).size, 300000);
});

test.serial('without EVENT_IDX the device still kicks and interrupts', async (t) => {
  const env = await withDaemon(t, [], (s) => fs.writeFileSync(path.join(s, 'f'), 'x'));
  const { c, fe } = openFs(env, t, { eventIdx: false });
  t.false(fe.eventIdx);
  const e = c.lookup(F.ROOT_ID, 'f');
  for (let i = 0; i < 50; i++) t.is(c.getattr(e.nodeid).size, 1n);
  t.true(fe.queues[1].interrupts > 0, 'call eventfd signalled');
});
