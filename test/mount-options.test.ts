// Server options seen through a /dev/fuse mount: --readonly (EROFS for every modifying
// request, host untouched), --xattr (extended attributes served and compared with the
// host; without it the client is told they are unsupported), --no-readdirplus and
// --cache never. Each test runs its own server with its own options, one after the other
// (several daemons starting at once on two cores only slow each other down).
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { DRIVER, mountFor, codeOf, pyJson, run } from './mount-helpers.js';

function hostSnapshot(root: string): string[] {
  const out: string[] = [];
  const walk = (dir: string): void => {
    for (const e of fs.readdirSync(dir).sort()) {
      const p = path.join(dir, e);
      const st = fs.lstatSync(p, { bigint: true });
      out.push(`${path.relative(root, p)} ${st.mode.toString(8)} ${st.uid}:${st.gid} ${st.size} ${st.mtimeNs} ${st.nlink}`);
      if (st.isDirectory()) walk(p);
    }
  };
  walk(root);
  return out;
}

const MODIFICATIONS = `
import fcntl
d = sys.argv[1]
p = lambda x: os.path.join(d, x)
libc = ctypes.CDLL(None, use_errno=True)
def rename2(a, b, flags):
    if libc.renameat2(-100, a.encode(), -100, b.encode(), flags) != 0:
        raise OSError(ctypes.get_errno(), "renameat2")
out = {}
out["create"] = E(lambda: os.close(os.open(p("new"), os.O_CREAT | os.O_WRONLY, 0o644)))
out["open for write"] = E(lambda: os.close(os.open(p("file"), os.O_WRONLY)))
out["open O_TRUNC"] = E(lambda: os.close(os.open(p("file"), os.O_RDONLY | os.O_TRUNC)))
out["mkdir"] = E(lambda: os.mkdir(p("newdir")))
out["mknod fifo"] = E(lambda: os.mkfifo(p("fifo")))
out["symlink"] = E(lambda: os.symlink("file", p("sl")))
out["link"] = E(lambda: os.link(p("file"), p("hl")))
out["unlink"] = E(lambda: os.unlink(p("file")))
out["rmdir"] = E(lambda: os.rmdir(p("dir")))
out["rename"] = E(lambda: os.rename(p("file"), p("file2")))
out["rename2 exchange"] = E(lambda: rename2(p("file"), p("dir"), 2))
out["chmod"] = E(lambda: os.chmod(p("file"), 0o600))
out["chown"] = E(lambda: os.chown(p("file"), 1, 1))
out["utime"] = E(lambda: os.utime(p("file"), (1, 2)))
out["truncate"] = E(lambda: os.truncate(p("file"), 0))
out["setxattr"] = E(lambda: os.setxattr(p("file"), "user.k", b"v"))
out["removexattr"] = E(lambda: os.removexattr(p("file"), "user.present"))
out["tmpfile"] = E(lambda: os.close(os.open(d, os.O_TMPFILE | os.O_RDWR, 0o600)))
with open(p("file"), "rb") as f: out["read"] = f.read().decode()
out["getxattr"] = E(lambda: os.getxattr(p("file"), "user.present").decode())
out["list"] = sorted(os.listdir(d))
print(json.dumps(out))`;

// vfs-launch also mounts read-only (MS_RDONLY), so there the client refuses first; the
// in-tree server mounts read-write and leaves every refusal to the core.
for (const driver of ['launch', 'serve'] as const) {
  const who = driver === 'launch' ? 'vfs-launch (read-only mount)' : 'the core alone (read-write mount)';
  test.serial(`--readonly: every modification is refused with EROFS and the host is untouched: ${who}`, async (t) => {
    const s = await mountFor(t, ['--readonly', '--xattr'], (d) => {
      fs.writeFileSync(path.join(d.shared, 'file'), 'content');
      fs.mkdirSync(path.join(d.shared, 'dir'));
      run('setfattr', ['-n', 'user.present', '-v', 'here', path.join(d.shared, 'file')]);
    }, driver === 'launch' ? DRIVER : 'serve');
    const opts = fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n').find((l) => l.split(' ')[4] === s.mnt)?.split(' ')[5] ?? '';
    t.is(opts.split(',')[0], DRIVER === 'launch' && driver === 'launch' ? 'ro' : 'rw');
    const before = hostSnapshot(s.shared);
    const r = pyJson<Record<string, string | string[]>>(MODIFICATIONS, [s.mnt]);
    const { read, getxattr, list, ...mods } = r;
    t.is(read, 'content');
    t.is(getxattr, 'here');
    t.deepEqual(list, ['dir', 'file']);
    const { tmpfile, ...rest } = mods;
    for (const [op, res] of Object.entries(rest)) t.is(res, 'ERR EROFS', op);
    // O_TMPFILE: EROFS, or EOPNOTSUPP where TMPFILE is not served at all (virtiofsd's ENOSYS).
    t.true(tmpfile === 'ERR EROFS' || tmpfile === 'ERR EOPNOTSUPP', String(tmpfile));
    t.deepEqual(hostSnapshot(s.shared), before);
  });
}

test.serial('--xattr: set/get/list/remove through the mount match the host, with the right errors', async (t) => {
  const s = await mountFor(t, ['--xattr']);
  const f = path.join(s.mnt, 'f');
  fs.writeFileSync(f, '');
  fs.mkdirSync(path.join(s.mnt, 'd'));
  fs.writeFileSync(path.join(s.ref, 'f'), '');
  fs.mkdirSync(path.join(s.ref, 'd'));
  const snippet = `
f = sys.argv[1]
big = bytes(range(256)) * 8
out = {}
out["set"] = E(lambda: os.setxattr(f, "user.one", b"1"))
out["set big"] = E(lambda: os.setxattr(f, "user.big", big))
out["set dir"] = E(lambda: os.setxattr(sys.argv[2], "user.dir", b"D"))
out["create existing"] = E(lambda: os.setxattr(f, "user.one", b"x", os.XATTR_CREATE))
out["replace missing"] = E(lambda: os.setxattr(f, "user.none", b"x", os.XATTR_REPLACE))
out["replace"] = E(lambda: os.setxattr(f, "user.one", b"11", os.XATTR_REPLACE))
out["get"] = E(lambda: os.getxattr(f, "user.one").decode())
out["get big ok"] = E(lambda: os.getxattr(f, "user.big") == big)
out["get missing"] = E(lambda: os.getxattr(f, "user.none"))
out["list"] = sorted(os.listxattr(f))
out["remove"] = E(lambda: os.removexattr(f, "user.big"))
out["remove missing"] = E(lambda: os.removexattr(f, "user.big"))
out["empty value"] = E(lambda: os.setxattr(f, "user.empty", b""))
out["get empty"] = E(lambda: os.getxattr(f, "user.empty").decode())
print(json.dumps(out))`;
  const r = pyJson<Record<string, unknown>>(snippet, [f, path.join(s.mnt, 'd')]);
  t.deepEqual(r, pyJson<Record<string, unknown>>(snippet, [path.join(s.ref, 'f'), path.join(s.ref, 'd')]));
  t.deepEqual(r, {
    'set': 'OK', 'set big': 'OK', 'set dir': 'OK', 'create existing': 'ERR EEXIST', 'replace missing': 'ERR ENODATA',
    'replace': 'OK', 'get': '11', 'get big ok': true, 'get missing': 'ERR ENODATA', 'list': ['user.big', 'user.one'],
    'remove': 'OK', 'remove missing': 'ERR ENODATA', 'empty value': 'OK', 'get empty': '',
  });
  const host = run('getfattr', ['-d', '-m', '-', '--absolute-names', path.join(s.shared, 'f')]).stdout;
  t.regex(host, /user\.one="11"/);
  t.regex(host, /user\.empty/);
  t.notRegex(host, /user\.big/);
  t.regex(run('getfattr', ['-n', 'user.dir', '--absolute-names', path.join(s.shared, 'd')]).stdout, /user\.dir="D"/);
  // trusted.* needs CAP_SYS_ADMIN in the server: the daemon drops it (virtiofsd's default
  // capability set has no SYS_ADMIN either), the in-tree test server keeps root's.
  const trusted = pyJson<string>('print(json.dumps(E(lambda: os.setxattr(sys.argv[1], "trusted.t", b"T"))))', [f]);
  t.is(trusted, DRIVER === 'launch' ? 'ERR EPERM' : 'OK');
  t.is(/trusted\.t="T"/.test(run('getfattr', ['-d', '-m', '-', '--absolute-names', path.join(s.shared, 'f')]).stdout), trusted === 'OK');
  // Set on the host, seen through the mount by the getfattr tool.
  run('setfattr', ['-n', 'user.fromhost', '-v', 'H', path.join(s.shared, 'f')]);
  t.regex(run('getfattr', ['-n', 'user.fromhost', '--absolute-names', f]).stdout, /user\.fromhost="H"/);
});

test.serial('without --xattr, extended attributes are reported unsupported', async (t) => {
  const s = await mountFor(t);
  const f = path.join(s.mnt, 'f');
  fs.writeFileSync(f, '');
  run('setfattr', ['-n', 'user.fromhost', '-v', 'H', path.join(s.shared, 'f')]);
  const r = pyJson<string[]>(`
f = sys.argv[1]
print(json.dumps([E(lambda: os.setxattr(f, "user.k", b"v")), E(lambda: os.getxattr(f, "user.fromhost")), E(lambda: os.listxattr(f))]))`, [f]);
  t.is(r[0], 'ERR EOPNOTSUPP');
  t.is(r[1], 'ERR EOPNOTSUPP');
  t.true(r[2] === 'ERR EOPNOTSUPP' || (Array.isArray(r[2]) && r[2].length === 0), JSON.stringify(r[2]));
  t.is(codeOf(() => fs.readFileSync(f)), 'OK');
});

test.serial('--no-readdirplus: plain READDIR lists the same entries as the host', async (t) => {
  const s = await mountFor(t, ['--no-readdirplus']);
  for (let i = 0; i < 1500; i++) fs.writeFileSync(path.join(s.shared, `n${i}`), '');
  fs.mkdirSync(path.join(s.shared, 'sub'));
  const viaMount = fs.readdirSync(s.mnt, { withFileTypes: true }).map((e) => `${e.name}:${e.isDirectory()}`).sort();
  const onHost = fs.readdirSync(s.shared, { withFileTypes: true }).map((e) => `${e.name}:${e.isDirectory()}`).sort();
  t.deepEqual(viaMount, onHost);
  t.is(fs.statSync(path.join(s.mnt, 'n1499')).ino, fs.statSync(path.join(s.shared, 'n1499')).ino);
});

test.serial('--cache never: host-side changes are seen at once', async (t) => {
  const s = await mountFor(t, ['--cache', 'never']);
  const h = path.join(s.shared, 'f');
  fs.writeFileSync(h, 'one');
  t.is(fs.readFileSync(path.join(s.mnt, 'f'), 'utf8'), 'one');
  fs.writeFileSync(h, 'two, longer');
  t.is(fs.statSync(path.join(s.mnt, 'f')).size, 11);
  t.is(fs.readFileSync(path.join(s.mnt, 'f'), 'utf8'), 'two, longer');
  fs.unlinkSync(h);
  t.is(codeOf(() => fs.statSync(path.join(s.mnt, 'f'))), 'ENOENT');
  fs.mkdirSync(path.join(s.shared, 'f'));
  t.true(fs.statSync(path.join(s.mnt, 'f')).isDirectory());
});
