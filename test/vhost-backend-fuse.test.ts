// runVhostDevice with the real FUSE core (createFuseServer) behind it, in a child process
// without the daemon around it (no sandbox): the test frontend mounts nothing, it sends
// FUSE requests through the rings. Checks the zero-copy data path with real files: a
// 1 MiB WRITE and READ with buffers in a region mapped at a file offset,
// files above 4 GiB of offset, and a guest whose buffers sit above 4 GiB of guest memory.
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import crypto from 'node:crypto';
import { VirtioFsFrontend, type FrontendOptions } from './frontend/virtio-fs.js';
import { FuseClient } from './frontend/fuse-client.js';
import { ROOT_ID } from './frontend/fuse-requests.js';
import { repoFile, startDeviceChild } from './vhost-backend-helpers.js';


const CHILD = `
import { runVhostDevice } from ${repoFile('src/vhost/device.ts')};
import { listenUnix } from ${repoFile('src/sys/socket-calls.ts')};
import { eventfd } from ${repoFile('src/sys/event-calls.ts')};
import { createFuseServer } from ${repoFile('src/fs/fuse-server.ts')};
import { DEFAULT_FS_OPTIONS } from ${repoFile('src/fs/options.ts')};
import fs from 'node:fs';
const [sock, shared] = process.argv.slice(-2);
const O_PATH = 0o10000000, O_DIRECTORY = 0o200000;
const rootFd = fs.openSync(shared, O_PATH | O_DIRECTORY);
const procSelfFd = fs.openSync('/proc/self/fd', O_PATH | O_DIRECTORY);
const listenFd = listenUnix(sock);
const code = runVhostDevice({ listenFd, stopFd: eventfd(), tag: 'fuse-test',
  makeSession: (maxWrite) => createFuseServer({ rootFd, procSelfFd, options: DEFAULT_FS_OPTIONS, transport: 'virtio', maxWrite }) });
process.exit(code);
`;

async function serve(t: { teardown(fn: () => void | Promise<void>): void }, opts: Partial<FrontendOptions>): Promise<{ shared: string; c: FuseClient; fe: VirtioFsFrontend }> {
  const child = await startDeviceChild(t, 'vhost-backend-fuse-', CHILD, (dir) => [path.join(dir, 'shared')],
    (dir) => fs.mkdirSync(path.join(dir, 'shared')));
  const shared = path.join(child.dir, 'shared');
  const sock = child.sock;
  const fe = VirtioFsFrontend.open({ socketPath: sock, queueSize: 256, ...opts });
  t.teardown(() => fe.close());
  const c = new FuseClient(fe);
  c.doInit();
  return { shared, c, fe };
}

test.serial('1 MiB WRITE and READ through the real core, buffers in a region mapped at a file offset', async (t) => {
  // Two adjacent 16 MiB regions; the request buffers live in the second one, whose bytes
  // start 1 MiB into its memfd (mmap_offset), so a wrong offset shows as wrong data.
  const { shared, c } = await serve(t, {
    regions: [
      { gpa: 0, size: 16 << 20 },
      { gpa: 16 << 20, size: 16 << 20, fileOffset: 1 << 20 },
    ],
    bufRegion: 1,
    slotBytes: (1 << 20) + 64 * 1024,
  });
  const data = crypto.randomBytes(1 << 20);
  const { entry, fh } = c.create(ROOT_ID, 'big.bin');
  t.is(c.write(entry.nodeid, fh, 0, data), data.length);
  t.is(c.write(entry.nodeid, fh, 5 * 2 ** 30, Buffer.from('past 4 GiB')), 10);
  c.release(entry.nodeid, fh);
  const hostFd = fs.openSync(path.join(shared, 'big.bin'), 'r');
  const head = Buffer.alloc(data.length);
  fs.readSync(hostFd, head, 0, head.length, 0);
  const tail = Buffer.alloc(10);
  fs.readSync(hostFd, tail, 0, 10, 5 * 2 ** 30);
  t.is(fs.fstatSync(hostFd).size, 5 * 2 ** 30 + 10);
  fs.closeSync(hostFd);
  t.true(head.equals(data));
  t.is(tail.toString(), 'past 4 GiB');
  const rfh = c.open(entry.nodeid);
  t.true(c.read(entry.nodeid, rfh, 0, 1 << 20).equals(data));
  t.is(c.read(entry.nodeid, rfh, 5 * 2 ** 30, 64).toString(), 'past 4 GiB');
  c.release(entry.nodeid, rfh);
});

test.serial('a guest with 6 GiB of memory: rings and buffers above 4 GiB', async (t) => {
  const { shared, c } = await serve(t, {
    regions: [
      { gpa: 0, size: 1 << 20 },
      { gpa: 2 ** 32, size: 6 * 2 ** 30 },
    ],
    ringRegion: 1,
    ringAtLeast: 5 * 2 ** 30 + 12345 * 4096,
    bufRegion: 1,
    bufAtLeast: 4 * 2 ** 30 - 100 * 1024, // buffers around the 4 GiB offset of the region (8 GiB guest physical)
    slotBytes: (1 << 20) + 64 * 1024,
  });
  fs.writeFileSync(path.join(shared, 'host.txt'), 'written on the host\n');
  const e = c.lookup(ROOT_ID, 'host.txt');
  const fh = c.open(e.nodeid);
  t.is(c.read(e.nodeid, fh, 0, 4096).toString(), 'written on the host\n');
  c.release(e.nodeid, fh);
  const data = crypto.randomBytes(1 << 20);
  const w = c.create(ROOT_ID, 'guest.bin');
  t.is(c.write(w.entry.nodeid, w.fh, 0, data), data.length);
  c.release(w.entry.nodeid, w.fh);
  t.true(fs.readFileSync(path.join(shared, 'guest.bin')).equals(data));
});
