// Live migration of a running guest with a virtio-fs mount, between two vfs daemons (each
// spawned by vfs-launch --sandbox namespace --seccomp kill) on one shared directory, with
// the Debian 13 QEMU (migration-guest.ts). The guest holds a file open read-write, caches
// many inodes, then says MIGRATE-NOW and polls for a file the host creates once the
// migration is over; after it, the guest (now on the destination) writes through the held
// fd, reads the cached files and creates new ones, and the host checks the directory.
// Negative case: the held file is renamed on the host before the migration and the source
// does not confirm paths: with --migration-on-error=guest-error the guest gets an error for
// that file alone; with abort QEMU reports the migration failed and the source guest runs on.
import test from 'ava';
import type { ExecutionContext } from 'ava';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startBackend, type Backend } from './backend.js';
import { guestImages, migrate, scriptLines, startQemu, trixieQemu, workDir, type Qemu } from './migration-guest.js';

const MANY = 200;

const SCRIPT = `
cd "$VFS_MNT" || exit 9
exec 3<>held.txt
i=0; n=0
while [ $i -lt ${MANY} ]; do [ "$(cat many/f$i)" = "$i" ] && n=$((n+1)); i=$((i+1)); done
echo CACHED $n
echo MIGRATE-NOW
w=0
while [ ! -e go ]; do sleep 0.2; w=$((w+1)); [ $w -gt 1500 ] && echo NO-GO && exit 3; done
echo "after migration" >&3 && echo HELD-WRITE ok || echo HELD-WRITE failed
i=0; n=0
while [ $i -lt ${MANY} ]; do [ "$(cat many/f$i)" = "$i" ] && n=$((n+1)); i=$((i+1)); done
echo REREAD $n
echo "new on $(cat go)" > created.txt && echo CREATE ok || echo CREATE failed
mkdir newdir && echo x > newdir/y && echo MKDIR ok
echo DONE
`;

function prepare(dir: string): void {
  fs.writeFileSync(path.join(dir, 'held.txt'), 'held: ');
  fs.mkdirSync(path.join(dir, 'many'));
  for (let i = 0; i < MANY; i++) fs.writeFileSync(path.join(dir, `many/f${i}`), String(i));
}

interface Run {
  src: Qemu;
  dst: Qemu;
  srcDaemon: Backend;
  dstDaemon: Backend;
  share: string;
  result: { status: string; info: Record<string, unknown> };
  migrateMs: number;
}

async function run(t: ExecutionContext, srcArgs: string[], dstArgs: string[], beforeMigrate?: (share: string) => void): Promise<Run> {
  t.log(trixieQemu());
  const share = fs.mkdtempSync(path.join(os.tmpdir(), 'vfs-migr-share-'));
  t.teardown(() => fs.rmSync(share, { recursive: true, force: true }));
  prepare(share);
  const work = workDir(t.title.replace(/[^a-z0-9]+/gi, '-').slice(0, 40));
  t.teardown(() => fs.rmSync(work.host, { recursive: true, force: true }));
  const img = guestImages(work, SCRIPT);
  const common = ['--log-level', 'info'];
  const srcDaemon = await startBackend({ kind: 'ours', sharedDir: share, socketPath: path.join(work.host, 'src.sock'), sandbox: 'namespace', daemonArgs: [...common, ...srcArgs] });
  t.teardown(() => void srcDaemon.stop());
  const dstDaemon = await startBackend({ kind: 'ours', sharedDir: share, socketPath: path.join(work.host, 'dst.sock'), sandbox: 'namespace', daemonArgs: [...common, ...dstArgs] });
  t.teardown(() => void dstDaemon.stop());
  const dst = await startQemu(work, 'dst', { socket: `${work.inner}/dst.sock`, kernel: img.kernel, initrd: img.initrd, incoming: 'defer' });
  t.teardown(() => dst.kill());
  await dst.qmp('migrate-set-capabilities', { capabilities: [{ capability: 'return-path', state: true }] });
  const inc = await dst.qmp('migrate-incoming', { uri: `unix:${work.inner}/mig.sock` });
  t.false('error' in inc, JSON.stringify(inc));
  const src = await startQemu(work, 'src', { socket: `${work.inner}/src.sock`, kernel: img.kernel, initrd: img.initrd });
  t.teardown(() => src.kill());
  await src.waitLine(/^MIGRATE-NOW$/, 180_000);
  beforeMigrate?.(share);
  const start = Date.now();
  const result = await migrate(src, `unix:${work.inner}/mig.sock`);
  const migrateMs = Date.now() - start;
  t.log(`migration ${result.status} in ${migrateMs} ms (downtime ${String(result.info.downtime)} ms, total ${String(result.info['total-time'])} ms)`);
  return { src, dst, srcDaemon, dstDaemon, share, result, migrateMs };
}

function daemonLog(r: Run): string {
  return `--- source daemon ---\n${r.srcDaemon.output().slice(-3000)}\n--- destination daemon ---\n${r.dstDaemon.output().slice(-3000)}`;
}

async function finish(t: ExecutionContext, r: Run, on: Qemu): Promise<string[]> {
  fs.writeFileSync(path.join(r.share, 'go'), on === r.dst ? 'destination' : 'source');
  try {
    await on.waitLine(/^VFS-GUEST-END rc=/, 180_000);
  } catch (err) {
    t.log(daemonLog(r));
    throw err;
  }
  const { lines, rc } = scriptLines(r.src.lines, r.dst.lines);
  t.is(rc, 0, lines.join('\n'));
  return lines;
}

async function positive(t: ExecutionContext, args: string[]): Promise<void> {
  const r = await run(t, args, args);
  t.is(r.result.status, 'completed', daemonLog(r));
  const lines = await finish(t, r, r.dst);
  t.true(lines.includes(`CACHED ${MANY}`));
  t.true(lines.includes('HELD-WRITE ok'), lines.join('\n'));
  t.true(lines.includes(`REREAD ${MANY}`), lines.join('\n'));
  t.true(lines.includes('CREATE ok') && lines.includes('MKDIR ok') && lines.includes('DONE'), lines.join('\n'));
  t.is(fs.readFileSync(path.join(r.share, 'held.txt'), 'utf8'), 'after migration\n');
  t.is(fs.readFileSync(path.join(r.share, 'created.txt'), 'utf8'), 'new on destination\n');
  t.is(fs.readFileSync(path.join(r.share, 'newdir/y'), 'utf8'), 'x\n');
  // The destination, not the source, served the guest after switch-over (held.txt, many/ and its files).
  t.regex(r.srcDaemon.output(), /migration: sent \d+ bytes of state/);
  t.regex(r.dstDaemon.output(), /migration: loaded \d+ bytes of state/);
  t.regex(r.dstDaemon.output(), new RegExp(`restored ${MANY + 2} of ${MANY + 2} inodes`));
}

test.serial('find-paths: a running guest moves to the destination with its open file and cached inodes', async (t) => {
  await positive(t, ['--migration-mode', 'find-paths', '--migration-verify-handles']);
});

test.serial('file-handles: the same, with inodes sent as file handles', async (t) => {
  await positive(t, ['--migration-mode', 'file-handles']);
});

test.serial('guest-error: a file renamed on the host before migration fails alone in the guest', async (t) => {
  const r = await run(t, [], ['--migration-on-error', 'guest-error'], (share) => fs.renameSync(path.join(share, 'held.txt'), path.join(share, 'renamed.txt')));
  t.is(r.result.status, 'completed', daemonLog(r));
  const lines = await finish(t, r, r.dst);
  t.true(lines.includes('HELD-WRITE failed'), lines.join('\n'));
  t.true(lines.includes(`REREAD ${MANY}`) && lines.includes('CREATE ok') && lines.includes('DONE'), lines.join('\n'));
  t.is(fs.readFileSync(path.join(r.share, 'renamed.txt'), 'utf8'), 'held: ');
  t.regex(r.dstDaemon.output(), /migration: inode \d+: "held.txt" in 1: errno 2; the guest gets ESTALE/);
});

test.serial('abort: the destination refuses the state, QEMU reports failure and the source guest runs on', async (t) => {
  const r = await run(t, [], ['--migration-on-error', 'abort'], (share) => fs.renameSync(path.join(share, 'held.txt'), path.join(share, 'renamed.txt')));
  t.is(r.result.status, 'failed', daemonLog(r));
  t.regex(r.dstDaemon.output(), /the state could not be loaded: inode \d+: "held.txt" in 1: errno 2/);
  const lines = await finish(t, r, r.src);
  // On the source the held fd still names the (renamed) file.
  t.true(lines.includes('HELD-WRITE ok'), lines.join('\n'));
  t.is(fs.readFileSync(path.join(r.share, 'renamed.txt'), 'utf8'), 'after migration\n');
  t.is(fs.readFileSync(path.join(r.share, 'created.txt'), 'utf8'), 'new on source\n');
});

test.serial('confirm-paths: the source corrects the renamed file\'s path and the migration succeeds', async (t) => {
  const r = await run(t, ['--migration-confirm-paths'], ['--migration-on-error', 'abort'], (share) => fs.renameSync(path.join(share, 'held.txt'), path.join(share, 'renamed.txt')));
  t.is(r.result.status, 'completed', daemonLog(r));
  const lines = await finish(t, r, r.dst);
  t.true(lines.includes('HELD-WRITE ok'), lines.join('\n'));
  t.is(fs.readFileSync(path.join(r.share, 'renamed.txt'), 'utf8'), 'after migration\n');
});
