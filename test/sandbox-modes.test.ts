// The sandbox of each mode, checked from outside the daemon: vfs-launch starts the daemon
// (the sandbox stage of test/sandbox-entry.ts, which is the daemon's), then the test reads
// /proc/PID/{root,mountinfo,ns/*,status,limits,fd} of the process it finds.
import test from 'ava';
import type { ExecutionContext } from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import os from 'node:os';
import { getrlimit, RLIMIT_NOFILE } from '../src/sys/process-calls.js';
import { NO_CAPS, capHex, expectedCaps, mountsOf, nsOf, procStatus, startLauncher, stopLauncher, tempShare, waitSandboxed } from './sandbox-helpers.js';
import type { Launched } from './sandbox-helpers.js';

const NAMESPACES = ['mnt', 'pid', 'net', 'ipc', 'uts'] as const;

function socketDir(t: ExecutionContext): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vfs-sbx-sock-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

async function launch(t: ExecutionContext, mode: string, extra: string[] = [], env?: Record<string, string>): Promise<{ l: Launched; pid: number; share: string }> {
  const share = tempShare('vfs-sbx-share-');
  t.teardown(() => fs.rmSync(share, { recursive: true, force: true }));
  const sock = path.join(socketDir(t), 'vfs.sock');
  const modcaps = extra.find((a) => a.startsWith('--modcaps='))?.slice('--modcaps='.length);
  const l = startLauncher(['--shared-dir', share, '--sandbox', mode, '--seccomp', 'none', ...extra, '--', '--socket-path', sock], { env });
  t.teardown(async () => { await stopLauncher(l); });
  const pid = await waitSandboxed(l, expectedCaps(modcaps));
  return { l, pid, share };
}

function inside(l: Launched): { rootEntries: string[]; hostEtcVisible: boolean; absLinkReadable: boolean; rootFd: number; procSelfFd: number } {
  return JSON.parse(l.stdout().trim().split('\n')[0]) as ReturnType<typeof inside>;
}

function expectedNofile(): string {
  const target = Math.min(1_000_000, Number(fs.readFileSync('/proc/sys/fs/nr_open', 'utf8')));
  const hard = getrlimit(RLIMIT_NOFILE).hard;
  return String(BigInt(target) <= hard ? target : hard);
}

function checkPrivileges(t: ExecutionContext, pid: number, modcaps?: string): void {
  const st = procStatus(pid);
  const caps = expectedCaps(modcaps);
  t.is(st.NoNewPrivs, '1');
  t.is(st.CapEff, caps);
  t.is(st.CapPrm, caps);
  t.is(st.CapBnd, NO_CAPS, 'the bounding set is empty');
  t.is(st.CapInh, '0000000000000000');
  t.is(st.CapAmb, '0000000000000000');
  // Threads Node started on its own before the drop: no_new_privs and a bounding set
  // narrowed before exec (kept set + what the sandbox stage needs), never the full set.
  const setupCaps = BigInt(`0x${caps}`) | BigInt(`0x${capHex(['sys_admin', 'sys_chroot', 'setpcap'])}`);
  for (const task of fs.readdirSync(`/proc/${pid}/task`)) {
    const ts = procStatus(pid, Number(task));
    t.is(ts.NoNewPrivs, '1', `thread ${task}`);
    t.is(BigInt(`0x${ts.CapBnd}`) & ~setupCaps, 0n, `thread ${task} CapBnd ${ts.CapBnd}`);
  }
}

function sameFile(a: string, b: string): boolean {
  const sa = fs.statSync(a);
  const sb = fs.statSync(b);
  return sa.dev === sb.dev && sa.ino === sb.ino;
}

function checkProcSelfFd(t: ExecutionContext, pid: number, l: Launched): void {
  // The kept O_PATH fd of /proc/self/fd lists the daemon's own fds, its root fd among them.
  const { procSelfFd, rootFd } = inside(l);
  t.true(fs.readdirSync(`/proc/${pid}/fd/${procSelfFd}`).includes(String(rootFd)));
}

// Serial: each launch costs a few seconds of CPU (tsx compiles the launcher and the daemon),
// and the suite shares two cores with the other test files.
test.serial('namespace: root is the shared dir, only it is mounted, own namespaces, privileges dropped; SIGTERM: exit 0', async (t) => {
  const { l, pid, share } = await launch(t, 'namespace', [], { VFS_TEST_MKNOD: '1' });
  t.true(sameFile(`/proc/${pid}/root`, share), 'daemon root is the shared dir');
  // CAP_MKNOD is kept (guests make device nodes), but the share is nodev in the sandbox.
  t.is((JSON.parse(l.stdout().trim().split('\n')[0]) as { deviceOpen?: string }).deviceOpen, 'EACCES');
  t.true(fs.lstatSync(path.join(share, 'null-dev')).isCharacterDevice());
  t.deepEqual(fs.readdirSync(`/proc/${pid}/root`).sort(), fs.readdirSync(share).sort());
  const mounts = mountsOf(pid);
  t.is(mounts.length, 1, JSON.stringify(mounts));
  t.is(mounts[0].mountPoint, '/');
  t.is(mounts[0].root, fs.realpathSync(share));
  t.true(mounts[0].options.includes('nodev') && mounts[0].options.includes('nosuid'), mounts[0].options.join(','));
  for (const ns of NAMESPACES) t.not(nsOf(pid, ns), nsOf(process.pid, ns), `${ns} namespace`);
  t.is(nsOf(pid, 'user'), nsOf(process.pid, 'user'), 'root needs no user namespace');
  checkPrivileges(t, pid);
  t.is(fs.readFileSync(`/proc/${pid}/limits`, 'utf8').match(/Max open files\s+(\d+)\s+(\d+)/)?.slice(1).join(' '), `${expectedNofile()} ${expectedNofile()}`);
  const seen = inside(l);
  t.deepEqual(seen.rootEntries, ['abs-link', 'file', 'null-dev', 'sub']);
  t.false(seen.hostEtcVisible);
  t.false(seen.absLinkReadable, 'an absolute symlink resolves inside the share');
  checkProcSelfFd(t, pid, l);
  // The kept fd is confined: ".." from it stays in the fd directory (a detached bind mount),
  // so procfs (/proc/sys, other pids) is out of reach through it.
  const { procSelfFd } = inside(l);
  const up = fs.readdirSync(`/proc/${pid}/fd/${procSelfFd}/../..`);
  t.false(up.includes('sys') || up.includes('self'), up.join(' '));
  t.true(up.includes(String(procSelfFd)));
  const env = fs.readFileSync(`/proc/${pid}/environ`, 'utf8').split('\0');
  t.true(env.includes('UV_USE_IO_URING=0'));
  const end = await stopLauncher(l);
  t.is(end.code, 0, l.stderr());
  t.false(fs.existsSync(`/proc/${pid}`), 'daemon gone');
});

test.serial('chroot: root is the shared dir, host namespaces, privileges dropped; SIGTERM: exit 0', async (t) => {
  const { l, pid, share } = await launch(t, 'chroot');
  t.true(sameFile(`/proc/${pid}/root`, share));
  for (const ns of NAMESPACES) t.is(nsOf(pid, ns), nsOf(process.pid, ns), `${ns}: chroot mode creates no namespace`);
  checkPrivileges(t, pid);
  const seen = inside(l);
  t.deepEqual(seen.rootEntries, ['abs-link', 'file', 'sub']);
  t.false(seen.hostEtcVisible);
  checkProcSelfFd(t, pid, l);
  t.is((await stopLauncher(l)).code, 0, l.stderr());
});

test.serial('none: host root, warning logged, privileges still dropped; SIGHUP forwarded and its death reported', async (t) => {
  const { l, pid } = await launch(t, 'none');
  t.true(sameFile(`/proc/${pid}/root`, '/'));
  t.regex(l.stderr(), /nothing isolates the daemon/);
  checkPrivileges(t, pid);
  t.true(inside(l).hostEtcVisible);
  checkProcSelfFd(t, pid, l);
  l.proc.kill('SIGHUP');
  const end = await l.exited;
  // The stand-in daemon has no SIGHUP handler: it dies of it, and the launcher says so.
  t.is(end.code, 128 + os.constants.signals.SIGHUP);
  t.regex(l.stderr(), /vfs-launch: daemon killed by SIGHUP/);
});

test.serial('namespace: --modcaps and --rlimit-nofile apply; the daemon is pid 1 of its pid namespace, under the waiter vfs-launch became', async (t) => {
  const modcaps = '-mknod:+CAP_SYS_NICE:-setfcap';
  const { l, pid } = await launch(t, 'namespace', [`--modcaps=${modcaps}`, '--rlimit-nofile', '4096']);
  checkPrivileges(t, pid, modcaps);
  t.is(procStatus(pid).CapEff, capHex(['chown', 'dac_override', 'fowner', 'fsetid', 'setgid', 'setuid', 'sys_nice']));
  t.regex(fs.readFileSync(`/proc/${pid}/limits`, 'utf8'), /Max open files\s+4096\s+4096/);
  // vfs-launch exec'd itself away: its pid is now the waiter (sh), the daemon its only child.
  const launcher = l.proc.pid as number;
  t.is(fs.readFileSync(`/proc/${launcher}/comm`, 'utf8').trim(), 'sh');
  t.is(procStatus(pid).PPid, String(launcher));
  t.is(procStatus(pid).NSpid, `${pid}\t1`, 'the daemon is pid 1 inside');
  t.is(nsOf(launcher, 'mnt'), nsOf(process.pid, 'mnt'), 'the waiter stays in the host mount namespace');
  // As an init, it does not even see a signal it has no handler for (the stand-in has none for SIGSYS).
  process.kill(pid, 'SIGSYS');
  await new Promise((r) => setTimeout(r, 300));
  t.true(fs.existsSync(`/proc/${pid}`), 'a namespace init ignores an unhandled signal');
  t.is((await stopLauncher(l)).code, 0, l.stderr());
});

for (const mode of ['namespace', 'chroot'] as const) {
  test.serial(`${mode}: a seccomp kill is reported with the system call the kernel logged`, async (t) => {
    const share = tempShare('vfs-sbx-share-');
    t.teardown(() => fs.rmSync(share, { recursive: true, force: true }));
    const l = startLauncher(['--shared-dir', share, '--sandbox', mode, '--seccomp', 'none', '--', '--socket-path', path.join(socketDir(t), 'vfs.sock')],
      { env: { VFS_TEST_SECCOMP_KILL: '1' } });
    t.teardown(async () => { await stopLauncher(l); });
    const end = await l.exited;
    t.is(end.code, 128 + os.constants.signals.SIGSYS);
    // The kernel's audit record (read back from /dev/kmsg by the epilogue) names the call.
    const syslogNr = process.arch === 'arm64' ? 116 : 103;
    t.regex(l.stderr(), new RegExp(`vfs-launch: daemon killed by SIGSYS \\(seccomp: system call syslog \\(${syslogNr}\\) is outside the policy\\)`));
  });
}

for (const mode of ['namespace', 'chroot'] as const) {
  test.serial(`${mode}: a launcher killed with SIGKILL takes the daemon with it`, async (t) => {
    const { l, pid } = await launch(t, mode);
    l.proc.kill('SIGKILL');
    await l.exited;
    const deadline = Date.now() + 10_000;
    while (fs.existsSync(`/proc/${pid}`) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    t.false(fs.existsSync(`/proc/${pid}`), 'daemon gone');
  });
}
