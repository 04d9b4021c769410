// The built-in workload of `policy record` for a daemon serving a local FUSE mount: ordinary
// file operations through the mount, enough to make the file server use each kind of FUSE
// request it answers (lookup, create, read/write, attributes, links, renames, readdir,
// fsync, statfs, removal), so the recorded syscalls cover what a policy must allow.
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
    await fsp.rm(base, { recursive: true });
  }
}
