// End to end in a QEMU guest (TCG): --xattrmap, and --security-label with a guest kernel
// that labels new files. The daemon runs under vfs-launch (namespace sandbox, seccomp kill);
// the guest's busybox runs setfattr/getfattr on the share and the host checks the mapped
// names with getfattr on the real directory. For labels the guest boots with lsm=selinux:
// with no policy loaded, SELinux still gives each new inode a context (its initial SID's
// name), which the 6.1 guest kernel sends with CREATE/MKDIR/MKNOD/SYMLINK.
import test from 'ava';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { bootGuest, findKernel, findQemu, keyed } from './guest.js';
import { startBackend, type Backend } from './backend.js';

/** name -> value of every xattr of `p` on the host (getfattr -h -d -m -). */
function hostAttrs(p: string): Record<string, string> {
  const r = spawnSync('/usr/bin/getfattr', ['-h', '-d', '-m', '-', '--absolute-names', p], { encoding: 'utf8' });
  const out: Record<string, string> = {};
  for (const line of r.stdout.split('\n')) {
    const m = /^([^=#][^=]*)="(.*)"$/.exec(line);
    if (m !== null) out[m[1] as string] = m[2] as string;
  }
  return out;
}

async function withGuest(t: import('ava').ExecutionContext, daemonArgs: string[], prepare: (share: string) => void,
  script: string, kernelArgs?: string): Promise<{ share: string; lines: Map<string, string>; rc: number; backend: Backend }> {
  t.timeout(400_000);
  findQemu();
  findKernel();
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'vfs-e2e-xattr-'));
  const share = path.join(work, 'share');
  fs.mkdirSync(share);
  prepare(share);
  const sock = path.join(work, 'vfs.sock');
  const backend = await startBackend({ kind: 'ours', sharedDir: share, socketPath: sock, sandbox: 'namespace', daemonArgs: ['--seccomp', 'kill', ...daemonArgs] });
  t.teardown(async () => {
    await backend.stop();
    fs.rmSync(work, { recursive: true, force: true });
  });
  const r = await bootGuest({ socketPath: sock, script, kernelArgs, backendExited: backend.exited, backendOutput: backend.output, timeoutMs: 300_000 });
  return { share, lines: keyed(r.lines), rc: r.rc, backend };
}

const KATA_MAP = ':prefix:all:trusted.:user.virtiofs.: :prefix:all:security.:user.virtiofs.: :bad:client:user.virtiofs.:: :bad:server::trusted.: :bad:server::security.: :ok:all:::';

test.serial('guest setfattr/getfattr through --xattrmap: mapped names on the host, host names hidden, the target refused', async (t) => {
  const { share, lines, rc, backend } = await withGuest(t, ['--xattrmap', KATA_MAP], (s) => {
    fs.writeFileSync(path.join(s, 'f'), 'x');
    spawnSync('/usr/bin/setfattr', ['-n', 'trusted.host', '-v', 'T', path.join(s, 'f')]);
    spawnSync('/usr/bin/setfattr', ['-n', 'user.virtiofs.trusted.pre', '-v', 'P', path.join(s, 'f')]);
  }, String.raw`
cd "$VFS_MNT" || exit 90
setfattr -n trusted.overlay.opaque -v y f; echo "SET_TRUSTED $?"
setfattr -n user.mime -v text f; echo "SET_USER $?"
setfattr -n user.virtiofs.trusted.x -v forged f 2>/dev/null; echo "SET_TARGET $?"
echo "GET_TRUSTED $(getfattr --only-values -n trusted.overlay.opaque f)"
echo "GET_PRE $(getfattr --only-values -n trusted.pre f)"
getfattr -n trusted.host f >/dev/null 2>&1; echo "GET_HOST $?"
echo "LIST $(getfattr -d -m - f 2>/dev/null | grep = | cut -d= -f1 | sort | tr '\n' ',')"
mkdir d && setfattr -n security.test -v S d; echo "SET_DIR $?"
`);
  t.is(rc, 0, backend.output());
  t.is(lines.get('SET_TRUSTED'), '0');
  t.is(lines.get('SET_USER'), '0');
  t.not(lines.get('SET_TARGET'), '0', 'user.virtiofs.* is refused to the guest');
  t.is(lines.get('GET_TRUSTED'), 'y');
  t.is(lines.get('GET_PRE'), 'P');
  t.not(lines.get('GET_HOST'), '0', "the host's own trusted.host is out of the guest's reach");
  t.is(lines.get('LIST'), 'trusted.overlay.opaque,trusted.pre,user.mime,');
  t.is(lines.get('SET_DIR'), '0');
  t.deepEqual(hostAttrs(path.join(share, 'f')), {
    'trusted.host': 'T', 'user.virtiofs.trusted.pre': 'P', 'user.virtiofs.trusted.overlay.opaque': 'y', 'user.mime': 'text',
  });
  t.deepEqual(hostAttrs(path.join(share, 'd')), { 'user.virtiofs.security.test': 'S' });
});

test.serial('guest kernel with SELinux (no policy) sends labels: --security-label stores them on the host files', async (t) => {
  const { share, lines, rc, backend } = await withGuest(t, ['--security-label', '--log-level', 'debug'], () => undefined, String.raw`
cd "$VFS_MNT" || exit 90
echo x > file; echo "CREATE $?"
mkdir dir; echo "MKDIR $?"
mkfifo fifo; echo "MKNOD $?"
ln -s file link; echo "SYMLINK $?"
`, 'lsm=selinux');
  t.is(rc, 0, backend.output());
  t.regex(backend.output(), /agreed 0x[0-9a-f]+\/0x1,/, 'SECURITY_CTX agreed with the guest kernel');
  for (const k of ['CREATE', 'MKDIR', 'MKNOD', 'SYMLINK']) t.is(lines.get(k), '0', k);
  const labels = ['file', 'dir', 'fifo', 'link'].map((n) => hostAttrs(path.join(share, n))['security.selinux']);
  t.log(`labels on the host: ${JSON.stringify(labels)}`);
  for (const [i, l] of labels.entries()) t.truthy(l, `security.selinux on ${['file', 'dir', 'fifo', 'link'][i]}`);
});
