// End to end, in a QEMU guest (TCG) on virtio-fs, the two guest behaviours that once took
// the share down, against the daemon as users run it (vfs-launch, --seccomp kill): a setuid
// file truncated by its non-root owner (the guest kernel clears setuid in the same SETATTR,
// on the open handle), and 100,000 files listed with ls -lR twice under RLIMIT_NOFILE 4096
// (far fewer fds than inodes the guest remembers). One boot per sandbox mode; the host
// samples the daemon's fds and memory while the guest lists, and logs them.
import test from 'ava';
import type { ExecutionContext } from 'ava';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { bootGuest, findKernel, findQemu, keyed } from './guest.js';
import { processTree, startBackend, type Backend, type SandboxMode } from './backend.js';

const DIRS = 100;
const PER_DIR = 1000;
const FILES = DIRS * PER_DIR;
const LIMIT = 4096;

const SCRIPT = String.raw`
cd "$VFS_MNT" || exit 90
echo 'u1000:x:1000:1000::/:/bin/sh' >> /etc/passwd
echo 'g1000:x:1000:' >> /etc/group
su u1000 -s /bin/sh -c 'truncate -s 2 suid; echo "TRUNC_RC $?"'
echo "SUID_AFTER $(stat -c '%a %s' suid)"
echo "SYNC_LIST_START"
echo "LS1 $(ls -lR tree | grep -c '^-')"
echo "LS2 $(ls -lR tree | grep -c '^-')"
echo "FIND $(find tree -type f | wc -l)"
echo "SYNC_LIST_END"
# The host writes after.txt when it reads the line above off the console, which can be after
# the next command here: wait for it (up to 60 s; a negative entry may be cached for 1 s).
n=0; while [ ! -f after.txt ] && [ $n -lt 600 ]; do sleep 0.1; n=$((n + 1)); done
echo "AFTER $(cat after.txt)"
echo "DONE"
`;

interface Sample { fds: number; rssKiB: number; privateKiB: number }

/** fds, RSS and private memory summed over the backend's process tree. */
function sample(b: Backend): Sample {
  let fds = 0;
  let rssKiB = 0;
  let privateKiB = 0;
  for (const pid of processTree(b.pid)) {
    try {
      fds = Math.max(fds, fs.readdirSync(`/proc/${pid}/fd`).length);
      const r = fs.readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8');
      const kb = (k: string): number => Number(new RegExp(`^${k}:\\s+(\\d+)`, 'm').exec(r)?.[1] ?? 0);
      rssKiB += kb('Rss');
      privateKiB += kb('Private_Clean') + kb('Private_Dirty');
    } catch { /* a process that just exited */ }
  }
  return { fds, rssKiB, privateKiB };
}

async function runMode(t: ExecutionContext, mode: SandboxMode): Promise<void> {
  t.timeout(20 * 60_000);
  findQemu();
  findKernel();
  const work = fs.mkdtempSync(path.join(os.tmpdir(), `vfs-e2e-robust-${mode}-`));
  const share = path.join(work, 'share');
  fs.mkdirSync(share);
  const backends: Backend[] = [];
  t.teardown(async () => {
    for (const x of backends) await x.stop();
    fs.rmSync(work, { recursive: true, force: true });
  });
  const suid = path.join(share, 'suid');
  fs.writeFileSync(suid, 'some bytes');
  fs.chownSync(suid, 1000, 1000);
  fs.chmodSync(suid, 0o4755);
  for (let d = 0; d < DIRS; d++) {
    const dir = path.join(share, 'tree', `d${d}`);
    fs.mkdirSync(dir, { recursive: true });
    for (let i = 0; i < PER_DIR; i++) fs.closeSync(fs.openSync(path.join(dir, `f${i}`), 'w'));
  }
  const sock = path.join(work, 'vfs.sock');
  const b = await startBackend({ kind: 'ours', sharedDir: share, socketPath: sock, sandbox: mode, daemonArgs: ['--rlimit-nofile', String(LIMIT)] });
  backends.push(b);
  let peak: Sample = { fds: 0, rssKiB: 0, privateKiB: 0 };
  let timer: NodeJS.Timeout | undefined;
  let listStarted = 0;
  let listMs = 0;
  const r = await bootGuest({
    socketPath: sock, script: SCRIPT, queueSize: 1024, memMiB: 1024, timeoutMs: 18 * 60_000,
    backendExited: b.exited, backendOutput: b.output,
    onLine(line) {
      if (line === 'SYNC_LIST_START') {
        listStarted = Date.now();
        timer = setInterval(() => {
          const s = sample(b);
          peak = { fds: Math.max(peak.fds, s.fds), rssKiB: Math.max(peak.rssKiB, s.rssKiB), privateKiB: Math.max(peak.privateKiB, s.privateKiB) };
        }, 200);
      } else if (line === 'SYNC_LIST_END') {
        clearInterval(timer);
        listMs = Date.now() - listStarted;
        fs.writeFileSync(path.join(share, 'after.txt'), 'still served\n');
      }
    },
  });
  clearInterval(timer);
  const k = keyed(r.lines);
  t.log(`--sandbox ${mode}, ${FILES} files, RLIMIT_NOFILE ${LIMIT}: ls -lR x2 + find in the guest ${(listMs / 1000).toFixed(1)} s; ` +
    `daemon fds peak ${peak.fds}, RSS peak ${(peak.rssKiB / 1024).toFixed(1)} MiB, private peak ${(peak.privateKiB / 1024).toFixed(1)} MiB (summed over the process tree)`);
  t.is(r.rc, 0, r.console);
  t.is(k.get('DONE'), '', `guest script did not finish:\n${r.lines.join('\n')}\n${b.output()}`);
  t.is(k.get('TRUNC_RC'), '0');
  t.is(k.get('SUID_AFTER'), '755 2', 'setuid cleared, size 2, seen in the guest');
  t.is(fs.statSync(suid).mode & 0o7777, 0o755);
  t.is(k.get('LS1'), String(FILES));
  t.is(k.get('LS2'), String(FILES));
  t.is(k.get('FIND'), String(FILES));
  t.is(k.get('AFTER'), 'still served');
  t.true(peak.fds > 0 && peak.fds < LIMIT, `daemon fds peaked at ${peak.fds}`);
  t.notRegex(b.output(), /SIGSYS|Too many open files|EMFILE/);
  const e = await b.waitExit(15_000);
  t.deepEqual(e, { code: 0, signal: null }, b.output());
}

for (const mode of ['namespace', 'chroot', 'none'] as const) {
  test.serial(`QEMU guest (--sandbox ${mode}, --seccomp kill): setuid truncate by its owner, ls -lR of ${FILES} files twice under RLIMIT_NOFILE ${LIMIT}`, (t) => runMode(t, mode));
}
