// End to end in a QEMU guest (TCG) on virtio-fs, against the daemon as users run it
// (vfs-launch --sandbox namespace, --seccomp kill): POSIX ACLs (--posix-acl: setfacl/getfacl
// round trip, default-ACL inheritance under a umask, an ACL-granted read by a non-root uid
// through busybox su) and HANDLE_KILLPRIV_V2 (--killpriv-v2: a non-owner's write, truncate
// and O_TRUNC open clear setuid/setgid on the host file). A second boot without either
// option: setfacl is refused (EOPNOTSUPP) and the guest kernel clears setuid itself.
// VFS_E2E_BACKEND=reference runs the same boots against virtiofsd 1.13.2.
import test from 'ava';
import type { ExecutionContext } from 'ava';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { bootGuest, findKernel, findQemu, keyed } from './guest.js';
import { backendKind, startBackend, type Backend } from './backend.js';

const USERS = String.raw`
echo 'u1000:x:1000:1000::/:/bin/sh' >> /etc/passwd
echo 'u1001:x:1001:1001::/:/bin/sh' >> /etc/passwd
echo 'g1000:x:1000:' >> /etc/group
echo 'g1001:x:1001:' >> /etc/group
`;

const ACL_SCRIPT = String.raw`
touch f && chmod 640 f
setfacl -m u:1000:rw f; echo "SETFACL_RC $?"
echo "ACL $(getfacl -n -c f | tr '\n' ' ')"
echo "MODE_F $(stat -c %a f)"
mkdir d && setfacl -d -m u:1000:rwx,g::r-x,o::---,m::rwx d; echo "DEFAULT_RC $?"
umask 077
touch d/x; mkdir d/y; touch plain; mkdir plaindir
umask 022
echo "INHERIT $(stat -c %a d/x) $(stat -c %a d/y) $(stat -c %a plain) $(stat -c %a plaindir)"
echo "XACL $(getfacl -n -c d/x | tr '\n' ' ')"
echo secret > s && chmod 600 s && setfacl -m u:1000:r s
echo "READ1000 $(su u1000 -s /bin/sh -c 'cat s' 2>&1)"
echo "READ1001 $(su u1001 -s /bin/sh -c 'cat s >/dev/null 2>&1; echo rc=$?')"
`;

const NO_ACL_SCRIPT = String.raw`
touch f
setfacl -m u:1000:rw f 2>/tmp/setfacl.err; echo "SETFACL_ERR rc=$? $(cat /tmp/setfacl.err)"
umask 027; touch g; umask 022
echo "UMASK_G $(stat -c %a g)"
`;

/** As u1000 on files the host made 0o4777/0o2777 (root-owned): write, truncate, O_TRUNC open. */
const KILLPRIV_SCRIPT = String.raw`
su u1000 -s /bin/sh -c 'echo more >> w-suid; echo more >> w-sgid; truncate -s 1 t-suid; : > o-suid; echo "KP_RC $?"'
echo more >> root-w
echo "KP_SEEN $(stat -c %a w-suid) $(stat -c %a w-sgid) $(stat -c %a t-suid) $(stat -c %a o-suid) $(stat -c %a root-w)"
`;

const KILLPRIV_FILES: [string, number][] = [['w-suid', 0o4777], ['w-sgid', 0o2777], ['t-suid', 0o4777], ['o-suid', 0o6777], ['root-w', 0o6777]];

function modeOf(p: string): string {
  return (fs.lstatSync(p).mode & 0o7777).toString(8);
}

async function boot(t: ExecutionContext, daemonArgs: string[], script: string): Promise<{ k: Map<string, string>; share: string; lines: string[]; b: Backend }> {
  t.timeout(10 * 60_000);
  findQemu();
  findKernel();
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'vfs-e2e-acl-'));
  const share = path.join(work, 'share');
  fs.mkdirSync(share);
  fs.chmodSync(share, 0o755);
  for (const [name, mode] of KILLPRIV_FILES) {
    fs.writeFileSync(path.join(share, name), 'data');
    fs.chmodSync(path.join(share, name), mode);
  }
  const backends: Backend[] = [];
  t.teardown(async () => {
    for (const x of backends) await x.stop();
    fs.rmSync(work, { recursive: true, force: true });
  });
  const sock = path.join(work, 'vfs.sock');
  const b = await startBackend({ kind: backendKind(), sharedDir: share, socketPath: sock, sandbox: 'namespace', daemonArgs: [...daemonArgs, '--log-level', 'debug'] });
  backends.push(b);
  const r = await bootGuest({
    socketPath: sock, script: `cd "$VFS_MNT" || exit 90\n${USERS}${script}${KILLPRIV_SCRIPT}echo DONE\n`,
    timeoutMs: 8 * 60_000, backendExited: b.exited, backendOutput: b.output,
  });
  const k = keyed(r.lines);
  t.is(r.rc, 0, r.console);
  t.is(k.get('DONE'), '', `guest script did not finish:\n${r.lines.join('\n')}\n${b.output()}`);
  t.notRegex(b.output(), /SIGSYS/);
  return { k, share, lines: r.lines, b };
}

test.serial('QEMU guest, --posix-acl --killpriv-v2: ACL round trip, default ACL under umask 077, ACL-granted read by uid 1000; a non-owner clears setuid/setgid', async (t) => {
  const { k, share, lines, b } = await boot(t, ['--posix-acl', '--killpriv-v2'], ACL_SCRIPT);
  if (backendKind() === 'ours') {
    const agreed = /INIT: .* agreed 0x([0-9a-f]+)\//.exec(b.output());
    t.truthy(agreed, b.output());
    const flags = parseInt(agreed?.[1] ?? '0', 16);
    for (const [bit, name] of [[20, 'POSIX_ACL'], [6, 'DONT_MASK'], [29, 'SETXATTR_EXT'], [28, 'HANDLE_KILLPRIV_V2']] as const) {
      t.not(flags & (1 << bit), 0, `${name} agreed with the guest kernel`);
    }
  }
  t.log(lines.filter((l) => /^(ACL|INHERIT|XACL|READ|KP_)/.test(l)).join('\n'));
  t.is(k.get('SETFACL_RC'), '0');
  t.regex(k.get('ACL') ?? '', /user:1000:rw- .*mask::rw-/);
  t.is(k.get('MODE_F'), '660', 'the group bits show the mask');
  t.regex(execFileSync('getfacl', ['-n', '-c', path.join(share, 'f')], { encoding: 'utf8' }), /^user:1000:rw-$/m, 'the host file carries the ACL');
  t.is(modeOf(path.join(share, 'f')), '660');
  t.is(k.get('DEFAULT_RC'), '0');
  t.is(k.get('INHERIT'), '660 770 600 700', 'default ACL inherited (umask 077 ignored); umask 077 applied without one');
  t.is(modeOf(path.join(share, 'd/x')), '660');
  t.is(modeOf(path.join(share, 'plain')), '600');
  t.regex(k.get('XACL') ?? '', /user:1000:rwx\s+#effective:rw-/);
  t.is(k.get('READ1000'), 'secret', 'uid 1000 reads a 0600 root file through its ACL entry');
  t.is(k.get('READ1001'), 'rc=1', 'uid 1001, without an entry, is refused');
  t.is(k.get('KP_RC'), '0');
  t.is(k.get('KP_SEEN'), '777 777 777 777 6777', 'the guest sees the bits gone, and kept for root');
  for (const [name, want] of [['w-suid', '777'], ['w-sgid', '777'], ['t-suid', '777'], ['o-suid', '777'], ['root-w', '6777']]) {
    t.is(modeOf(path.join(share, name)), want, `${name} on the host`);
  }
});

test.serial('QEMU guest, no --posix-acl, no --killpriv-v2: setfacl refused (EOPNOTSUPP), the guest applies the umask and clears setuid/setgid itself', async (t) => {
  const { k, share, lines } = await boot(t, ['--xattr'], NO_ACL_SCRIPT);
  t.log(lines.filter((l) => /^(SETFACL|UMASK|KP_)/.test(l)).join('\n'));
  t.regex(k.get('SETFACL_ERR') ?? '', /^rc=1 setfacl: f: Operation not supported$/);
  t.is(k.get('UMASK_G'), '640');
  t.is(k.get('KP_RC'), '0');
  t.is(k.get('KP_SEEN'), '777 777 777 777 6777');
  for (const [name, want] of [['w-suid', '777'], ['w-sgid', '777'], ['t-suid', '777'], ['o-suid', '777'], ['root-w', '6777']]) {
    t.is(modeOf(path.join(share, name)), want, `${name} on the host`);
  }
});
