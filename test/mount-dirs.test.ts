// Directories, names and special files through a /dev/fuse mount, compared with the host
// directory behind it: mkdir/rmdir/rename, a 10,000-entry readdir, hard links and link
// counts, symlinks (the server acts on the link itself, never on what it points to),
// fifo/socket/device mknod, and renameat2's NOREPLACE/EXCHANGE/WHITEOUT flags.
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { useMount, subdirMaker, bothLstat, codeOf, pyJson, type Server } from './mount-helpers.js';

const server = useMount(test);
let s: Server;
// before hooks run concurrently: pick the server up once they are all done.
test.beforeEach(() => {
  s = server();
});

const sub = subdirMaker(() => s, 'd');

test('mkdir, rmdir and rename give the same outcomes as a plain directory', (t) => {
  const d = sub();
  const seq = (root: string): unknown[] => {
    const p = (x: string): string => path.join(root, x);
    const out: unknown[] = [];
    fs.mkdirSync(p('a/b/c'), { recursive: true, mode: 0o750 });
    out.push((fs.statSync(p('a/b/c')).mode & 0o7777).toString(8));
    out.push(codeOf(() => fs.mkdirSync(p('a'))));
    out.push(codeOf(() => fs.rmdirSync(p('a'))));
    fs.writeFileSync(p('a/f'), 'F');
    out.push(codeOf(() => fs.rmdirSync(p('a/f'))));
    out.push(codeOf(() => fs.unlinkSync(p('a/b'))));
    fs.renameSync(p('a/f'), p('a/b/g'));
    out.push(fs.readFileSync(p('a/b/g'), 'utf8'));
    fs.writeFileSync(p('x'), 'X');
    fs.renameSync(p('x'), p('a/b/g')); // replaces
    out.push(fs.readFileSync(p('a/b/g'), 'utf8'));
    out.push(codeOf(() => fs.renameSync(p('a'), p('a/b/c/inside'))));
    fs.mkdirSync(p('e'));
    out.push(codeOf(() => fs.renameSync(p('e'), p('a'))));
    fs.renameSync(p('a/b'), p('moved'));
    out.push(fs.readdirSync(p('moved')).sort());
    out.push(fs.statSync(p('moved')).nlink, fs.statSync(p('a')).nlink);
    fs.rmdirSync(p('moved/c'));
    out.push(fs.statSync(p('moved')).nlink);
    out.push(codeOf(() => fs.statSync(p('nope/x'))));
    return out;
  };
  const viaMount = seq(d.m);
  t.deepEqual(viaMount, seq(d.r));
  t.deepEqual(fs.readdirSync(d.h).sort(), ['a', 'e', 'moved']);
  for (const rel of ['a', 'moved', 'moved/g', 'e']) t.deepEqual(...bothLstat(s, `${d.rel}/${rel}`), rel);
});

test('readdir of 10,000 entries: same names, count and types as the host', (t) => {
  const d = sub();
  for (let i = 0; i < 10000; i++) {
    const name = `entry-${i}-${'x'.repeat(i % 50)}`;
    if (i % 10 === 0) fs.mkdirSync(path.join(d.h, name));
    else if (i % 10 === 1) fs.symlinkSync(`target-${i}`, path.join(d.h, name));
    else fs.writeFileSync(path.join(d.h, name), '');
  }
  const kind = (e: fs.Dirent): string => (e.isDirectory() ? 'd' : e.isSymbolicLink() ? 'l' : e.isFile() ? 'f' : '?');
  const viaMount = fs.readdirSync(d.m, { withFileTypes: true }).map((e) => `${e.name}:${kind(e)}`).sort();
  const onHost = fs.readdirSync(d.h, { withFileTypes: true }).map((e) => `${e.name}:${kind(e)}`).sort();
  t.is(viaMount.length, 10000);
  t.deepEqual(viaMount, onHost);
  // d_ino of a few entries equals the host inode number (python's scandir exposes it).
  const inos = pyJson<Record<string, number>>('print(json.dumps({e.name: e.inode() for e in os.scandir(sys.argv[1]) if e.name.endswith("-7-xxxxxxx") or e.name.startswith("entry-999")}))', [d.m]);
  t.true(Object.keys(inos).length >= 10);
  for (const [name, ino] of Object.entries(inos)) t.is(ino, Number(fs.lstatSync(path.join(d.h, name)).ino), name);
  // A second listing through a fresh opendir after deleting a third of them on the host.
  for (let i = 0; i < 10000; i += 3) fs.rmSync(path.join(d.h, `entry-${i}-${'x'.repeat(i % 50)}`), { recursive: true });
  t.deepEqual(fs.readdirSync(d.m).sort(), fs.readdirSync(d.h).sort());
});

test('hard links: same inode, link counts follow on both sides', (t) => {
  const d = sub();
  const a = path.join(d.m, 'a');
  fs.writeFileSync(a, 'linked');
  fs.linkSync(a, path.join(d.m, 'b'));
  fs.mkdirSync(path.join(d.m, 'sub'));
  fs.linkSync(a, path.join(d.m, 'sub/c'));
  t.is(fs.statSync(path.join(d.h, 'a')).nlink, 3);
  t.is(fs.statSync(a).nlink, 3);
  t.is(fs.statSync(path.join(d.m, 'sub/c')).ino, fs.statSync(path.join(d.h, 'a')).ino);
  t.deepEqual(...bothLstat(s, `${d.rel}/b`));
  fs.writeFileSync(path.join(d.m, 'b'), 'changed');
  t.is(fs.readFileSync(path.join(d.m, 'sub/c'), 'utf8'), 'changed');
  fs.unlinkSync(a);
  t.is(fs.statSync(path.join(d.m, 'b')).nlink, 2);
  t.is(fs.statSync(path.join(d.h, 'b')).nlink, 2);
  t.is(codeOf(() => fs.linkSync(path.join(d.m, 'b'), path.join(d.m, 'sub/c'))), 'EEXIST');
  t.is(codeOf(() => fs.linkSync(path.join(d.m, 'sub'), path.join(d.m, 'dirlink'))), 'EPERM');
});

test('symlinks: lstat/readlink/lchown/lutimes act on the link, never on its target', (t) => {
  const d = sub();
  fs.writeFileSync(path.join(d.h, 'target'), 'T');
  fs.symlinkSync('target', path.join(d.m, 'rel'));
  fs.symlinkSync('/', path.join(d.m, 'esc'));
  fs.symlinkSync('/etc/passwd', path.join(d.m, 'pw'));
  t.is(fs.readlinkSync(path.join(d.h, 'rel')), 'target');
  t.is(fs.readlinkSync(path.join(d.m, 'esc')), '/');
  t.is(fs.readlinkSync(path.join(d.m, 'pw')), '/etc/passwd');
  for (const l of ['rel', 'esc', 'pw']) {
    const [m, h] = bothLstat(s, `${d.rel}/${l}`);
    t.deepEqual(m, h, l);
    t.is(Number.parseInt(m.mode, 8) & 0o170000, 0o120000, `${l} is a symlink through the mount`);
  }
  // lchown and lutimes reach the link itself on the host; the target is untouched.
  const tgtBefore = fs.statSync('/etc/passwd', { bigint: true });
  fs.lchownSync(path.join(d.m, 'pw'), 4242, 4243);
  fs.lutimesSync(path.join(d.m, 'pw'), 1234, 5678);
  const hl = fs.lstatSync(path.join(d.h, 'pw'));
  t.is(hl.uid, 4242);
  t.is(hl.gid, 4243);
  t.is(hl.mtimeMs, 5678000);
  const tgtAfter = fs.statSync('/etc/passwd', { bigint: true });
  t.is(tgtAfter.uid, tgtBefore.uid);
  t.is(tgtAfter.mtimeNs, tgtBefore.mtimeNs);
  // Opening a link with O_NOFOLLOW fails; following happens in the client, relative to the
  // client's root: `esc/etc` through the mount is the client's /etc (here the same machine),
  // resolved by the kernel's path walk, not a server lookup of "etc" below "esc".
  t.is(codeOf(() => fs.openSync(path.join(d.m, 'rel'), fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW)), 'ELOOP');
  t.is(fs.readFileSync(path.join(d.m, 'rel'), 'utf8'), 'T');
  t.is(fs.realpathSync(path.join(d.m, 'esc', 'etc')), '/etc');
  // Renaming and hard-linking a symlink keep it a symlink to the same text.
  fs.renameSync(path.join(d.m, 'rel'), path.join(d.m, 'rel2'));
  fs.linkSync(path.join(d.m, 'rel2'), path.join(d.m, 'rel3'));
  t.is(fs.readlinkSync(path.join(d.h, 'rel3')), 'target');
  t.is(fs.lstatSync(path.join(d.h, 'rel3')).nlink, 2);
  t.is(fs.readFileSync(path.join(d.h, 'target'), 'utf8'), 'T');
  // A dangling symlink: lstat works, stat says ENOENT.
  fs.symlinkSync('nowhere', path.join(d.m, 'dangling'));
  t.true(fs.lstatSync(path.join(d.m, 'dangling')).isSymbolicLink());
  t.is(codeOf(() => fs.statSync(path.join(d.m, 'dangling'))), 'ENOENT');
});

test('mknod: fifo, unix socket and character device nodes appear on the host', (t) => {
  const d = sub();
  const made = pyJson<string>(`
d = sys.argv[1]
os.mkfifo(os.path.join(d, "fifo"), 0o640)
os.mknod(os.path.join(d, "null"), 0o600 | stat.S_IFCHR, os.makedev(1, 3))
os.mknod(os.path.join(d, "plain"), 0o644 | stat.S_IFREG)
import socket
# bind() of a unix socket creates its node with mknod (closing it leaves the node).
sk = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sk.bind(os.path.join(d, "sock"))
sk.close()
print(json.dumps("ok"))`, [d.m]);
  t.is(made, 'ok');
  t.true(fs.lstatSync(path.join(d.h, 'fifo')).isFIFO());
  t.true(fs.lstatSync(path.join(d.h, 'sock')).isSocket());
  const dev = fs.lstatSync(path.join(d.h, 'null'));
  t.true(dev.isCharacterDevice());
  t.is(dev.rdev, fs.statSync('/dev/null').rdev);
  t.true(fs.lstatSync(path.join(d.h, 'plain')).isFile());
  for (const x of ['fifo', 'sock', 'null', 'plain']) t.deepEqual(...bothLstat(s, `${d.rel}/${x}`), x);
  // The mount is nodev: the device node cannot be opened through it.
  t.is(codeOf(() => fs.openSync(path.join(d.m, 'null'), 'r')), 'EACCES');
  // A fifo through the mount is a real fifo: a writer and a reader meet in the client.
  const r = pyJson<string>(`
p = sys.argv[1]
pid = os.fork()
if pid == 0:
    w = os.open(p, os.O_WRONLY); os.write(w, b"through the fifo"); os._exit(0)
rfd = os.open(p, os.O_RDONLY)
data = os.read(rfd, 100)
os.waitpid(pid, 0)
print(json.dumps(data.decode()))`, [path.join(d.m, 'fifo')]);
  t.is(r, 'through the fifo');
});

const RENAME2 = `
libc = ctypes.CDLL(None, use_errno=True)
def rename2(a, b, flags):
    if libc.renameat2(-100, a.encode(), -100, b.encode(), flags) != 0:
        raise OSError(ctypes.get_errno(), "renameat2")
NOREPLACE, EXCHANGE, WHITEOUT = 1, 2, 4
d = sys.argv[1]
p = lambda x: os.path.join(d, x)
def put(x, s):
    with open(p(x), "w") as f: f.write(s)
def get(x):
    with open(p(x)) as f: return f.read()
out = []
put("a", "A"); put("b", "B"); os.mkdir(p("dir")); put("dir/in", "I")
out.append(E(lambda: rename2(p("a"), p("b"), NOREPLACE)))
out.append([get("a"), get("b")])
out.append(E(lambda: rename2(p("a"), p("c"), NOREPLACE)))
out.append(sorted(os.listdir(d)))
out.append(E(lambda: rename2(p("c"), p("b"), EXCHANGE)))
out.append([get("c"), get("b")])
out.append(E(lambda: rename2(p("c"), p("dir"), EXCHANGE)))
out.append([os.path.isdir(p("c")), get("c/in"), get("dir")])
out.append(E(lambda: rename2(p("c"), p("missing"), EXCHANGE)))
out.append(E(lambda: rename2(p("b"), p("dir"), NOREPLACE | EXCHANGE)))
out.append(E(lambda: rename2(p("b"), p("w"), WHITEOUT)))
st = os.lstat(p("b")) if os.path.lexists(p("b")) else None
out.append(None if st is None else [stat.S_ISCHR(st.st_mode), os.major(st.st_rdev), os.minor(st.st_rdev)])
out.append(get("w"))
print(json.dumps(out))`;

test('renameat2: NOREPLACE, EXCHANGE and WHITEOUT as on a plain directory', (t) => {
  const d = sub();
  const viaMount = pyJson<unknown[]>(RENAME2, [d.m]);
  const onRef = pyJson<unknown[]>(RENAME2, [d.r]);
  t.deepEqual(viaMount, onRef);
  t.is(viaMount[0], 'ERR EEXIST');
  t.deepEqual(viaMount[5], ['B', 'A']);
  t.is(viaMount[8], 'ERR ENOENT');
  t.is(viaMount[9], 'ERR EINVAL');
  t.is(viaMount[10], 'OK', 'RENAME_WHITEOUT as root');
  t.deepEqual(viaMount[11], [true, 0, 0], 'whiteout is a 0/0 char device');
  t.deepEqual(fs.readdirSync(d.h).sort(), fs.readdirSync(d.r).sort());
  for (const x of ['c', 'dir', 'w', 'b']) t.deepEqual(...bothLstat(s, `${d.rel}/${x}`), x);
});

test('names: long, unicode and odd names round-trip; too long is ENAMETOOLONG', (t) => {
  const d = sub();
  const names = ['x'.repeat(255), 'ünï cödé ✓', 'with\nnewline', ' lead and trail ', '-dash', '.hidden', '\\back'];
  for (const name of names) fs.writeFileSync(path.join(d.m, name), name);
  t.deepEqual(fs.readdirSync(d.h).sort(), [...names].sort());
  for (const name of names) t.is(fs.readFileSync(path.join(d.m, name), 'utf8'), name);
  t.is(codeOf(() => fs.writeFileSync(path.join(d.m, 'y'.repeat(256)), '')), 'ENAMETOOLONG');
});
