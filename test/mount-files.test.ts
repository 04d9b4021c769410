// Regular files through a /dev/fuse mount of the passthrough core, compared with the host
// directory behind it (and with the same operations on a plain directory where an
// outcome rather than a state is compared): data, open flags, truncate, fallocate,
// SEEK_DATA/SEEK_HOLE, large sparse offsets, times, statfs, unlinked-but-open files.
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import crypto from 'node:crypto';
import { useMount, subdirMaker, bothLstat, codeOf, pyJson, run, type Server } from './mount-helpers.js';

const server = useMount(test);
let s: Server;
// before hooks run concurrently: pick the server up once they are all done.
test.beforeEach(() => {
  s = server();
});

const sub = subdirMaker(() => s, 't');

test('written data is on the host and reads back through the mount', (t) => {
  const d = sub();
  const data = crypto.randomBytes(3 * 1024 * 1024 + 123);
  fs.writeFileSync(path.join(d.m, 'f'), data);
  t.true(fs.readFileSync(path.join(d.h, 'f')).equals(data));
  t.true(fs.readFileSync(path.join(d.m, 'f')).equals(data));
  const [viaMount, onHost] = bothLstat(s, `${d.rel}/f`);
  t.deepEqual(viaMount, onHost);
  // Host-side change seen through the mount (cache=auto revalidates on open).
  fs.writeFileSync(path.join(d.h, 'g'), 'from host');
  t.is(fs.readFileSync(path.join(d.m, 'g'), 'utf8'), 'from host');
});

test('O_APPEND, O_TRUNC and O_EXCL behave as on a plain directory', (t) => {
  const d = sub();
  const seq = (root: string): unknown[] => {
    const f = path.join(root, 'a');
    const out: unknown[] = [];
    fs.writeFileSync(f, 'hello');
    out.push(codeOf(() => fs.openSync(f, fs.constants.O_CREAT | fs.constants.O_EXCL | fs.constants.O_WRONLY)));
    const fd = fs.openSync(f, fs.constants.O_WRONLY | fs.constants.O_APPEND);
    fs.writeSync(fd, ' world', 0); // position is ignored with O_APPEND
    fs.closeSync(fd);
    out.push(fs.readFileSync(f, 'utf8'));
    const fd2 = fs.openSync(f, fs.constants.O_RDWR | fs.constants.O_TRUNC);
    out.push(fs.fstatSync(fd2).size);
    fs.writeSync(fd2, 'xy');
    fs.closeSync(fd2);
    out.push(fs.readFileSync(f, 'utf8'));
    const fd3 = fs.openSync(path.join(root, 'new'), fs.constants.O_CREAT | fs.constants.O_EXCL | fs.constants.O_WRONLY, 0o640);
    fs.closeSync(fd3);
    out.push((fs.statSync(path.join(root, 'new')).mode & 0o777).toString(8));
    return out;
  };
  const viaMount = seq(d.m);
  t.deepEqual(viaMount, seq(d.r));
  t.deepEqual(viaMount, ['EEXIST', 'hello world', 0, 'xy', '640']);
  t.is(fs.readFileSync(path.join(d.h, 'a'), 'utf8'), 'xy');
  t.deepEqual(...bothLstat(s, `${d.rel}/new`));
});

test('truncate and ftruncate change the host file size', (t) => {
  const d = sub();
  const f = path.join(d.m, 'f');
  fs.writeFileSync(f, Buffer.alloc(10000, 7));
  fs.truncateSync(f, 100);
  t.is(fs.statSync(path.join(d.h, 'f')).size, 100);
  const fd = fs.openSync(f, 'r+');
  fs.ftruncateSync(fd, 1 << 20);
  fs.closeSync(fd);
  t.is(fs.statSync(path.join(d.h, 'f')).size, 1 << 20);
  const back = fs.readFileSync(f);
  t.is(back.length, 1 << 20);
  t.true(back.subarray(0, 100).equals(Buffer.alloc(100, 7)));
  t.true(back.subarray(100).equals(Buffer.alloc((1 << 20) - 100)));
  t.deepEqual(...bothLstat(s, `${d.rel}/f`));
});

test('fallocate allocates, punches holes, keeps size; SEEK_DATA/SEEK_HOLE match the host', (t) => {
  const d = sub();
  const f = path.join(d.m, 'f');
  t.is(run('fallocate', ['-l', String(1 << 20), f]).status, 0);
  const hf = path.join(d.h, 'f');
  t.is(fs.statSync(hf).size, 1 << 20);
  t.true(fs.statSync(hf).blocks >= 2048);
  // Write data so SEEK_DATA has something to find, then punch a hole in the middle.
  fs.writeFileSync(f, Buffer.alloc(1 << 20, 1));
  const punch = run('fallocate', ['-p', '-o', String(256 * 1024), '-l', String(256 * 1024), f]);
  t.is(punch.status, 0, punch.stderr);
  t.is(fs.statSync(hf).size, 1 << 20);
  const keep = run('fallocate', ['-n', '-o', String(2 << 20), '-l', String(1 << 20), f]);
  t.is(keep.status, 0, keep.stderr);
  t.is(fs.statSync(hf).size, 1 << 20, 'FALLOC_FL_KEEP_SIZE keeps the size');
  const seeks = `
f = sys.argv[1]
fd = os.open(f, os.O_RDONLY)
out = []
for off in (0, 100000, 256*1024, 300000, 512*1024, 1048575):
    for wh in (os.SEEK_DATA, os.SEEK_HOLE):
        out.append(E(lambda: os.lseek(fd, off, wh)))
out.append(E(lambda: os.lseek(fd, 2<<20, os.SEEK_DATA)))
print(json.dumps(out))`;
  const viaMount = pyJson<unknown[]>(seeks, [f]);
  const onHost = pyJson<unknown[]>(seeks, [hf]);
  t.deepEqual(viaMount, onHost);
  t.is(viaMount[4], 512 * 1024, 'SEEK_DATA from inside the hole finds the data after it');
  t.is(viaMount[7], 300000, 'SEEK_HOLE from inside the hole stays there');
  t.is(viaMount[viaMount.length - 1], 'ERR ENXIO');
  const [m, h] = bothLstat(s, `${d.rel}/f`);
  t.deepEqual(m, h);
});

test('a sparse file past 4 GiB: write at 5 GiB, read back, same size as the host', (t) => {
  const d = sub();
  const f = path.join(d.m, 'big');
  const off = 5 * 1024 ** 3;
  const payload = crypto.randomBytes(65536);
  const fd = fs.openSync(f, 'w+');
  t.is(fs.writeSync(fd, payload, 0, payload.length, off), payload.length);
  const back = Buffer.alloc(payload.length);
  t.is(fs.readSync(fd, back, 0, back.length, off), back.length);
  fs.closeSync(fd);
  t.true(back.equals(payload));
  const hs = fs.statSync(path.join(d.h, 'big'));
  t.is(hs.size, off + payload.length);
  t.true(hs.blocks * 512 < 16 * 1024 * 1024, 'still sparse on the host');
  t.is(fs.statSync(f).size, off + payload.length);
  const hfd = fs.openSync(path.join(d.h, 'big'), 'r');
  const hb = Buffer.alloc(payload.length);
  fs.readSync(hfd, hb, 0, hb.length, off);
  fs.closeSync(hfd);
  t.true(hb.equals(payload));
  // A read straddling 4 GiB returns zeros, not an error.
  const zfd = fs.openSync(f, 'r');
  const z = Buffer.alloc(8192, 9);
  t.is(fs.readSync(zfd, z, 0, z.length, 4 * 1024 ** 3 - 4096), 8192);
  fs.closeSync(zfd);
  t.true(z.equals(Buffer.alloc(8192)));
});

test('utimens: explicit times, UTIME_NOW and UTIME_OMIT land on the host', (t) => {
  const d = sub();
  const f = path.join(d.m, 'f');
  fs.writeFileSync(f, 'x');
  // Whole seconds: Node passes times as doubles, fractions would not round-trip exactly.
  fs.utimesSync(f, 981173106, 1015218367);
  const hs = fs.statSync(path.join(d.h, 'f'), { bigint: true });
  t.is(hs.atimeNs, 981173106000000000n);
  t.is(hs.mtimeNs, 1015218367000000000n);
  // UTIME_OMIT for atime, UTIME_NOW for mtime, through utimensat.
  const res = pyJson<{ a: string; m: string; now: number }>(`
f = sys.argv[1]
libc = ctypes.CDLL(None, use_errno=True)
class TS(ctypes.Structure):
    _fields_ = [("s", ctypes.c_long), ("ns", ctypes.c_long)]
UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2
ts = (TS * 2)(TS(0, UTIME_OMIT), TS(0, UTIME_NOW))
if libc.utimensat(-100, f.encode(), ts, 0) != 0:
    raise OSError(ctypes.get_errno(), "utimensat")
st = os.stat(f)
import time
print(json.dumps({"a": str(st.st_atime_ns), "m": str(st.st_mtime_ns), "now": time.time_ns()}))`, [f]);
  const hs2 = fs.statSync(path.join(d.h, 'f'), { bigint: true });
  t.is(hs2.atimeNs, 981173106000000000n, 'atime omitted');
  t.true(Math.abs(Number(hs2.mtimeNs / 1000000n) - res.now / 1e6) < 5000, 'mtime set to now');
  t.is(res.m, String(hs2.mtimeNs));
  t.is(res.a, String(hs2.atimeNs));
  // futimes through an open handle.
  const fd = fs.openSync(f, 'r+');
  fs.futimesSync(fd, 1000, 2000);
  fs.closeSync(fd);
  t.is(fs.statSync(path.join(d.h, 'f')).mtimeMs, 2000000);
  t.deepEqual(...bothLstat(s, `${d.rel}/f`));
});

test('statfs of the mount reports the host file system', (t) => {
  const viaMount = fs.statfsSync(s.mnt);
  const onHost = fs.statfsSync(s.shared);
  t.is(viaMount.bsize, onHost.bsize);
  t.is(viaMount.blocks, onHost.blocks);
  t.is(viaMount.files, onHost.files);
  t.true(Math.abs(viaMount.bfree - onHost.bfree) < onHost.blocks / 100);
  const nm = pyJson<number[]>('print(json.dumps([os.statvfs(p).f_namemax for p in sys.argv[1:]]))', [s.mnt, s.shared]);
  t.is(nm[0], nm[1]);
});

test('an unlinked file stays readable and writable through its open fd', (t) => {
  const d = sub();
  const f = path.join(d.m, 'f');
  fs.writeFileSync(f, 'still here');
  const fd = fs.openSync(f, 'r+');
  fs.unlinkSync(f);
  t.false(fs.existsSync(path.join(d.h, 'f')));
  t.is(codeOf(() => fs.statSync(f)), 'ENOENT');
  const b = Buffer.alloc(10);
  t.is(fs.readSync(fd, b, 0, 10, 0), 10);
  t.is(b.toString(), 'still here');
  fs.writeSync(fd, 'STILL', 0);
  t.is(fs.readSync(fd, b, 0, 10, 0), 10);
  t.is(b.toString(), 'STILL here');
  t.is(fs.fstatSync(fd).nlink, 0);
  fs.closeSync(fd);
});

test('fsync, fdatasync, syncfs and copy_file_range', (t) => {
  const d = sub();
  const src = path.join(d.m, 'src');
  const data = crypto.randomBytes(300000);
  fs.writeFileSync(src, data);
  const fd = fs.openSync(src, 'r+');
  fs.fsyncSync(fd);
  fs.fdatasyncSync(fd);
  fs.closeSync(fd);
  t.is(run('sync', ['-f', src]).status, 0);
  const copied = pyJson<number>(`
a = os.open(sys.argv[1], os.O_RDONLY)
b = os.open(sys.argv[2], os.O_WRONLY | os.O_CREAT, 0o644)
n = 0
while True:
    k = os.copy_file_range(a, b, 1 << 20, 1000 + n, n)
    if k == 0: break
    n += k
print(json.dumps(n))`, [src, path.join(d.m, 'dst')]);
  t.is(copied, data.length - 1000);
  const dst = fs.readFileSync(path.join(d.h, 'dst'));
  t.is(dst.length, data.length - 1000);
  t.true(dst.equals(data.subarray(1000)));
});

test('chmod and chown through the mount change the host inode', (t) => {
  const d = sub();
  const f = path.join(d.m, 'f');
  fs.writeFileSync(f, '');
  fs.chmodSync(f, 0o4751);
  fs.chownSync(f, 4242, 4343);
  const hs = fs.statSync(path.join(d.h, 'f'));
  t.is(hs.uid, 4242);
  t.is(hs.gid, 4343);
  // chown by root keeps or clears setuid as the host kernel does; compare with a plain dir.
  const rf = path.join(d.r, 'f');
  fs.writeFileSync(rf, '');
  fs.chmodSync(rf, 0o4751);
  fs.chownSync(rf, 4242, 4343);
  t.is(hs.mode.toString(8), fs.statSync(rf).mode.toString(8));
  t.deepEqual(...bothLstat(s, `${d.rel}/f`));
});

test('POSIX and flock locks through the mount', (t) => {
  const d = sub();
  const f = path.join(d.m, 'f');
  fs.writeFileSync(f, 'lock me');
  const r = pyJson<unknown[]>(`
import fcntl, subprocess
f = sys.argv[1]
fd = os.open(f, os.O_RDWR)
fcntl.lockf(fd, fcntl.LOCK_EX)
# another process must not get the same lock
child = subprocess.run([sys.executable, "-c", "import fcntl,os,sys\\nfd=os.open(sys.argv[1], os.O_RDWR)\\ntry:\\n  fcntl.lockf(fd, fcntl.LOCK_EX|fcntl.LOCK_NB); print('got')\\nexcept OSError as e: print('busy')", f], capture_output=True, text=True)
fcntl.lockf(fd, fcntl.LOCK_UN)
child2 = subprocess.run([sys.executable, "-c", "import fcntl,os,sys\\nfd=os.open(sys.argv[1], os.O_RDWR)\\ntry:\\n  fcntl.flock(fd, fcntl.LOCK_EX|fcntl.LOCK_NB); print('got')\\nexcept OSError as e: print('busy')", f], capture_output=True, text=True)
fcntl.flock(fd, fcntl.LOCK_EX)
child3 = subprocess.run([sys.executable, "-c", "import fcntl,os,sys\\nfd=os.open(sys.argv[1], os.O_RDWR)\\ntry:\\n  fcntl.flock(fd, fcntl.LOCK_EX|fcntl.LOCK_NB); print('got')\\nexcept OSError as e: print('busy')", f], capture_output=True, text=True)
print(json.dumps([child.stdout.strip(), child2.stdout.strip(), child3.stdout.strip()]))`, [f]);
  t.deepEqual(r, ['busy', 'got', 'busy']);
});

test('O_TMPFILE: either served (and linkable into the tree) or refused with EOPNOTSUPP', (t) => {
  const d = sub();
  const r = pyJson<string>(`
d = sys.argv[1]
try:
    fd = os.open(d, os.O_TMPFILE | os.O_RDWR, 0o600)
except OSError as e:
    print(json.dumps("ERR " + errno.errorcode[e.errno])); sys.exit(0)
os.write(fd, b"anonymous")
# os.link() would link the /proc magic link itself: linkat with AT_SYMLINK_FOLLOW instead.
libc = ctypes.CDLL(None, use_errno=True)
if libc.linkat(-100, b"/proc/self/fd/%d" % fd, -100, os.path.join(d, "named").encode(), 0x400) != 0:
    raise OSError(ctypes.get_errno(), "linkat")
print(json.dumps("OK"))`, [d.m]);
  if (r === 'OK') t.is(fs.readFileSync(path.join(d.h, 'named'), 'utf8'), 'anonymous');
  else t.is(r, 'ERR EOPNOTSUPP');
});

test('inodes forgotten by the kernel (drop_caches) are looked up again correctly', (t) => {
  const d = sub();
  for (let i = 0; i < 300; i++) fs.writeFileSync(path.join(d.m, `f${i}`), String(i));
  const before = fs.readdirSync(d.m).map((e) => fs.statSync(path.join(d.m, e)).ino);
  fs.writeFileSync('/proc/sys/vm/drop_caches', '2');
  const after = fs.readdirSync(d.m).map((e) => fs.statSync(path.join(d.m, e)).ino);
  t.deepEqual(after, before);
  for (let i = 0; i < 300; i += 37) t.is(fs.readFileSync(path.join(d.m, `f${i}`), 'utf8'), String(i));
});
