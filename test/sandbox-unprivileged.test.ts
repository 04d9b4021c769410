// vfs-launch run by an ordinary user: the daemon starts in its own user namespace (the
// user mapped to root inside), pivots into the share, drops to the kept capabilities of
// that namespace, and what it creates is owned by the user on the host. The user is made
// here (useradd) when missing; the tests run as root in CI.
import test from 'ava';
import type { ExecutionContext } from 'ava';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { userNamespaceBlocker } from '../src/launcher/validate.js';
import { LAUNCHER, NO_CAPS, ensureUser, expectedCaps, mountsOf, nsOf, procStatus, startLauncher, stopLauncher, tempShare, waitSandboxed } from './sandbox-helpers.js';

const who = ensureUser();

function userShare(t: ExecutionContext): { share: string; sockDir: string } {
  const share = tempShare('vfs-sbx-unpriv-');
  const sockDir = fs.mkdtempSync(path.join(os.tmpdir(), 'vfs-sbx-unpriv-sock-'));
  t.teardown(() => {
    fs.rmSync(share, { recursive: true, force: true });
    fs.rmSync(sockDir, { recursive: true, force: true });
  });
  for (const p of [share, path.join(share, 'file'), path.join(share, 'sub'), sockDir]) fs.chownSync(p, who.uid, who.gid);
  fs.lchownSync(path.join(share, 'abs-link'), who.uid, who.gid);
  fs.writeFileSync(path.join(share, 'root-owned'), 'root\n');
  fs.chmodSync(share, 0o755);
  return { share, sockDir };
}

test('this machine lets an ordinary user create user namespaces', (t) => {
  // Reported in the closing note: which sysctl would block it, if any.
  t.is(userNamespaceBlocker(), undefined);
  t.log(`max_user_namespaces=${fs.readFileSync('/proc/sys/user/max_user_namespaces', 'utf8').trim()}, ` +
    `unprivileged_userns_clone=${fs.existsSync('/proc/sys/kernel/unprivileged_userns_clone') ? fs.readFileSync('/proc/sys/kernel/unprivileged_userns_clone', 'utf8').trim() : 'absent'}, ` +
    `apparmor_restrict_unprivileged_userns=${fs.existsSync('/proc/sys/kernel/apparmor_restrict_unprivileged_userns') ? fs.readFileSync('/proc/sys/kernel/apparmor_restrict_unprivileged_userns', 'utf8').trim() : 'absent'}`);
});

test.serial('unprivileged namespace mode: user namespace, pivot, caps of the namespace, ownership mapped', async (t) => {
  const { share, sockDir } = userShare(t);
  const l = startLauncher(['--shared-dir', share, '--seccomp', 'none', '--', '--socket-path', path.join(sockDir, 'vfs.sock')],
    { uid: who.uid, gid: who.gid, env: { VFS_TEST_PROBE_CREATE: 'made-inside' } });
  t.teardown(async () => { await stopLauncher(l); });
  const pid = await waitSandboxed(l, expectedCaps());
  for (const ns of ['user', 'mnt', 'pid', 'net', 'ipc', 'uts']) t.not(nsOf(pid, ns), nsOf(process.pid, ns), ns);
  t.is(fs.readFileSync(`/proc/${pid}/uid_map`, 'utf8').trim().split(/\s+/).join(' '), `0 ${who.uid} 1`);
  t.is(fs.readFileSync(`/proc/${pid}/gid_map`, 'utf8').trim().split(/\s+/).join(' '), `0 ${who.gid} 1`);
  const st = procStatus(pid);
  t.is(st.Uid.split(/\s+/)[0], String(who.uid), 'the host sees the user');
  t.is(st.NoNewPrivs, '1');
  t.is(st.CapEff, expectedCaps());
  t.is(st.CapBnd, NO_CAPS, 'the bounding set is empty');
  const mounts = mountsOf(pid);
  t.is(mounts.length, 1, JSON.stringify(mounts));
  t.is(mounts[0].root, fs.realpathSync(share));
  t.true(mounts[0].options.includes('nodev') && mounts[0].options.includes('nosuid'), mounts[0].options.join(','));
  const seen = JSON.parse(l.stdout().trim().split('\n')[0]) as { uid: number; entryOwners: Record<string, number> };
  t.is(seen.uid, 0, 'root inside the namespace');
  t.is(seen.entryOwners.file, 0, "the user's files are root's inside");
  t.is(seen.entryOwners['root-owned'], 65534, 'unmapped owners show as the overflow uid');
  const made = fs.statSync(path.join(share, 'made-inside'));
  t.is(made.uid, who.uid, 'what root inside creates belongs to the user on the host');
  t.is(made.gid, who.gid);
  t.is((await stopLauncher(l)).code, 0, l.stderr());
});

test.serial('unprivileged with --uid-map/--gid-map of the own ids through newuidmap', async (t) => {
  const { share, sockDir } = userShare(t);
  const l = startLauncher(['--shared-dir', share, '--seccomp', 'none', '--uid-map', `:0:${who.uid}:1:`, '--gid-map', `:0:${who.gid}:1:`, '--', '--socket-path', path.join(sockDir, 'vfs.sock')],
    { uid: who.uid, gid: who.gid });
  t.teardown(async () => { await stopLauncher(l); });
  const pid = await waitSandboxed(l, expectedCaps());
  t.is(fs.readFileSync(`/proc/${pid}/uid_map`, 'utf8').trim().split(/\s+/).join(' '), `0 ${who.uid} 1`);
  t.is((await stopLauncher(l)).code, 0, l.stderr());
});

test('unprivileged: chroot and a foreign uid range are refused before anything starts', async (t) => {
  const { share, sockDir } = userShare(t);
  const run = (args: string[]): { status: number | null; stderr: string } => {
    try {
      execFileSync(process.execPath, [...LAUNCHER.slice(1), ...args], { uid: who.uid, gid: who.gid, stdio: 'pipe', env: { ...process.env, HOME: os.tmpdir() } });
      return { status: 0, stderr: '' };
    } catch (err) {
      const e = err as { status: number | null; stderr: Buffer };
      return { status: e.status, stderr: e.stderr.toString() };
    }
  };
  const sock = path.join(sockDir, 'vfs.sock');
  const chroot = run(['--shared-dir', share, '--sandbox', 'chroot', '--socket-path', sock]);
  t.is(chroot.status, 2);
  t.is(chroot.stderr, 'vfs-launch: --sandbox chroot: needs root; run as root or use --sandbox namespace (a user namespace) when unprivileged\n');
  const foreign = run(['--shared-dir', share, '--uid-map', ':0:12345000:65536:', '--seccomp', 'none', '--socket-path', sock]);
  t.is(foreign.status, 2);
  t.regex(foreign.stderr, /^vfs-launch: --uid-map: \/etc\/subuid grants vfs-sbx-test no range covering 12345000-12410535; add one \(usermod --add-subuids 12345000-12410535 vfs-sbx-test\)/);
  t.false(fs.existsSync(sock));
});
