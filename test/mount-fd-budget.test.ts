// The two ordinary guest behaviours that took the share down, through a real FUSE mount of
// the daemon as users run it (vfs-launch, --sandbox namespace, --seccomp kill):
// a setuid file's owner truncating it (the kernel clears the setuid bit in the same
// SETATTR, on the open handle: fchmod, once outside the policy), and a tree with more
// files than RLIMIT_NOFILE listed twice (one O_PATH fd per remembered inode ran out of
// fds). Also prints the daemon's fd count and memory while it lists, per
// --inode-file-handles mode.
import test, { type ExecutionContext } from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { spawn, spawnSync } from 'node:child_process';
import { mountFor, py, type Server } from './mount-helpers.js';
import { daemonCommand } from './entry-points.js';

const SANDBOXED = ['--sandbox', 'namespace', '--seccomp', 'kill'];
const DAEMON_MAIN = daemonCommand().at(-1) ?? '';

function children(pid: number): number[] {
  try {
    return fs.readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/).filter((x) => x !== '').map(Number);
  } catch {
    return [];
  }
}

/** The sandboxed daemon under the launcher (a node process running daemon/main). */
function daemonPid(launcher: number): number | undefined {
  const queue = [launcher];
  while (queue.length > 0) {
    const pid = queue.shift() as number;
    let argv: string[];
    try {
      argv = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
    } catch {
      continue;
    }
    if (pid !== launcher && argv[0] === process.execPath && argv.includes(DAEMON_MAIN)) return pid;
    queue.push(...children(pid));
  }
  return undefined;
}

export interface DaemonUsage { fds: number; rssKiB: number; privateKiB: number }

function usage(pid: number): DaemonUsage {
  const fds = fs.readdirSync(`/proc/${pid}/fd`).length;
  const rollup = fs.readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8');
  const kb = (k: string): number => Number(new RegExp(`^${k}:\\s+(\\d+)`, 'm').exec(rollup)?.[1] ?? 0);
  return { fds, rssKiB: kb('Rss'), privateKiB: kb('Private_Clean') + kb('Private_Dirty') };
}

function alive(s: Server): void {
  if (s.child.exitCode !== null || s.child.signalCode !== null) throw new Error(`the daemon died: ${s.stderr()}`);
}

test('a setuid file truncated by its non-root owner: setuid cleared, the sandboxed daemon lives', async (t) => {
  const s = await mountFor(t, SANDBOXED);
  const f = path.join(s.mnt, 'f');
  fs.writeFileSync(f, 'some bytes');
  fs.chownSync(f, 1000, 1000);
  fs.chmodSync(f, 0o4755);
  const r = py('fd = os.open(sys.argv[1], os.O_WRONLY)\nos.ftruncate(fd, 2)\nos.close(fd)\nprint(json.dumps(oct(os.stat(sys.argv[1]).st_mode)))', [f], { uid: 1000, gid: 1000 });
  t.is(r.status, 0, r.stderr);
  const st = fs.statSync(path.join(s.shared, 'f'));
  t.is(st.size, 2);
  t.is(st.mode & 0o6000, 0, 'setuid cleared on the host');
  t.is(fs.readFileSync(f, 'utf8'), 'so');
  alive(s);
  t.notRegex(s.stderr(), /SIGSYS|seccomp/);
});

/** Run a program without blocking the event loop (the fd sampler keeps running); stdout is only counted. */
function runCounting(cmd: string, args: string[], pattern: RegExp): Promise<{ status: number | null; matches: number; stderr: string }> {
  return new Promise((resolve) => {
    const c = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let matches = 0;
    let tail = '';
    let stderr = '';
    c.stdout.setEncoding('utf8');
    c.stdout.on('data', (d: string) => {
      const text = tail + d;
      const cut = text.lastIndexOf('\n');
      matches += (text.slice(0, cut + 1).match(pattern) ?? []).length;
      tail = text.slice(cut + 1);
    });
    c.stderr.setEncoding('utf8');
    c.stderr.on('data', (d: string) => { if (stderr.length < 100_000) stderr += d; });
    c.on('close', (status) => resolve({ status, matches: matches + (tail.match(pattern) ?? []).length, stderr }));
  });
}

function makeTree(root: string, dirs: number, perDir: number): void {
  const r = spawnSync('/usr/bin/python3', ['-c', [
    'import os, sys',
    'root, dirs, per = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])',
    'for d in range(dirs):',
    '    p = os.path.join(root, "d%04d" % d); os.mkdir(p)',
    '    for i in range(per): os.close(os.open(os.path.join(p, "f%06d" % i), os.O_CREAT | os.O_WRONLY, 0o644))',
  ].join('\n'), root, String(dirs), String(perDir)], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`making the tree: ${r.stderr}`);
}

/** ls -lR of the mount, twice, then find: every file seen, never EMFILE, fds under the limit. */
async function listTree(t: ExecutionContext, mode: string, dirs: number, perDir: number, limit: number, sandbox = 'namespace'): Promise<void> {
  const files = dirs * perDir;
  const s = await mountFor(t, ['--sandbox', sandbox, '--seccomp', 'kill', '--rlimit-nofile', String(limit), '--', `--inode-file-handles=${mode}`], (d) => makeTree(d.shared, dirs, perDir));
  // The launcher mounts before it starts the daemon: wait for the daemon to appear.
  let pid: number | undefined;
  for (let i = 0; i < 600 && pid === undefined; i++) {
    pid = daemonPid(s.child.pid ?? 0);
    if (pid === undefined) await new Promise((r) => setTimeout(r, 50));
  }
  if (pid === undefined) throw new Error('daemon process not found');
  let peak: DaemonUsage = usage(pid);
  const sampler = setInterval(() => {
    try {
      const u = usage(pid);
      if (u.fds > peak.fds) peak = { ...u };
      if (u.rssKiB > peak.rssKiB) peak.rssKiB = u.rssKiB;
    } catch { /* the daemon may be gone; alive() says so */ }
  }, 100);
  t.teardown(() => clearInterval(sampler));
  const started = Date.now();
  for (const round of [1, 2]) {
    const ls = await runCounting('ls', ['-lR', s.mnt], /^-rw-r--r-- /gm);
    t.is(ls.status, 0, `ls -lR round ${round}: ${ls.stderr.slice(0, 2000)}`);
    t.notRegex(ls.stderr, /Too many open files/);
    t.is(ls.matches, files, `ls -lR round ${round} lists every file`);
    alive(s);
  }
  const find = await runCounting('find', [s.mnt, '-type', 'f'], /^.+$/gm);
  t.is(find.status, 0, find.stderr.slice(0, 2000));
  t.is(find.matches, files, 'find sees every file afterwards');
  clearInterval(sampler);
  const end = usage(pid);
  t.true(peak.fds < limit, `daemon fds peaked at ${peak.fds}, limit ${limit}`);
  t.log(`--sandbox ${sandbox} --inode-file-handles=${mode}, ${files} files, RLIMIT_NOFILE ${limit}: ls -lR x2 + find in ${((Date.now() - started) / 1000).toFixed(1)} s; ` +
    `daemon fds peak ${peak.fds} (end ${end.fds}), RSS peak ${(peak.rssKiB / 1024).toFixed(1)} MiB (end ${(end.rssKiB / 1024).toFixed(1)} MiB, private ${(end.privateKiB / 1024).toFixed(1)} MiB)`);
  alive(s);
}

for (const sandbox of ['namespace', 'chroot', 'none']) {
  for (const mode of ['never', 'prefer']) {
    test(`12,000 files under RLIMIT_NOFILE 4096, ls -lR twice (--sandbox ${sandbox}, --inode-file-handles=${mode})`, async (t) => {
      t.timeout(10 * 60_000);
      await listTree(t, mode, 12, 1000, 4096, sandbox);
    });
  }
}

// The 1,000,000-file listing under RLIMIT_NOFILE 20,000: about 7 minutes for both modes at once here.
for (const mode of ['never', 'prefer']) {
  test(`1,000,000 files under RLIMIT_NOFILE 20,000, ls -lR twice (--inode-file-handles=${mode})`, async (t) => {
    t.timeout(60 * 60_000);
    await listTree(t, mode, 100, 10000, 20000);
  });
}
