// `policy record` end to end: the daemon serves a local FUSE mount under strace -f with
// --seccomp log, the built-in workload runs on the mount, and the fragment printed lists
// the file server's syscalls from after the filter install, not the start-up ones.
import test from 'ava';
import { execa } from 'execa';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parsePolicy } from '../src/sandbox/seccomp/policy.js';

const CLI = fileURLToPath(new URL('./policy-cli.ts', import.meta.url));
const ROOT = fileURLToPath(new URL('..', import.meta.url));

test('record traces the daemon through the built-in workload and prints a profile fragment', async (t) => {
  const base = mkdtempSync(join(tmpdir(), 'vfs-policy-record-'));
  const share = join(base, 'share');
  const mnt = join(base, 'mnt');
  execFileSync('mkdir', ['-m', '755', share, mnt]);
  t.teardown(() => {
    // The daemon cannot always undo its own mount once its capabilities are dropped.
    try { execFileSync('umount', ['-l', mnt], { stdio: 'ignore' }); } catch { /* not mounted */ }
    rmSync(base, { recursive: true, force: true });
  });
  const out = join(base, 'fragment.json');
  const r = await execa(process.execPath, ['--import', 'tsx', CLI, 'policy', 'record', '-o', out, '--',
    '--shared-dir', share, '--mountpoint', mnt, '--sandbox', 'none'], { cwd: ROOT, reject: false, timeout: 240000 });
  t.is(r.exitCode, 0, r.stderr);
  t.regex(r.stderr, /record: strace -f .*--seccomp log/);
  t.regex(r.stderr, /record: \d+ distinct syscalls from \d+ threads/);
  t.notRegex(r.stderr, /installed no seccomp filter/);
  const frag = parsePolicy(readFileSync(out, 'utf8'), 'fragment.json');
  const names = frag.rules.map((x) => x.names[0]!);
  for (const n of ['openat', 'pwrite64', 'pread64', 'getdents64', 'mkdirat', 'unlinkat', 'statx', 'exit_group']) {
    t.true(names.includes(n), `${n} recorded`);
  }
  // Start-up calls made before the filter (exec, mounting, module loading) are not in it.
  for (const n of ['execve', 'mount', 'seccomp', 'prctl']) t.false(names.includes(n), `${n} not recorded`);
  t.true(frag.rules.every((x) => /^recorded: \d+ calls during the built-in file workload/.test(x.comment ?? '')));
});
