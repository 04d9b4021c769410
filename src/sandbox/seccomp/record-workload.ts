// The built-in workload of `policy record` for a daemon serving a local FUSE mount: ordinary
// file operations through the mount, enough to make the file server use each kind of FUSE
// request it answers (lookup, create, read/write, attributes, links, renames, readdir,
// fsync, statfs, removal), so the recorded syscalls cover what a policy must allow.
import { spawnSync } from 'node:child_process';
import { constants as fsc, promises as fsp, readFileSync, statfsSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

/** Resolves once `mountpoint` appears in /proc/self/mountinfo as a FUSE mount. */
export async function waitForFuseMount(mountpoint: string, timeoutMs = 15000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const info = readFileSync('/proc/self/mountinfo', 'utf8');
    if (info.split('\n').some((l) => l.split(' ')[4] === mountpoint && / - fuse/.test(l))) return;
    await sleep(100);
  }
  throw new Error(`record: ${mountpoint} did not become a FUSE mount within ${timeoutMs} ms`);
}

const PY_OPS = `
import os, sys, fcntl
b = sys.argv[1]
p = os.path.join(b, 'f8')
try:
    os.setxattr(p, 'user.vfs', b'1'); os.getxattr(p, 'user.vfs'); os.listxattr(p); os.removexattr(p, 'user.vfs')
except OSError: pass
try:
    fd = os.open(b, os.O_TMPFILE | os.O_RDWR, 0o600); os.write(fd, b'tmp'); os.close(fd)
except OSError: pass
fd = os.open(p, os.O_RDWR)
for f in (lambda: fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB), lambda: fcntl.lockf(fd, fcntl.LOCK_UN),
          lambda: fcntl.flock(fd, fcntl.LOCK_EX), lambda: fcntl.flock(fd, fcntl.LOCK_UN),
          lambda: os.posix_fallocate(fd, 0, 1 << 16), lambda: os.lseek(fd, 0, os.SEEK_DATA),
          lambda: os.lseek(fd, 0, os.SEEK_HOLE), lambda: os.mkfifo(os.path.join(b, 'fifo'))):
    try: f()
    except OSError: pass
os.close(fd)
`;

export async function fileWorkload(dir: string, rounds = 3): Promise<void> {
  for (let round = 0; round < rounds; round++) {
    const base = join(dir, `vfs-record-${process.pid}-${round}`);
    await fsp.mkdir(base);
    const big = Buffer.alloc(3 << 20, round + 1);
    for (let i = 0; i < 50; i++) await fsp.writeFile(join(base, `f${i}`), `file ${i}\n`);
    await fsp.writeFile(join(base, 'big'), big);
    const back = await fsp.readFile(join(base, 'big'));
    if (!back.equals(big)) throw new Error('record workload: read back differs');
    const fh = await fsp.open(join(base, 'big'), 'r+');
    await fh.write(Buffer.from('patch'), 0, 5, 1 << 20);
    await fh.read(Buffer.alloc(4096), 0, 4096, 2 << 20);
    await fh.datasync();
    await fh.sync();
    await fh.truncate(1 << 20);
    await fh.chmod(0o640);
    await fh.utimes(new Date(1e12), new Date(1e12));
    await fh.stat();
    await fh.close();
    await fsp.readdir(base, { withFileTypes: true });
    await fsp.symlink('f0', join(base, 'sym'));
    await fsp.readlink(join(base, 'sym'));
    await fsp.lstat(join(base, 'sym'));
    await fsp.link(join(base, 'f1'), join(base, 'hard'));
    await fsp.rename(join(base, 'f2'), join(base, 'renamed'));
    await fsp.copyFile(join(base, 'f3'), join(base, 'copy'));
    await fsp.copyFile(join(base, 'f3'), join(base, 'copy2'), fsc.COPYFILE_FICLONE);
    await fsp.access(join(base, 'f4'), fsc.R_OK | fsc.W_OK);
    await fsp.chmod(join(base, 'f5'), 0o600);
    await fsp.truncate(join(base, 'f6'), 100);
    await fsp.appendFile(join(base, 'f7'), 'more\n');
    await fsp.stat(join(base, 'missing')).catch(() => undefined);
    statfsSync(base);
    await fsp.mkdir(join(base, 'sub/deeper'), { recursive: true });
    // Another user's requests make the server switch credentials (create, mkdir, symlink).
    await fsp.mkdir(join(base, 'public'), { mode: 0o1777 });
    await fsp.chmod(join(base, 'public'), 0o1777);
    spawnSync(process.execPath, ['-e', `const fs = require('fs'); const d = ${JSON.stringify(join(base, 'public'))};
      fs.writeFileSync(d + '/mine', 'x'); fs.mkdirSync(d + '/dir'); fs.symlinkSync('mine', d + '/ln');
      fs.renameSync(d + '/mine', d + '/mine2'); fs.unlinkSync(d + '/mine2');`], { uid: 65534, gid: 65534, stdio: 'ignore' });
    // What node:fs cannot reach: xattrs, O_TMPFILE, POSIX locks, fallocate, SEEK_DATA, mknod.
    spawnSync('python3', ['-c', PY_OPS, base], { stdio: 'ignore' });
    await fsp.rm(base, { recursive: true });
  }
}
