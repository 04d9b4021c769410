// Which FUSE opcodes ordinary programs make the kernel send through a /dev/fuse mount,
// and whether the core answered them without error. The server is the in-tree test entry
// (test/mount-serve.ts) with its opcode recorder: the only way to see, from outside the
// core, that a syscall really reached the server as the opcode we meant to exercise.
// Opcodes a Linux /dev/fuse client never sends with this configuration, and why:
//   DESTROY      sent only for fuseblk and virtiofs mounts (unmount just ends the connection)
//   ACCESS       not sent with default_permissions (the client checks access itself)
//   GETLK/SETLK/SETLKW, FLOCK   locks are not offered at INIT: the client keeps them local
//   INTERRUPT    needs a request still pending when its caller gets a signal: requests are
//                answered synchronously, nothing here waits long enough to be interrupted
//   SYNCFS       the client sends it for virtiofs only (syncfs() on a /dev/fuse mount is local)
//   BMAP, IOCTL, POLL, SETUPMAPPING, REMOVEMAPPING, NOTIFY_REPLY   not used by a plain mount
// Newer opcodes the 6.18 client tries first (STATX 52, COPY_FILE_RANGE_64 53) get ENOSYS
// from the core and the client falls back to GETATTR and COPY_FILE_RANGE.
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { mountFor, pyJson } from './mount-helpers.js';
import { Op, opName } from '../src/fs/fuse-abi.js';

type Counts = Record<string, { calls: number; errors: Record<string, number> }>;

const BATTERY = `
import fcntl
d = sys.argv[1]
p = lambda x: os.path.join(d, x)
libc = ctypes.CDLL(None, use_errno=True)
def chk(r, what):
    if r != 0: raise OSError(ctypes.get_errno(), what)
os.mkdir(p("dir"))
fd = os.open(p("dir/f"), os.O_CREAT | os.O_RDWR, 0o644)            # CREATE
os.write(fd, b"x" * 100000)                                          # WRITE
os.fsync(fd)                                                         # FSYNC
os.posix_fallocate(fd, 0, 200000)                                    # FALLOCATE
os.lseek(fd, 0, os.SEEK_DATA)                                        # LSEEK
os.close(fd)                                                         # FLUSH, RELEASE
fd = os.open(p("dir/f"), os.O_RDONLY)                                # OPEN
os.pread(fd, 4096, 0)                                                # READ
out = os.open(p("dir/copy"), os.O_CREAT | os.O_WRONLY, 0o644)
os.copy_file_range(fd, out, 50000, 0, 0)                             # COPY_FILE_RANGE
chk(libc.syncfs(fd), "syncfs")                                       # SYNCFS (virtiofs only)
os.close(out); os.close(fd)
os.chmod(p("dir/f"), 0o600)                                          # SETATTR
os.stat(p("dir/f"))                                                  # LOOKUP/GETATTR
os.symlink("f", p("dir/l")); os.readlink(p("dir/l"))                 # SYMLINK, READLINK
os.mkfifo(p("dir/fifo"))                                             # MKNOD
os.link(p("dir/f"), p("dir/h"))                                      # LINK
os.rename(p("dir/h"), p("dir/h2"))                                   # RENAME
chk(libc.renameat2(-100, p("dir/h2").encode(), -100, p("dir/h3").encode(), 1), "renameat2")  # RENAME2
os.unlink(p("dir/h3"))                                               # UNLINK
os.mkdir(p("dir/sub")); os.rmdir(p("dir/sub"))                       # MKDIR, RMDIR
os.listdir(p("dir"))                                                 # OPENDIR, READDIR(PLUS), RELEASEDIR
dfd = os.open(p("dir"), os.O_RDONLY | os.O_DIRECTORY); os.fsync(dfd); os.close(dfd)   # FSYNCDIR
os.statvfs(d)                                                        # STATFS
os.setxattr(p("dir/f"), "user.k", b"v"); os.getxattr(p("dir/f"), "user.k")
os.listxattr(p("dir/f")); os.removexattr(p("dir/f"), "user.k")      # xattrs
tfd = os.open(p("dir"), os.O_TMPFILE | os.O_RDWR, 0o600); os.close(tfd)   # TMPFILE
with open("/proc/sys/vm/drop_caches", "w") as f: f.write("2")       # FORGET / BATCH_FORGET
print(json.dumps("done"))`;

function summary(counts: Counts): string {
  return Object.entries(counts)
    .map(([op, c]) => `${opName.get(Number(op)) ?? op}=${c.calls}${Object.keys(c.errors).length ? ` errors ${JSON.stringify(c.errors)}` : ''}`)
    .join(', ');
}

test('ordinary syscalls reach the core as every opcode a /dev/fuse client sends, answered without error', async (t) => {
  const record = path.join(fs.mkdtempSync('/tmp/vfs-opcodes-'), 'counts.json');
  t.teardown(() => fs.rmSync(path.dirname(record), { recursive: true, force: true }));
  const s = await mountFor(t, ['--xattr', '--record-opcodes', record], undefined, 'serve');
  t.is(pyJson<string>(BATTERY, [s.mnt]), 'done');
  t.deepEqual(await s.stop(), { code: 0, signal: null });
  const counts = JSON.parse(fs.readFileSync(record, 'utf8')) as Counts;
  t.log(summary(counts));
  const expected = [
    Op.INIT, Op.LOOKUP, Op.GETATTR, Op.SETATTR, Op.READLINK, Op.SYMLINK, Op.MKNOD, Op.MKDIR, Op.UNLINK,
    Op.RMDIR, Op.RENAME, Op.RENAME2, Op.LINK, Op.OPEN, Op.CREATE, Op.TMPFILE, Op.READ, Op.WRITE, Op.FLUSH,
    Op.RELEASE, Op.FSYNC, Op.OPENDIR, Op.READDIRPLUS, Op.RELEASEDIR, Op.FSYNCDIR, Op.STATFS, Op.SETXATTR,
    Op.GETXATTR, Op.LISTXATTR, Op.REMOVEXATTR, Op.FALLOCATE, Op.LSEEK, Op.COPY_FILE_RANGE,
  ];
  // Errors that are the right answer: LOOKUP of a name about to be created, and the
  // client's check for security.capability before a write (ENODATA).
  const normal: Record<number, string> = { [Op.LOOKUP]: '-2', [Op.GETXATTR]: '-61' };
  for (const op of expected) {
    const c = counts[String(op)];
    t.truthy(c, `${opName.get(op)} was never sent`);
    if (!c) continue;
    const errors = Object.keys(c.errors).filter((e) => e !== normal[op]);
    t.deepEqual(errors, [], `${opName.get(op)} answered with errors ${JSON.stringify(c.errors)}`);
  }
  for (const [op, c] of Object.entries(counts)) {
    if (opName.has(Number(op))) continue;
    t.deepEqual(c.errors, { '-38': c.calls }, `opcode ${op} unknown to the core: ENOSYS`);
  }
  const forgets = (counts[String(Op.FORGET)]?.calls ?? 0) + (counts[String(Op.BATCH_FORGET)]?.calls ?? 0);
  t.true(forgets > 0, 'FORGET or BATCH_FORGET after drop_caches');
});

test('with --no-readdirplus the client lists with READDIR', async (t) => {
  const record = path.join(fs.mkdtempSync('/tmp/vfs-opcodes-'), 'counts.json');
  t.teardown(() => fs.rmSync(path.dirname(record), { recursive: true, force: true }));
  const s = await mountFor(t, ['--no-readdirplus', '--record-opcodes', record], (d) => {
    for (let i = 0; i < 100; i++) fs.writeFileSync(path.join(d.shared, `f${i}`), '');
  }, 'serve');
  t.is(fs.readdirSync(s.mnt).length, 100);
  t.deepEqual(await s.stop(), { code: 0, signal: null });
  const counts = JSON.parse(fs.readFileSync(record, 'utf8')) as Counts;
  t.log(summary(counts));
  t.truthy(counts[String(Op.READDIR)], 'READDIR sent');
  t.false(String(Op.READDIRPLUS) in counts, 'READDIRPLUS never sent');
  t.deepEqual(counts[String(Op.READDIR)]?.errors, {});
});
