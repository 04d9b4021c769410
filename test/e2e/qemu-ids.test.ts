// End to end in a QEMU guest (TCG) on virtio-fs, against the daemon as users run it
// (vfs-launch, --sandbox namespace, --seccomp kill): --translate-uid/--translate-gid (what
// the guest's stat shows, what the host gets from the guest's creates and chowns,
// forbid-guest refused) and submounts (a tmpfs mounted inside the share is its own file
// system in the guest by default, with its own st_dev and a submount in /proc/mounts; with
// --no-announce-submounts the guest sees one file system). CREATE_SUPP_GROUP cannot be
// shown here: the guest boots Debian 12's 6.1 kernel, whose FUSE (7.38) predates it (the
// local-mount test, test/mount-ids.test.ts, covers it on the host's kernel).
import test from 'ava';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { bootGuest, findKernel, findQemu, keyed } from './guest.js';
import { startBackend, type Backend } from './backend.js';
import { mount, umount2, MNT_DETACH } from '../../src/sys/mount-calls.js';

const TRANSLATE = [
  '--translate-uid', 'guest:2000:1000:10', '--translate-uid', 'host:1000:2000:10',
  '--translate-uid', 'forbid-guest:4000:10', '--translate-gid', 'map:2000:1000:10',
];

const SCRIPT = String.raw`
cd "$VFS_MNT" || exit 90
for u in 2001 4001; do echo "u$u:x:$u:$u::/:/bin/sh" >> /etc/passwd; echo "g$u:x:$u:" >> /etc/group; done
echo "HOSTFILE $(stat -c '%u:%g' host-1003)"
echo "UNMAPPED $(stat -c '%u:%g' host-5000)"
su u2001 -s /bin/sh -c 'touch open/by-2001; echo "CREATE_RC $?"'
echo "CREATED $(stat -c '%u:%g' open/by-2001)"
su u4001 -s /bin/sh -c 'touch open/by-4001 2>&1; echo "FORBID_RC $?"' | tr '\n' ' ' | sed 's/^/FORBID /'; echo
chown 2005:2006 host-5000; echo "CHOWN_RC $?"
chown 4002 host-1003 2>/dev/null; echo "CHOWN_FORBID_RC $?"
echo "SUBFILE $(cat sub/in-tmpfs)"
echo "DEV_ROOT $(stat -c %d .)"
echo "DEV_SUB $(stat -c %d sub/)"
echo "SUBMOUNTS $(grep -c " $VFS_MNT/sub " /proc/mounts)"
echo "DONE"
`;

interface Run { k: Map<string, string>; share: string; backend: Backend }

async function boot(t: Parameters<Parameters<typeof test>[1]>[0], daemonArgs: string[]): Promise<Run> {
  t.timeout(15 * 60_000);
  findQemu();
  findKernel();
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'vfs-e2e-ids-'));
  const share = path.join(work, 'share');
  fs.mkdirSync(path.join(share, 'open'), { recursive: true });
  fs.chmodSync(path.join(share, 'open'), 0o777);
  for (const [name, uid, gid] of [['host-1003', 1003, 1004], ['host-5000', 5000, 5000]] as const) {
    fs.writeFileSync(path.join(share, name), 'x');
    fs.chownSync(path.join(share, name), uid, gid);
  }
  const sub = path.join(share, 'sub');
  fs.mkdirSync(sub);
  mount('tmpfs', sub, 'tmpfs', 0, 'size=1m');
  fs.writeFileSync(path.join(sub, 'in-tmpfs'), 'tmpfs file');
  const backends: Backend[] = [];
  t.teardown(async () => {
    for (const x of backends) await x.stop();
    umount2(sub, MNT_DETACH);
    fs.rmSync(work, { recursive: true, force: true });
  });
  const sock = path.join(work, 'vfs.sock');
  const b = await startBackend({ kind: 'ours', sharedDir: share, socketPath: sock, sandbox: 'namespace', daemonArgs });
  backends.push(b);
  const r = await bootGuest({ socketPath: sock, script: SCRIPT, timeoutMs: 12 * 60_000, backendExited: b.exited, backendOutput: b.output });
  const k = keyed(r.lines);
  t.is(k.get('DONE'), '', `guest script did not finish:\n${r.lines.join('\n')}\n${b.output()}`);
  return { k, share, backend: b };
}

const owner = (p: string): string => {
  const st = fs.lstatSync(p);
  return `${st.uid}:${st.gid}`;
};

test.serial('QEMU guest: --translate-uid/gid end to end, submounts announced by default', async (t) => {
  const { k, share, backend } = await boot(t, TRANSLATE);
  t.is(k.get('HOSTFILE'), '2003:2004', 'host 1003:1004 seen as guest 2003:2004');
  t.is(k.get('UNMAPPED'), '5000:5000');
  t.is(k.get('CREATE_RC'), '0');
  t.is(k.get('CREATED'), '2001:2001');
  t.is(owner(path.join(share, 'open/by-2001')), '1001:1001', 'guest 2001 lands as host 1001');
  t.regex(k.get('FORBID') ?? '', /Operation not permitted.*FORBID_RC 1/);
  t.false(fs.existsSync(path.join(share, 'open/by-4001')));
  t.is(k.get('CHOWN_RC'), '0');
  t.is(owner(path.join(share, 'host-5000')), '1005:1006', 'chown 2005:2006 in the guest is 1005:1006 on the host');
  t.is(k.get('CHOWN_FORBID_RC'), '1');
  t.is(owner(path.join(share, 'host-1003')), '1003:1004');
  t.is(k.get('SUBFILE'), 'tmpfs file');
  t.not(k.get('DEV_SUB'), k.get('DEV_ROOT'), 'the tmpfs inside the share has its own st_dev in the guest');
  t.is(k.get('SUBMOUNTS'), '1', 'and is a submount in the guest\'s /proc/mounts');
  t.deepEqual(await backend.waitExit(15_000), { code: 0, signal: null }, backend.output());
});

test.serial('QEMU guest: --no-announce-submounts keeps the share one file system in the guest', async (t) => {
  const { k, backend } = await boot(t, ['--no-announce-submounts']);
  t.is(k.get('SUBFILE'), 'tmpfs file');
  t.is(k.get('DEV_SUB'), k.get('DEV_ROOT'));
  t.is(k.get('SUBMOUNTS'), '0');
  t.deepEqual(await backend.waitExit(15_000), { code: 0, signal: null }, backend.output());
});
