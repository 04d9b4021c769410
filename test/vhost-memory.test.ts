// Guest memory layouts a VMM really hands over: a 6 GiB sparse guest with rings and buffers
// above 4 GiB (and buffers across the 1 GiB mapping windows a backend must use), a
// QEMU-like split into low and high RAM, and adjacent regions from different memfds (one
// with an mmap_offset) with a single buffer spanning both.
import test from 'ava';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { withDaemon, openFs, crashSigns } from './frontend/harness.js';
import type { FuseClient } from './frontend/fuse-client.js';
import type { VirtioFsFrontend } from './frontend/virtio-fs.js';
import * as F from './frontend/fuse-requests.js';

const GiB = 2 ** 30;
const MiB = 2 ** 20;

function pattern(len: number, seed: number): Buffer {
  const b = Buffer.alloc(len);
  let x = seed >>> 0 || 1;
  for (let i = 0; i + 4 <= len; i += 4) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    b.writeUInt32LE(x >>> 0, i);
  }
  return b;
}

/**
 * WRITE `len` bytes whose data descriptor sits at `dataGpa`, then READ them back into a
 * writable descriptor at `readGpa`; headers live at `hdrGpa`. Checks guest memory and host file.
 */
function writeReadAt(
  t: { is: (a: unknown, b: unknown, m?: string) => void; true: (v: boolean, m?: string) => void },
  fe: VirtioFsFrontend,
  c: FuseClient,
  hostFile: string,
  at: { hdrGpa: number; dataGpa: number; readGpa: number; len: number; seed: number },
): void {
  const e = c.create(F.ROOT_ID, path.basename(hostFile));
  const data = pattern(at.len, at.seed);
  const wreq = F.request(F.Op.WRITE, e.entry.nodeid, [F.rwIn(e.fh, 0, at.len)], { len: F.IN_HEADER + F.RW_IN + at.len });
  const w = fe.callAt(
    [
      { gpa: at.hdrGpa, data: wreq },
      { gpa: at.dataGpa, data },
    ],
    [{ gpa: at.hdrGpa + 4096, len: F.OUT_HEADER + F.WRITE_OUT }],
  );
  t.is(w.header.error, 0, 'WRITE error');
  t.is(w.body.readUInt32LE(0), at.len, 'bytes written');
  t.true(fs.readFileSync(hostFile).equals(data), 'host file has the data');
  fe.mem.write(at.readGpa, Buffer.alloc(at.len, 0xee));
  const rreq = F.request(F.Op.READ, e.entry.nodeid, [F.rwIn(e.fh, 0, at.len)]);
  const r = fe.callAt(
    [{ gpa: at.hdrGpa, data: rreq }],
    [
      { gpa: at.hdrGpa + 8192, len: F.OUT_HEADER },
      { gpa: at.readGpa, len: at.len },
    ],
  );
  t.is(r.header.error, 0, 'READ error');
  t.is(r.usedLen, F.OUT_HEADER + at.len, 'used.len of the READ');
  t.true(fe.mem.read(at.readGpa, at.len).equals(data), 'guest memory has the file data');
  c.release(e.entry.nodeid, e.fh);
}

test.serial('6 GiB sparse guest: rings and buffers above 4 GiB, buffers across 1 GiB windows', async (t) => {
  const env = await withDaemon(t);
  const { fe, c } = openFs(env, t, {
    regions: [{ gpa: 0, size: 6 * GiB }],
    ringAtLeast: 4 * GiB + 512 * MiB,
    bufAtLeast: 4 * GiB + 600 * MiB,
  });
  t.true(fe.queues[1].layout.desc >= 4 * GiB && fe.queues[1].layout.used >= 4 * GiB);
  fs.writeFileSync(path.join(env.shared, 'hello'), 'above 4 GiB');
  const e = c.lookup(F.ROOT_ID, 'hello');
  const fh = c.open(e.nodeid);
  t.is(c.read(e.nodeid, fh, 0, 100).toString(), 'above 4 GiB');
  c.release(e.nodeid, fh);
  // 1 MiB buffers straddling the 5 GiB line (a window boundary), headers far above 4 GiB.
  writeReadAt(t, fe, c, path.join(env.shared, 'w1'), { hdrGpa: 5 * GiB + 256 * MiB, dataGpa: 5 * GiB - 300 * 1024, readGpa: 5 * GiB - 700 * 1024, len: MiB, seed: 1 });
  // The very last bytes of guest memory.
  writeReadAt(t, fe, c, path.join(env.shared, 'w2'), { hdrGpa: 5 * GiB + 512 * MiB, dataGpa: 6 * GiB - 2 * MiB, readGpa: 6 * GiB - MiB, len: MiB, seed: 2 });
  t.deepEqual(crashSigns(env.d.log()), []);
});

test.serial('QEMU-like layout: low RAM below 2 GiB and high RAM from 4 GiB, separate memfds', async (t) => {
  const env = await withDaemon(t);
  const { fe, c } = openFs(env, t, {
    regions: [
      { gpa: 0, size: 2 * GiB },
      { gpa: 4 * GiB, size: 2 * GiB },
    ],
    ringRegion: 1,
    bufRegion: 1,
    bufAtLeast: 64 * MiB,
  });
  // Header in high RAM, data in low RAM and back.
  writeReadAt(t, fe, c, path.join(env.shared, 'x1'), { hdrGpa: 4 * GiB + 32 * MiB, dataGpa: 1 * GiB + 4096, readGpa: 1536 * MiB, len: MiB, seed: 3 });
  writeReadAt(t, fe, c, path.join(env.shared, 'x2'), { hdrGpa: 512 * MiB, dataGpa: 5 * GiB + 123 * 4096, readGpa: 6 * GiB - MiB, len: MiB, seed: 4 });
});

test.serial('adjacent regions from two memfds (one with mmap_offset): one buffer spans both', async (t) => {
  const env = await withDaemon(t);
  const { fe, c } = openFs(env, t, {
    regions: [
      { gpa: 0, size: 64 * MiB },
      { gpa: 64 * MiB, size: 64 * MiB, fileOffset: 3 * MiB },
    ],
  });
  // Data descriptors cross the 64 MiB line between the two regions.
  writeReadAt(t, fe, c, path.join(env.shared, 'span'), { hdrGpa: 120 * MiB, dataGpa: 64 * MiB - 333 * 1024, readGpa: 64 * MiB - 777 * 1024, len: MiB, seed: 5 });
  // Sanity: what the backend wrote into region 1 landed at mmap_offset in its memfd.
  const e = c.lookup(F.ROOT_ID, 'span');
  const fh = c.open(e.nodeid);
  t.is(c.read(e.nodeid, fh, 0, 16).length, 16);
  c.release(e.nodeid, fh);
});

test.serial('CONFIGURE_MEM_SLOTS: regions added with ADD_MEM_REG, one hot-added and removed again', async (t) => {
  const env = await withDaemon(t);
  const { fe, c } = openFs(env, t, {
    memSlots: true,
    regions: [
      { gpa: 0, size: 64 * MiB },
      { gpa: 1 * GiB, size: 64 * MiB },
    ],
    ringRegion: 1,
  });
  t.true(fe.maxMemSlots >= 8, `GET_MAX_MEM_SLOTS ${fe.maxMemSlots}`);
  writeReadAt(t, fe, c, path.join(env.shared, 'm1'), { hdrGpa: 1 * GiB + 32 * MiB, dataGpa: 16 * MiB, readGpa: 40 * MiB, len: MiB, seed: 6 });
  // Hotplug a region at 8 GiB and move data through it.
  const k = fe.mem.addRegion({ gpa: 8 * GiB, size: 32 * MiB, fileOffset: 2 * MiB });
  t.is(fe.memReg(fe.mem.regions[k]), 0n, 'ADD_MEM_REG of the hot-added region');
  writeReadAt(t, fe, c, path.join(env.shared, 'm2'), { hdrGpa: 1 * GiB + 40 * MiB, dataGpa: 8 * GiB + 4096, readGpa: 8 * GiB + 8 * MiB, len: MiB, seed: 7 });
  // Unplug it: a request pointing into it now fails, and the device carries on.
  t.is(fe.memReg(fe.mem.regions[k], true), 0n, 'REM_MEM_REG');
  const e = c.lookup(F.ROOT_ID, 'm2');
  const fh = c.open(e.nodeid);
  fe.mem.write(8 * GiB + 8 * MiB, Buffer.alloc(4096, 0xcd));
  const hdr = 1 * GiB + 48 * MiB;
  fe.mem.write(hdr, F.request(F.Op.READ, e.nodeid, [F.rwIn(fh, 0, 4096)]));
  const q = fe.queues[1];
  const head = q.add([{ gpa: hdr, len: F.IN_HEADER + F.RW_IN }], [{ gpa: hdr + 4096, len: F.OUT_HEADER }, { gpa: 8 * GiB + 8 * MiB, len: 4096 }]);
  q.publish();
  const used = q.waitN(1, 10000);
  t.is(used[0].id, head);
  t.is(used[0].len, 0, 'a chain into removed memory fails with length 0');
  t.true(fe.mem.read(8 * GiB + 8 * MiB, 4096).equals(Buffer.alloc(4096, 0xcd)), 'nothing written into the removed region');
  t.is(c.getattr(e.nodeid).size, BigInt(MiB));
  t.deepEqual(crashSigns(env.d.log()), []);
});
