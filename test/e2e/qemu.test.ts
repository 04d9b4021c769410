// End to end: a QEMU guest (TCG) mounts the share served by our daemon with virtio-fs and
// works on it; the host checks the results on the real directory. TCG boots are slow (~5 s),
// so each sandbox mode gets two boots: one running every check, then a second boot against
// a freshly started daemon over the same directory. VFS_E2E_BACKEND=reference runs the same
// checks against the reference virtiofsd, which is how these tests were validated.
import test from 'ava';
import type { ExecutionContext } from 'ava';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { bootGuest, findKernel, findQemu, keyed } from './guest.js';
import { backendKind, dirId, inspectBackend, startBackend, type Backend, type ProcessView, type SandboxMode } from './backend.js';

const KIND = backendKind();
const BIG = 64 * 1024 * 1024;
const MANY = 2000;

function sha256File(p: string): string {
  const h = crypto.createHash('sha256');
  const fd = fs.openSync(p, 'r');
  const buf = Buffer.alloc(1 << 20);
  try {
    let n: number;
    while ((n = fs.readSync(fd, buf, 0, buf.length, null)) > 0) h.update(buf.subarray(0, n));
  } finally {
    fs.closeSync(fd);
  }
  return h.digest('hex');
}

/** What the host puts in the share before the first boot; returns the big file's checksum. */
function prepareShare(dir: string): string {
  fs.writeFileSync(path.join(dir, 'host.txt'), 'written by the host\n');
  fs.mkdirSync(path.join(dir, 'hostdir'));
  fs.writeFileSync(path.join(dir, 'hostdir/a'), 'A');
  fs.writeFileSync(path.join(dir, 'hostdir/b'), 'B');
  fs.symlinkSync('hostdir/a', path.join(dir, 'hostlink'));
  fs.writeFileSync(path.join(dir, 'hostmode'), '');
  fs.chmodSync(path.join(dir, 'hostmode'), 0o751);
  fs.writeFileSync(path.join(dir, 'host-rename-src.txt'), 'renamed by the guest\n');
  fs.writeFileSync(path.join(dir, 'host-delete.txt'), 'deleted by the guest\n');
  fs.mkdirSync(path.join(dir, 'hostmany'));
  for (let i = 0; i < MANY; i++) fs.writeFileSync(path.join(dir, `hostmany/h${i}`), '');
  const fd = fs.openSync(path.join(dir, 'big-host.bin'), 'w');
  const chunk = Buffer.alloc(1 << 20);
  for (let i = 0; i < BIG / chunk.length; i++) {
    crypto.randomFillSync(chunk);
    fs.writeSync(fd, chunk);
  }
  fs.closeSync(fd);
  return sha256File(path.join(dir, 'big-host.bin'));
}

// Boot 1. Lines are `KEY value`; SYNC_GUEST_READY hands control to the host (onLine), which
// checks the guest's writes while the share is still mounted, then writes files the guest
// waits for.
const SCRIPT_MAIN = String.raw`
cd "$VFS_MNT" || exit 90
echo "HOST_TXT $(cat host.txt)"
echo "HOSTDIR $(ls hostdir | tr '\n' ',')"
echo "HOSTLINK $(readlink hostlink) $(cat hostlink)"
echo "HOSTMODE $(stat -c %a hostmode)"
echo "HOSTMANY $(ls hostmany | wc -l)"
echo "written by the guest" > guest.txt
mkdir gdir && mkdir gdir/sub
echo rename-me > gdir/old && mv gdir/old gdir/new
echo bye > gdir/gone && rm gdir/gone
ln -s ../host.txt gdir/link
echo mode > gdir/mode && chmod 604 gdir/mode
printf 0123456789 > gdir/trunc && truncate -s 4 gdir/trunc
mkdir gdir/rmdir && rmdir gdir/rmdir
mv host-rename-src.txt gdir/from-host
rm host-delete.txt
echo "GUEST_OPS new=$(cat gdir/new) link=$(readlink gdir/link) via=$(cat gdir/link) mode=$(stat -c %a gdir/mode) trunc=$(cat gdir/trunc) size=$(stat -c %s gdir/trunc) gone=$(ls gdir/gone 2>/dev/null | wc -l) dirs=$(ls -d gdir/sub gdir/rmdir 2>/dev/null | tr '\n' ',')"
t() { echo "T_$1 $(cut -d' ' -f1 /proc/uptime)"; }
t big_start
echo "BIG_HOST $(sha256sum big-host.bin | cut -d' ' -f1)"
cp big-host.bin /tmp/big-copy && echo "BIG_HOST_COPY $(sha256sum /tmp/big-copy | cut -d' ' -f1)"
rm -f /tmp/big-copy
t big_read
dd if=/dev/urandom of=/tmp/big-guest bs=1048576 count=64 2>/dev/null
echo "BIG_GUEST $(sha256sum /tmp/big-guest | cut -d' ' -f1)"
t big_write_start
cp /tmp/big-guest big-guest.bin && sync
t big_write
rm -f /tmp/big-guest
echo 3 > /proc/sys/vm/drop_caches
echo "BIG_GUEST_READBACK $(sha256sum big-guest.bin | cut -d' ' -f1) $(stat -c %s big-guest.bin)"
t many_start
mkdir many
i=0
while [ $i -lt ${MANY} ]; do : > many/f$i || break; i=$((i+1)); done
echo "MANY_CREATED $i"
echo "MANY_LISTED $(ls many | wc -l)"
t many
echo "SYNC_GUEST_READY"
n=0
while [ ! -e live-from-host.txt ] && [ $n -lt 300 ]; do sleep 0.1; n=$((n+1)); done
echo "LIVE $(cat live-from-host.txt 2>&1)"
sleep 1.5
echo "HOST_TXT_AFTER $(cat host.txt)"
echo "DONE"
`;

// Boot 2, against a new daemon: what boot 1 left is still there, and the share still writes.
const SCRIPT_SECOND = String.raw`
cd "$VFS_MNT" || exit 90
echo "B2_GUEST_TXT $(cat guest.txt)"
echo "B2_NEW $(cat gdir/new)"
echo "B2_MANY $(ls many | wc -l)"
echo "B2_BIG $(sha256sum big-guest.bin | cut -d' ' -f1)"
echo "second boot" > second.txt
echo "DONE"
`;

interface HostLive {
  guestTxtWhileMounted?: string;
  /** The backend's processes while it serves the guest. */
  procs?: ProcessView[];
  error?: string;
}

async function runMode(t: ExecutionContext, mode: SandboxMode): Promise<void> {
  t.timeout(600_000);
  // Missing QEMU or kernel must fail the test, not skip it.
  findQemu();
  findKernel();
  const work = fs.mkdtempSync(path.join(os.tmpdir(), `vfs-e2e-${mode}-`));
  const share = path.join(work, 'share');
  fs.mkdirSync(share);
  const backends: Backend[] = [];
  t.teardown(async () => {
    for (const b of backends) await b.stop();
    fs.rmSync(work, { recursive: true, force: true });
  });
  const bigHostSum = prepareShare(share);

  // Boot 1: every check.
  const sock1 = path.join(work, 'vfs1.sock');
  const d1 = await startBackend({ kind: KIND, sharedDir: share, socketPath: sock1, sandbox: mode });
  backends.push(d1);
  t.log(`backend: ${d1.command.join(' ')}`);
  const live: HostLive = {};
  const r1 = await bootGuest({
    socketPath: sock1,
    script: SCRIPT_MAIN,
    queueSize: 1024,
    backendExited: d1.exited,
    backendOutput: d1.output,
    timeoutMs: 420_000,
    onLine(line) {
      if (line !== 'SYNC_GUEST_READY') return;
      try {
        live.procs = inspectBackend(d1.pid);
        live.guestTxtWhileMounted = fs.readFileSync(path.join(share, 'guest.txt'), 'utf8');
        fs.writeFileSync(path.join(share, 'host.txt'), 'rewritten by the host while mounted\n');
        fs.writeFileSync(path.join(share, 'live-from-host.txt'), 'written by the host while mounted\n');
      } catch (e) {
        live.error = String(e);
      }
    },
  });
  t.log(`${KIND} --sandbox ${mode}: boot 1 share mounted after ${r1.bootMs} ms, total ${r1.totalMs} ms`);
  const k = keyed(r1.lines);
  const span = (a: string, b: string) => (Number(k.get(`T_${b}`)) - Number(k.get(`T_${a}`))).toFixed(1);
  t.log(`guest time: read 64 MiB twice ${span('big_start', 'big_read')} s, write 64 MiB ${span('big_write_start', 'big_write')} s, create+list ${MANY} files ${span('many_start', 'many')} s`);
  t.is(r1.rc, 0, r1.console);
  t.is(r1.qemuExit, 0);
  t.is(k.get('DONE'), '', `guest script did not finish:\n${r1.lines.join('\n')}`);

  // Host writes seen in the guest.
  t.is(k.get('HOST_TXT'), 'written by the host');
  t.is(k.get('HOSTDIR'), 'a,b,');
  t.is(k.get('HOSTLINK'), 'hostdir/a A');
  t.is(k.get('HOSTMODE'), '751');
  t.is(k.get('HOSTMANY'), String(MANY));
  t.is(k.get('LIVE'), 'written by the host while mounted');
  t.is(k.get('HOST_TXT_AFTER'), 'rewritten by the host while mounted');

  // The sandbox was in force while serving: the serving process's root is the share, and it
  // runs under seccomp with no_new_privs (unless the run deliberately turned seccomp off).
  t.is(live.error, undefined);
  const procs = live.procs ?? [];
  const described = procs.map((p) => `pid ${p.pid} root ${p.root} Seccomp ${p.seccomp} NoNewPrivs ${p.noNewPrivs}`).join('; ');
  const seccompOn = !/--seccomp[= ]none/.test(process.env.VFS_E2E_LAUNCHER_ARGS ?? '');
  const confined = (p: ProcessView) => p.seccomp === 2 && p.noNewPrivs === 1;
  if (mode === 'none') {
    t.true(procs.length > 0 && procs.every((p) => p.root === dirId('/')), `a --sandbox none backend changed its root: ${described}`);
    if (seccompOn) t.true(procs.some(confined), `no backend process under seccomp with no_new_privs: ${described}`);
  } else {
    const serving = procs.filter((p) => p.root === dirId(share));
    t.true(serving.length > 0, `no backend process has the share (${dirId(share)}) as its root: ${described}`);
    // A waiting parent inside the namespace (unshare, virtiofsd's own parent) shares the root unconfined.
    if (seccompOn) t.true(serving.some(confined), `no process with the share as its root is under seccomp with no_new_privs: ${described}`);
  }

  // Guest writes seen on the host, while mounted and after.
  t.is(live.guestTxtWhileMounted, 'written by the guest\n');
  t.is(fs.readFileSync(path.join(share, 'guest.txt'), 'utf8'), 'written by the guest\n');
  t.is(k.get('GUEST_OPS'), 'new=rename-me link=../host.txt via=written by the host mode=604 trunc=0123 size=4 gone=0 dirs=gdir/sub,');
  t.true(fs.statSync(path.join(share, 'gdir/sub')).isDirectory());
  t.false(fs.existsSync(path.join(share, 'gdir/rmdir')));
  t.false(fs.existsSync(path.join(share, 'gdir/old')));
  t.is(fs.readFileSync(path.join(share, 'gdir/new'), 'utf8'), 'rename-me\n');
  t.false(fs.existsSync(path.join(share, 'gdir/gone')));
  t.is(fs.readlinkSync(path.join(share, 'gdir/link')), '../host.txt');
  t.is(fs.statSync(path.join(share, 'gdir/mode')).mode & 0o7777, 0o604);
  t.is(fs.readFileSync(path.join(share, 'gdir/trunc'), 'utf8'), '0123');
  t.false(fs.existsSync(path.join(share, 'host-rename-src.txt')));
  t.is(fs.readFileSync(path.join(share, 'gdir/from-host'), 'utf8'), 'renamed by the guest\n');
  t.false(fs.existsSync(path.join(share, 'host-delete.txt')));

  // 64 MiB both ways.
  t.is(k.get('BIG_HOST'), bigHostSum);
  t.is(k.get('BIG_HOST_COPY'), bigHostSum);
  const bigGuest = path.join(share, 'big-guest.bin');
  t.is(fs.statSync(bigGuest).size, BIG);
  const bigGuestSum = sha256File(bigGuest);
  t.is(k.get('BIG_GUEST'), bigGuestSum);
  t.is(k.get('BIG_GUEST_READBACK'), `${bigGuestSum} ${BIG}`);

  // 2,000 files created by the guest, listed on both sides.
  t.is(k.get('MANY_CREATED'), String(MANY));
  t.is(k.get('MANY_LISTED'), String(MANY));
  t.is(fs.readdirSync(path.join(share, 'many')).length, MANY);

  // The daemon exits 0 once QEMU has gone.
  const e1 = await d1.waitExit(15_000);
  t.deepEqual(e1, { code: 0, signal: null }, `daemon did not exit 0 after QEMU disconnected:\n${d1.output()}`);

  // Boot 2 against a freshly started daemon.
  const sock2 = path.join(work, 'vfs2.sock');
  const d2 = await startBackend({ kind: KIND, sharedDir: share, socketPath: sock2, sandbox: mode });
  backends.push(d2);
  const r2 = await bootGuest({
    socketPath: sock2, script: SCRIPT_SECOND, queueSize: 1024, timeoutMs: 180_000, backendExited: d2.exited, backendOutput: d2.output,
  });
  t.log(`${KIND} --sandbox ${mode}: boot 2 share mounted after ${r2.bootMs} ms, total ${r2.totalMs} ms`);
  const k2 = keyed(r2.lines);
  t.is(r2.rc, 0, r2.console);
  t.is(k2.get('DONE'), '', `second guest script did not finish:\n${r2.lines.join('\n')}`);
  t.is(k2.get('B2_GUEST_TXT'), 'written by the guest');
  t.is(k2.get('B2_NEW'), 'rename-me');
  t.is(k2.get('B2_MANY'), String(MANY));
  t.is(k2.get('B2_BIG'), bigGuestSum);
  t.is(fs.readFileSync(path.join(share, 'second.txt'), 'utf8'), 'second boot\n');
  const e2 = await d2.waitExit(15_000);
  t.deepEqual(e2, { code: 0, signal: null }, `daemon did not exit 0 after the second QEMU disconnected:\n${d2.output()}`);
}

for (const mode of ['namespace', 'chroot', 'none'] as const) {
  test.serial(`QEMU guest on virtio-fs (${KIND} daemon, --sandbox ${mode}): file operations, 64 MiB both ways, 2,000 files, second boot`, (t) => runMode(t, mode));
}
