// The real daemon (src/daemon/main.ts) under vfs-launch, sandboxed, checked from outside
// and used: through the vhost-user test frontend (root and unprivileged) and through a
// FUSE mount the launcher makes in the host namespace. Host paths stay unreachable
// (".." of the root, a marker beside the share), ownership is mapped, every thread of the
// daemon has no_new_privs, and the device thread dropped to the kept set like the main one.
import test from 'ava';
import type { ExecutionContext } from 'ava';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { VirtioFsFrontend } from './frontend/virtio-fs.js';
import { FuseClient, FuseError } from './frontend/fuse-client.js';
import { ROOT_ID } from './frontend/fuse-requests.js';
import { listenUnix } from '../src/sys/socket-calls.js';
import { DAEMON, NO_CAPS, ensureUser, expectedCaps, mountsOf, nsOf, procStatus, startLauncher, stopLauncher, waitSandboxed } from './sandbox-helpers.js';
import type { Launched } from './sandbox-helpers.js';

const MARKER = 'outside-marker';

/** The sandboxed daemon always runs under the project's policy with --seccomp kill. */
function seccomp(): { args: string[]; env: Record<string, string>; on: boolean } {
  return { args: ['--seccomp', 'kill'], env: {}, on: true };
}

function setup(t: ExecutionContext, owner?: { uid: number; gid: number }): { parent: string; share: string; sock: string } {
  const parent = fs.mkdtempSync(path.join(os.tmpdir(), 'vfs-sbx-daemon-'));
  t.teardown(() => fs.rmSync(parent, { recursive: true, force: true }));
  const share = path.join(parent, 'share');
  fs.mkdirSync(share);
  fs.writeFileSync(path.join(parent, MARKER), 'must stay unreachable\n');
  fs.writeFileSync(path.join(share, 'file'), 'content\n');
  fs.symlinkSync('/etc/hostname', path.join(share, 'abs-link'));
  const sockDir = path.join(parent, 'sock');
  fs.mkdirSync(sockDir);
  if (owner !== undefined) {
    fs.chmodSync(parent, 0o755);
    for (const p of [share, path.join(share, 'file'), sockDir]) fs.chownSync(p, owner.uid, owner.gid);
  }
  return { parent, share, sock: path.join(sockDir, 'vfs.sock') };
}

async function waitDaemon(l: Launched, ready: (pid: number) => boolean, modcaps?: string): Promise<number> {
  const sc = seccomp();
  return waitSandboxed(l, expectedCaps(modcaps), 150_000, DAEMON, (pid) => ready(pid) && (!sc.on || procStatus(pid).Seccomp === '2'));
}

function checkThreads(t: ExecutionContext, pid: number): void {
  const caps = expectedCaps();
  let dropped = 0;
  for (const task of fs.readdirSync(`/proc/${pid}/task`)) {
    const st = procStatus(pid, Number(task));
    t.is(st.NoNewPrivs, '1', `thread ${task}`);
    if (seccomp().on) t.is(st.Seccomp, '2', `thread ${task} filtered`);
    if (st.CapEff === caps && st.CapBnd === NO_CAPS) dropped++;
  }
  // capset is per thread: the main thread, which runs the device loop (no worker thread), is
  // at the kept set with an empty bounding set; the threads Node started itself run none of
  // our code and hold at most the bounding set setpriv gave at exec (checked above: NoNewPrivs).
  const main = procStatus(pid);
  t.is(main.CapEff, caps, 'main (device) thread');
  t.is(main.CapBnd, NO_CAPS, 'main (device) thread');
  t.true(dropped >= 1, `threads at the kept set: ${dropped}`);
}

function connect(t: ExecutionContext, sock: string): FuseClient {
  const fe = VirtioFsFrontend.open({ socketPath: sock });
  t.teardown(() => fe.close());
  const c = new FuseClient(fe);
  c.doInit();
  return c;
}

function errnoOf(fn: () => unknown): number | undefined {
  try {
    fn();
    return undefined;
  } catch (err) {
    if (err instanceof FuseError) return err.errno;
    throw err;
  }
}

test.serial('root, namespace: the daemon serves only the share; ".." and host paths are unreachable', async (t) => {
  const { parent, share, sock } = setup(t);
  const sc = seccomp();
  const l = startLauncher(['--shared-dir', share, ...sc.args, '--', '--socket-path', sock], { entry: DAEMON, env: sc.env });
  t.teardown(async () => { await stopLauncher(l); });
  const pid = await waitDaemon(l, () => fs.existsSync(sock));
  const mounts = mountsOf(pid);
  t.is(mounts.length, 1, JSON.stringify(mounts));
  t.is(mounts[0].root, fs.realpathSync(share));
  t.true(mounts[0].options.includes('nodev') && mounts[0].options.includes('nosuid'), mounts[0].options.join(','));
  for (const ns of ['mnt', 'pid', 'net', 'ipc', 'uts']) t.not(nsOf(pid, ns), nsOf(process.pid, ns));
  checkThreads(t, pid);

  const c = connect(t, sock);
  const shareIno = BigInt(fs.statSync(share).ino);
  const up = (() => { try { return c.lookup(ROOT_ID, '..'); } catch { return undefined; } })();
  if (up !== undefined) t.is(up.attr.ino, shareIno, '".." of the root is the root');
  t.not(errnoOf(() => c.lookup(up?.nodeid ?? ROOT_ID, MARKER)), undefined, 'the marker beside the share is not found');
  t.is(errnoOf(() => c.lookup(ROOT_ID, 'etc')), os.constants.errno.ENOENT);
  t.is(errnoOf(() => c.lookup(ROOT_ID, 'proc')), os.constants.errno.ENOENT, 'no /proc from the guest side');
  const link = c.lookup(ROOT_ID, 'abs-link');
  t.is(link.attr.mode & 0o170000, 0o120000, 'the absolute symlink is served as a symlink, not followed');
  const made = c.create(ROOT_ID, 'made-by-guest');
  c.release(made.entry.nodeid, made.fh);
  t.is(fs.statSync(path.join(share, 'made-by-guest')).uid, 0);
  t.deepEqual(fs.readdirSync(parent).sort(), [MARKER, 'share', 'sock'].sort(), 'nothing created outside the share');
  t.is((await stopLauncher(l)).code, 0, l.stderr());
});

test.serial('unprivileged, namespace: served attributes and created files map the user to root', async (t) => {
  const { uid, gid } = ensureUser();
  const { share, sock } = setup(t, { uid, gid });
  const sc = seccomp();
  const l = startLauncher(['--shared-dir', share, ...sc.args, '--', '--socket-path', sock], { entry: DAEMON, env: sc.env, uid, gid });
  t.teardown(async () => { await stopLauncher(l); });
  const pid = await waitDaemon(l, () => fs.existsSync(sock));
  t.not(nsOf(pid, 'user'), nsOf(process.pid, 'user'));
  checkThreads(t, pid);
  const c = connect(t, sock);
  t.is(c.lookup(ROOT_ID, 'file').attr.uid, 0, "the user's file is root's in the guest");
  const made = c.create(ROOT_ID, 'made-by-guest');
  c.release(made.entry.nodeid, made.fh);
  t.is(made.entry.attr.uid, 0);
  const st = fs.statSync(path.join(share, 'made-by-guest'));
  t.is(st.uid, uid, 'owned by the user on the host');
  t.is(st.gid, gid);
  t.is((await stopLauncher(l)).code, 0, l.stderr());
});

test.serial('--mountpoint: the launcher mounts in the host namespace, the sandboxed daemon serves it, unmounted at exit', async (t) => {
  const { parent, share } = setup(t);
  const mnt = path.join(parent, 'mnt');
  fs.mkdirSync(mnt);
  t.teardown(() => { try { execFileSync('umount', ['-l', mnt], { stdio: 'ignore' }); } catch { /* not mounted */ } });
  const sc = seccomp();
  const l = startLauncher(['--shared-dir', share, '--mountpoint', mnt, ...sc.args], { entry: DAEMON, env: sc.env });
  t.teardown(async () => { await stopLauncher(l); });
  const isMounted = (): boolean => fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').some((line) => line.split(' ')[4] === mnt);
  const pid = await waitDaemon(l, () => isMounted());
  t.is(mountsOf(pid).length, 1, 'the daemon itself sees only the share');
  t.deepEqual(fs.readdirSync(mnt).sort(), ['abs-link', 'file']);
  fs.writeFileSync(path.join(mnt, 'through-mount'), 'x');
  t.is(fs.readFileSync(path.join(share, 'through-mount'), 'utf8'), 'x');
  t.is((await stopLauncher(l)).code, 0, l.stderr());
  t.false(isMounted(), 'unmounted after the daemon exits');
});

test.serial('libvirt form: an inherited listening socket (--fd=3, -o source=...) served from the namespace sandbox', async (t) => {
  const { share, sock } = setup(t);
  // Made the way libvirt makes it: bound and listening before the launcher starts.
  const fd = listenUnix(sock);
  t.teardown(() => fs.closeSync(fd));
  const sc = seccomp();
  const l = startLauncher(['--fd=3', '-o', `source=${share},cache=auto,sandbox=namespace,no_xattr`, '--thread-pool-size=4', ...sc.args], { entry: DAEMON, env: sc.env, fd3: fd });
  t.teardown(async () => { await stopLauncher(l); });
  const pid = await waitDaemon(l, () => true);
  t.is(mountsOf(pid).length, 1);
  const c = connect(t, sock);
  t.is(c.lookup(ROOT_ID, 'file').attr.size, 8n);
  t.is((await stopLauncher(l)).code, 0, l.stderr());
});

test.serial('root, chroot: the real daemon serves from its chroot', async (t) => {
  const { share, sock } = setup(t);
  const sc = seccomp();
  const l = startLauncher(['--shared-dir', share, '--sandbox', 'chroot', ...sc.args, '--', '--socket-path', sock], { entry: DAEMON, env: sc.env });
  t.teardown(async () => { await stopLauncher(l); });
  const pid = await waitDaemon(l, () => fs.existsSync(sock));
  t.is(fs.statSync(`/proc/${pid}/root`).ino, fs.statSync(share).ino);
  checkThreads(t, pid);
  const c = connect(t, sock);
  t.is(errnoOf(() => c.lookup(ROOT_ID, MARKER)), os.constants.errno.ENOENT);
  const made = c.create(ROOT_ID, 'made-in-chroot');
  c.release(made.entry.nodeid, made.fh);
  t.true(fs.existsSync(path.join(share, 'made-in-chroot')));
  t.is((await stopLauncher(l)).code, 0, l.stderr());
});

test.serial('root, namespace: SIGTERM to what vfs-launch became, at any point of the daemon\'s start-up, stops it with exit 0', async (t) => {
  // The daemon is pid 1 of its pid namespace, which drops a signal it has no handler for
  // yet: the waiter must send it again once the daemon's handlers exist.
  for (const delayMs of [0, 20, 50, 100, 200, 400]) {
    const { share, sock } = setup(t);
    const sc = seccomp();
    const l = startLauncher(['--shared-dir', share, ...sc.args, '--', '--socket-path', sock], { entry: DAEMON, env: sc.env });
    t.teardown(async () => { await stopLauncher(l); });
    // From when vfs-launch has exec'd into the waiter (before, a SIGTERM ends the Node launcher itself).
    const comm = (): string => { try { return fs.readFileSync(`/proc/${l.proc.pid}/comm`, 'utf8').trim(); } catch { return ''; } };
    while (comm() !== 'sh') await new Promise((r) => setTimeout(r, 1));
    await new Promise((r) => setTimeout(r, delayMs));
    l.proc.kill('SIGTERM');
    const timer = setTimeout(() => l.proc.kill('SIGKILL'), 20_000);
    const end = await l.exited;
    clearTimeout(timer);
    t.is(end.code, 0, `SIGTERM ${delayMs} ms after listening: ${end.signal ?? ''} ${l.stderr()}`);
  }
});
