// --xattrmap and --security-label through a local /dev/fuse mount, served by the real
// daemon as users run it (vfs-launch --sandbox namespace --seccomp kill): setfattr,
// getfattr and listxattr through the mount, with the mapped names checked on the host
// side by getfattr directly on the shared directory; hidden names invisible and refused;
// the size query of listxattr equal to the listing. A malformed map is refused (exit 2,
// the rule named) before anything is mounted.
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { makeDirs, mountFor, pyJson, run, runServerSync, serverCommand } from './mount-helpers.js';
import { isMountPoint } from '../src/fuse-dev/mount.js';
import { InitFlag2 } from '../src/fs/fuse-abi.js';

const SANDBOX = ['--sandbox', 'namespace', '--seccomp', 'kill'];

/** name -> value of every xattr of `p` (getfattr -d -m -, not following symlinks). */
function attrs(p: string): Record<string, string> {
  const r = run('/usr/bin/getfattr', ['-h', '-d', '-m', '-', '--absolute-names', p]);
  if (r.status !== 0) throw new Error(`getfattr ${p}: ${r.stderr}`);
  const out: Record<string, string> = {};
  for (const line of r.stdout.split('\n')) {
    const m = /^([^=#][^=]*)="(.*)"$/.exec(line);
    if (m !== null) out[m[1] as string] = m[2] as string;
  }
  return out;
}

function setf(p: string, name: string, value: string): string {
  const r = run('/usr/bin/setfattr', ['-n', name, '-v', value, p]);
  return r.status === 0 ? 'OK' : r.stderr.trim().replace(/^.*: /, '');
}

function getf(p: string, name: string): string {
  const r = run('/usr/bin/getfattr', ['--only-values', '-n', name, p]);
  return r.status === 0 ? r.stdout : r.stderr.trim().replace(/^.*: /, '');
}

/** listxattr(p, NULL, 0) and the list itself, straight from libc (no retry loop hiding a mismatch). */
const LIST_SIZES = `
libc = ctypes.CDLL(None, use_errno=True)
p = sys.argv[1].encode()
n = libc.listxattr(p, None, 0)
buf = ctypes.create_string_buffer(max(n, 1))
m = libc.listxattr(p, buf, n) if n > 0 else 0
short = libc.listxattr(p, buf, n - 1) if n > 0 else 0
print(json.dumps({"size": n, "got": m, "short": short, "shortErrno": errno.errorcode.get(ctypes.get_errno(), ""),
  "names": sorted(x for x in buf.raw[:max(m, 0)].decode().split("\\0") if x)}))`;

test.serial('map all names under user.virtiofs.: names prefixed on the host, unmapped host names hidden and unreachable', async (t) => {
  const s = await mountFor(t, ['--xattrmap', ':prefix:all::user.virtiofs.: :bad:all:::', ...SANDBOX], (d) => {
    const f = path.join(d.shared, 'f');
    fs.writeFileSync(f, 'x');
    run('/usr/bin/setfattr', ['-n', 'user.virtiofs.pre', '-v', 'P', f]);
    run('/usr/bin/setfattr', ['-n', 'user.plain', '-v', 'H', f]);
    run('/usr/bin/setfattr', ['-n', 'trusted.host', '-v', 'T', f]);
  });
  const m = path.join(s.mnt, 'f');
  const h = path.join(s.shared, 'f');
  t.is(setf(m, 'user.a', '1'), 'OK');
  t.is(setf(m, 'trusted.overlay.opaque', 'y'), 'OK');
  t.is(setf(m, 'security.test', 'S'), 'OK');
  t.deepEqual(attrs(h), {
    'user.virtiofs.pre': 'P', 'user.plain': 'H', 'trusted.host': 'T',
    'user.virtiofs.user.a': '1', 'user.virtiofs.trusted.overlay.opaque': 'y', 'user.virtiofs.security.test': 'S',
  }, 'the host holds every guest name under user.virtiofs.');
  t.deepEqual(attrs(m), { pre: 'P', 'user.a': '1', 'trusted.overlay.opaque': 'y', 'security.test': 'S' }, 'the guest sees them unprefixed, and nothing else');
  t.is(getf(m, 'user.a'), '1');
  t.is(getf(m, 'user.plain'), 'No such attribute', 'a host name outside the map is not reachable by its own name');
  const sizes = pyJson<{ size: number; got: number; short: number; shortErrno: string; names: string[] }>(LIST_SIZES, [m]);
  t.deepEqual(sizes.names, ['pre', 'security.test', 'trusted.overlay.opaque', 'user.a']);
  t.is(sizes.size, Buffer.byteLength('pre\0security.test\0trusted.overlay.opaque\0user.a\0'), 'size query = length of the filtered list');
  t.is(sizes.got, sizes.size);
  t.is(sizes.short, -1);
  t.is(sizes.shortErrno, 'ERANGE');
  t.is(run('/usr/bin/setfattr', ['-x', 'user.a', m]).status, 0);
  t.false('user.virtiofs.user.a' in attrs(h), 'removexattr removed the mapped name');
  t.is(attrs(h)['user.plain'], 'H', 'untouched');
});

// Keep the guest's trusted./security. (which a daemon without CAP_SYS_ADMIN could not
// store) under user.virtiofs. on the host; the guest may not touch user.virtiofs.
// itself; the host's own trusted./security. names are hidden; user.unsup. is unsupported.
const KATA_MAP = [
  ':prefix:all:trusted.:user.virtiofs.:', ':prefix:all:security.:user.virtiofs.:',
  ':bad:client:user.virtiofs.::', ':bad:server::trusted.:', ':bad:server::security.:',
  ':unsupported:all:user.unsup.:user.unsup.:', ':ok:all:::',
].join('\n');

test.serial('map trusted./security. to user.virtiofs. (as kata does): refused and hidden names, the rest passes', async (t) => {
  const s = await mountFor(t, ['--xattrmap', KATA_MAP, ...SANDBOX], (d) => {
    const f = path.join(d.shared, 'f');
    fs.writeFileSync(f, 'x');
    fs.mkdirSync(path.join(d.shared, 'dir'));
    run('/usr/bin/setfattr', ['-n', 'trusted.host', '-v', 'T', f]);
    run('/usr/bin/setfattr', ['-n', 'security.host', '-v', 'S', f]);
    run('/usr/bin/setfattr', ['-n', 'user.unsup.h', '-v', 'U', f]);
  });
  const m = path.join(s.mnt, 'f');
  const h = path.join(s.shared, 'f');
  t.is(setf(m, 'trusted.a', '1'), 'OK');
  t.is(setf(m, 'security.b', '2'), 'OK');
  t.is(setf(m, 'user.c', '3'), 'OK');
  t.is(setf(path.join(s.mnt, 'dir'), 'trusted.d', '4'), 'OK');
  t.is(setf(m, 'user.virtiofs.trusted.a', 'forged'), 'Operation not permitted', 'the target namespace is refused (EPERM)');
  t.is(setf(m, 'user.unsup.x', '5'), 'Operation not supported', 'unsupported: EOPNOTSUPP');
  t.is(getf(m, 'user.unsup.h'), 'Operation not supported');
  t.deepEqual(attrs(h), {
    'trusted.host': 'T', 'security.host': 'S', 'user.unsup.h': 'U',
    'user.virtiofs.trusted.a': '1', 'user.virtiofs.security.b': '2', 'user.c': '3',
  });
  t.deepEqual(attrs(path.join(s.shared, 'dir')), { 'user.virtiofs.trusted.d': '4' });
  t.deepEqual(attrs(m), { 'trusted.a': '1', 'security.b': '2', 'user.c': '3' }, "the host's own trusted./security./user.unsup. are hidden");
  t.is(getf(m, 'trusted.host'), 'No such attribute', 'the guest name maps elsewhere: the host name stays out of reach');
  const sizes = pyJson<{ size: number; got: number; names: string[] }>(LIST_SIZES, [m]);
  t.deepEqual(sizes.names, ['security.b', 'trusted.a', 'user.c']);
  t.is(sizes.size, Buffer.byteLength('trusted.a\0security.b\0user.c\0'));
  t.is(sizes.got, sizes.size);
  t.is(run('/usr/bin/setfattr', ['-x', 'user.virtiofs.trusted.a', m]).status, 1, 'removing the target namespace directly is refused too');
  t.is(attrs(h)['user.virtiofs.trusted.a'], '1');
});

test.serial('a malformed --xattrmap is refused with exit 2 naming the rule, before anything is mounted', (t) => {
  const d = makeDirs();
  t.teardown(() => fs.rmSync(d.base, { recursive: true, force: true }));
  const r = runServerSync(serverCommand(d.shared, d.mnt, ['--xattrmap', ':map::user.virtiofs.: :ok:all:::', ...SANDBOX]));
  t.is(r.status, 2, r.stderr);
  t.regex(r.stderr, /--xattrmap: rule 1 ':map::user\.virtiofs\.:': a map rule must be the last rule/);
  const r2 = runServerSync(serverCommand(d.shared, d.mnt, ['--xattrmap', ':ok:all:::\n/bad/everywhere///', ...SANDBOX]));
  t.is(r2.status, 2, r2.stderr);
  t.regex(r2.stderr, /--xattrmap: rule 2 '\/bad\/everywhere\/\/\/': scope 'everywhere' is not one of client, server, all/);
  t.false(isMountPoint(d.mnt));
});

test.serial('--security-label on a real kernel client: SECURITY_CTX agreed, every creating request carries (empty) label headers and succeeds', async (t) => {
  // No LSM on this host labels new files, so the kernel sends fuse_secctx_header with
  // nr_secctx 0: a malformed or missing header would fail these creations with EINVAL.
  const s = await mountFor(t, ['--security-label', '--log-level', 'debug', ...SANDBOX]);
  const out = pyJson<Record<string, string>>(`
d = sys.argv[1]
p = lambda x: os.path.join(d, x)
out = {}
out["create"] = E(lambda: os.close(os.open(p("file"), os.O_CREAT | os.O_WRONLY, 0o644)))
out["mkdir"] = E(lambda: os.mkdir(p("dir")))
out["mknod fifo"] = E(lambda: os.mkfifo(p("fifo")))
out["symlink"] = E(lambda: os.symlink("file", p("sl")))
out["tmpfile"] = E(lambda: os.close(os.open(d, os.O_TMPFILE | os.O_RDWR, 0o600)))
out["setxattr"] = E(lambda: os.setxattr(p("file"), "user.k", b"v"))
print(json.dumps(out))`, [s.mnt]);
  t.deepEqual(out, { create: 'OK', mkdir: 'OK', 'mknod fifo': 'OK', symlink: 'OK', tmpfile: 'OK', setxattr: 'OK' });
  await s.stop();
  const agreed = /INIT: client 7\.\d+ flags 0x[0-9a-f]+\/0x[0-9a-f]+, agreed 0x[0-9a-f]+\/0x([0-9a-f]+),/.exec(s.stderr());
  t.truthy(agreed, 'the INIT debug line');
  // Other flags2 bits (CREATE_SUPP_GROUP) are agreed by default; SECURITY_CTX only with the option.
  t.is(Number.parseInt(agreed?.[1] ?? '0', 16) & InitFlag2.SECURITY_CTX, InitFlag2.SECURITY_CTX, 'flags2 agreed: SECURITY_CTX');
  t.deepEqual(attrs(path.join(s.shared, 'file')), { 'user.k': 'v' }, 'no label was stored (none was sent)');
  t.true(fs.lstatSync(path.join(s.shared, 'sl')).isSymbolicLink());
  t.notRegex(s.stderr(), /malformed/);
});
