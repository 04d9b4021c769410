// vfs-launch's command line: every refusal is one line naming the option and the fix, exit
// code 2, and nothing is created; the virtiofsd and libvirt forms are understood. Most cases
// run the launcher's entry function in this process (same code as the binary); a few run
// the real binary to check what a shell sees.
import test from 'ava';
import type { ExecutionContext } from 'ava';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import { planLaunch, runLauncher } from '../src/launcher/run.js';
import { daemonCommand, execBoundingSet } from '../src/launcher/spawn.js';
import { parseIdMap } from '../src/launcher/idmap.js';
import { LAUNCHER, ROOT } from './sandbox-helpers.js';

class Capture extends Writable {
  text = '';
  override _write(chunk: Buffer, _enc: BufferEncoding, done: () => void): void {
    this.text += chunk.toString();
    done();
  }
}

async function run(argv: string[]): Promise<{ code: number; out: string; err: string }> {
  const stdout = new Capture();
  const stderr = new Capture();
  const code = await runLauncher(argv, { stdout, stderr });
  return { code, out: stdout.text, err: stderr.text };
}

function tmp(t: ExecutionContext): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vfs-launch-opt-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

interface Case {
  name: string;
  argv: (dir: string) => string[];
  message: RegExp;
}

// Each case gets a fresh dir containing share/ (a directory), afile (a file) and sock-dir/.
const CASES: Case[] = [
  { name: 'missing shared dir', argv: (d) => ['--shared-dir', `${d}/nope`, '--socket-path', `${d}/sock-dir/s`], message: /^vfs-launch: --shared-dir: '.*\/nope' does not exist; create it or give an existing directory$/ },
  { name: 'shared dir is a file', argv: (d) => ['--shared-dir', `${d}/afile`, '--socket-path', `${d}/sock-dir/s`], message: /^vfs-launch: --shared-dir: '.*afile' is not a directory; give a directory$/ },
  { name: 'no shared dir at all', argv: (d) => ['--socket-path', `${d}/sock-dir/s`], message: /^vfs-launch: --shared-dir: required; give the directory to share$/ },
  { name: 'an option only vfs-launch passes', argv: (d) => ['--shared-dir', `${d}/share`, '--', '--socket-path', `${d}/s`, '--seccomp-bpf-fd', '0'], message: /^vfs-launch: --seccomp-bpf-fd: set by vfs-launch itself; remove it$/ },
  { name: 'the pid-file fd only vfs-launch passes', argv: (d) => ['--shared-dir', `${d}/share`, '--', '--socket-path', `${d}/s`, '--pid-file-fd', '0'], message: /^vfs-launch: --pid-file-fd: set by vfs-launch itself; remove it$/ },
  { name: 'overlapping --translate-uid rules', argv: (d) => ['--shared-dir', `${d}/share`, '--', '--socket-path', `${d}/s`, '--translate-uid', 'guest:0:100:10', '--translate-uid', 'squash-guest:9:0:1'], message: /^vfs-launch: --translate-uid: 'squash-guest:9:0:1': its guest-to-host range overlaps that of 'guest:0:100:10'; make the ranges disjoint$/ },
  { name: 'missing socket directory', argv: (d) => ['--shared-dir', `${d}/share`, '--', '--socket-path', `${d}/no-dir/s`], message: /^vfs-launch: --socket-path: directory '.*\/no-dir' does not exist; create it first$/ },
  { name: 'socket path is a regular file', argv: (d) => ['--shared-dir', `${d}/share`, '--socket-path', `${d}/afile`], message: /^vfs-launch: --socket-path: '.*afile' exists and is not a socket; remove it or choose another path$/ },
  { name: 'socket path too long', argv: (d) => ['--shared-dir', `${d}/share`, '--socket-path', `${d}/sock-dir/${'x'.repeat(120)}`], message: /^vfs-launch: --socket-path: '.*' is longer than the 107 bytes a unix socket path may have; use a shorter path$/ },
  { name: 'no transport', argv: (d) => ['--shared-dir', `${d}/share`], message: /^vfs-launch: --socket-path: required; give the vhost-user socket path \(or --fd N, or --mountpoint DIR\)$/ },
  { name: 'two transports', argv: (d) => ['--shared-dir', `${d}/share`, '--socket-path', `${d}/sock-dir/s`, '--fd', '0'], message: /^vfs-launch: --socket-path, --fd, --fuse-fd and --mountpoint are alternatives; give only one$/ },
  { name: 'unknown launcher-side option', argv: (d) => ['--shared-dir', `${d}/share`, '--frobnicate', '--socket-path', `${d}/sock-dir/s`], message: /^vfs-launch: --frobnicate: unknown option; run with --help for the list$/ },
  { name: 'unknown daemon-side option', argv: (d) => ['--shared-dir', `${d}/share`, '--', '--socket-path', `${d}/sock-dir/s`, '--turbo=1'], message: /^vfs-launch: --turbo: unknown option; run with --help for the list$/ },
  { name: 'stray positional argument', argv: (d) => ['--shared-dir', `${d}/share`, 'extra', '--socket-path', `${d}/sock-dir/s`], message: /^vfs-launch: 'extra': unexpected argument; daemon options start with --$/ },
  { name: 'shared dir twice, different values (across --)', argv: (d) => ['--shared-dir', `${d}/share`, '--', '--shared-dir', `${d}/sock-dir`, '--socket-path', `${d}/sock-dir/s`], message: /^vfs-launch: --shared-dir: given twice with different values \('.*\/share' and '.*\/sock-dir'\); keep one$/ },
  { name: 'cache twice, different values', argv: (d) => ['--shared-dir', `${d}/share`, '--cache', 'auto', '--socket-path', `${d}/sock-dir/s`, '--cache=never'], message: /^vfs-launch: --cache: given twice with different values \('auto' and 'never'\); keep one$/ },
  { name: 'sandbox twice through -o', argv: (d) => ['-o', `source=${d}/share,sandbox=chroot`, '--sandbox', 'none', '--socket-path', `${d}/sock-dir/s`], message: /^vfs-launch: --sandbox: given twice with different values \('chroot' and 'none'\); keep one$/ },
  { name: 'bad sandbox value', argv: (d) => ['--shared-dir', `${d}/share`, '--sandbox', 'jail', '--socket-path', `${d}/sock-dir/s`], message: /^vfs-launch: --sandbox: 'jail' is not one of namespace\|chroot\|none$/ },
  { name: 'bad seccomp value', argv: (d) => ['--shared-dir', `${d}/share`, '--seccomp=maybe', '--socket-path', `${d}/sock-dir/s`], message: /^vfs-launch: --seccomp: 'maybe' is not one of kill\|log\|trap\|none$/ },
  { name: 'bad log level', argv: (d) => ['--shared-dir', `${d}/share`, '--log-level', 'loud', '--socket-path', `${d}/sock-dir/s`], message: /^vfs-launch: --log-level: 'loud' is not one of error\|warn\|info\|debug\|trace\|off$/ },
  { name: 'uid map does not parse', argv: (d) => ['--shared-dir', `${d}/share`, '--uid-map', '0:100000:65536', '--socket-path', `${d}/sock-dir/s`], message: /^vfs-launch: --uid-map: '0:100000:65536' does not parse; expected :inner:outer:count: with count >= 1 \(e\.g\. :0:100000:65536:\)$/ },
  { name: 'gid map with count 0', argv: (d) => ['--shared-dir', `${d}/share`, '--gid-map=:0:100000:0:', '--socket-path', `${d}/sock-dir/s`], message: /^vfs-launch: --gid-map: ':0:100000:0:' does not parse/ },
  { name: 'uid map twice, different values', argv: (d) => ['--shared-dir', `${d}/share`, '--uid-map', ':0:1000:1:', '--uid-map', ':0:2000:1:', '--socket-path', `${d}/sock-dir/s`], message: /^vfs-launch: --uid-map: given twice with different values/ },
  { name: 'uid map without namespace', argv: (d) => ['--shared-dir', `${d}/share`, '--sandbox', 'none', '--uid-map', ':0:1000:1:', '--socket-path', `${d}/sock-dir/s`], message: /^vfs-launch: --uid-map\/--gid-map: only meaningful with --sandbox namespace/ },
  { name: 'unknown capability', argv: (d) => ['--shared-dir', `${d}/share`, '--modcaps', '+sys_admin:-teleport', '--socket-path', `${d}/sock-dir/s`], message: /^vfs-launch: --modcaps: 'teleport' is not a capability name \(e\.g\. chown or CAP_CHOWN; see capabilities\(7\)\)$/ },
  { name: 'capability without sign', argv: (d) => ['--shared-dir', `${d}/share`, '--modcaps', 'chown', '--socket-path', `${d}/sock-dir/s`], message: /^vfs-launch: --modcaps: 'chown' must start with \+ or -/ },
  { name: 'fd not open', argv: (d) => ['--shared-dir', `${d}/share`, '--fd=97'], message: /^vfs-launch: --fd: 97 is not an open file descriptor; pass the fd of a listening unix socket the caller opened$/ },
  { name: 'fd not a number', argv: (d) => ['--shared-dir', `${d}/share`, '--fd', 'three'], message: /^vfs-launch: --fd: expects a non-negative integer, got 'three'$/ },
  { name: 'rlimit above nr_open', argv: (d) => ['--shared-dir', `${d}/share`, '--rlimit-nofile', '999999999', '--socket-path', `${d}/sock-dir/s`], message: /^vfs-launch: --rlimit-nofile: 999999999 is above fs\.nr_open \(\d+\); give at most \d+, or 0 to leave the limit unchanged$/ },
  { name: '-o posix_lock (libvirt <lock posix=\'on\'/>)', argv: (d) => ['-o', `source=${d}/share,cache=none,posix_lock`, '--socket-path', `${d}/sock-dir/s`], message: /^vfs-launch: -o posix_lock: remote locks are not offered .*; remove it \(libvirt: <lock posix='off' flock='off'\/> or no <lock> element\), as virtiofsd also refuses it$/ },
  { name: '-o flock (libvirt <lock flock=\'on\'/>)', argv: (d) => ['-o', `source=${d}/share,flock`, '--socket-path', `${d}/sock-dir/s`], message: /^vfs-launch: -o flock: remote locks are not offered / },
  { name: 'unknown -o cache value', argv: (d) => ['-o', `source=${d}/share,cache=sometimes`, '--socket-path', `${d}/sock-dir/s`], message: /^vfs-launch: -o cache=sometimes: not one of none \(= never\), metadata, auto, always$/ },
  { name: 'unknown -o key', argv: (d) => ['-o', `source=${d}/share,turbo`, '--socket-path', `${d}/sock-dir/s`], message: /^vfs-launch: -o turbo: unknown option; known: / },
  { name: 'mountpoint missing', argv: (d) => ['--shared-dir', `${d}/share`, '--sandbox', 'none', '--mountpoint', `${d}/mnt`], message: /^vfs-launch: --mountpoint: '.*\/mnt' does not exist; create the directory first$/ },
  { name: 'mountpoint is a file', argv: (d) => ['--shared-dir', `${d}/share`, '--mountpoint', `${d}/afile`], message: /^vfs-launch: --mountpoint: '.*afile' is not a directory; give a directory to mount on$/ },
  { name: 'option without its value', argv: (d) => ['--shared-dir', `${d}/share`, '--socket-path'], message: /^vfs-launch: --socket-path: expects a value/ },
  { name: 'seccomp policy that is not JSON', argv: (d) => ['--shared-dir', `${d}/share`, '--seccomp-policy', `${d}/afile`, '--socket-path', `${d}/sock-dir/s`], message: /^vfs-launch: --seccomp: the policy does not compile: .*afile.*; fix the policy file or use --seccomp none$/ },
  { name: 'flag given a value', argv: (d) => ['--shared-dir', `${d}/share`, '--xattr=yes', '--socket-path', `${d}/sock-dir/s`], message: /^vfs-launch: --xattr: takes no value$/ },
];

for (const c of CASES) {
  test(`refused: ${c.name}`, async (t) => {
    const d = tmp(t);
    fs.mkdirSync(`${d}/share`);
    fs.mkdirSync(`${d}/sock-dir`);
    fs.writeFileSync(`${d}/afile`, '');
    const before = fs.readdirSync(d).sort();
    const r = await run(c.argv(d));
    t.is(r.code, 2);
    t.regex(r.err.trimEnd(), c.message);
    t.is(r.err.trim().split('\n').length, 1, 'one line');
    t.is(r.out, '');
    t.deepEqual(fs.readdirSync(d).sort(), before, 'nothing created');
    t.deepEqual(fs.readdirSync(`${d}/sock-dir`), []);
  });
}

test('the binary: a refused option exits 2 with one line on stderr, nothing on stdout', (t) => {
  const d = tmp(t);
  const r = spawnSync(process.execPath, [...LAUNCHER.slice(1), '--shared-dir', `${d}/missing`, '--', '--socket-path', `${d}/s`], { cwd: ROOT, encoding: 'utf8' });
  t.is(r.status, 2);
  t.is(r.stdout, '');
  t.is(r.stderr, `vfs-launch: --shared-dir: '${d}/missing' does not exist; create it or give an existing directory\n`);
  t.false(fs.existsSync(`${d}/s`));
});

test('the binary: --print-capabilities prints the vhost-user.json document', (t) => {
  const r = spawnSync(process.execPath, [...LAUNCHER.slice(1), '--print-capabilities'], { cwd: ROOT, encoding: 'utf8' });
  t.is(r.status, 0, r.stderr);
  t.deepEqual(JSON.parse(r.stdout), { type: 'fs', features: ['migrate-precopy', 'separate-options'] });
});

test('--help lists launcher and daemon options', async (t) => {
  const r = await run(['--help']);
  t.is(r.code, 0);
  t.regex(r.out, /Usage: vfs-launch \[launcher options\] -- \[daemon options\]/);
  t.regex(r.out, /--uid-map/);
  t.regex(r.out, /--socket-path/);
});

test('our form: launcher options before --, daemon options after; sandbox settings passed on', async (t) => {
  const d = tmp(t);
  const plan = await planLaunch(['--shared-dir', d, '--sandbox', 'chroot', '--seccomp', 'none', '--modcaps', '+sys_admin', '--rlimit-nofile', '5000', '--', '--socket', `${d}/s.sock`, '--cache', 'never']);
  t.is(plan.config.sharedDir, d);
  t.is(plan.config.sandbox, 'chroot');
  t.is(plan.config.socketPath, `${d}/s.sock`);
  t.is(plan.config.fs.cache, 'never');
  t.is(plan.config.modcaps, '+sys_admin');
  t.is(plan.config.rlimitNofile, 5000);
  for (const pair of [['--sandbox', 'chroot'], ['--seccomp', 'none'], ['--modcaps', '+sys_admin'], ['--rlimit-nofile', '5000'], ['--shared-dir', d]]) {
    const i = plan.daemonArgs.indexOf(pair[0]);
    t.true(i >= 0 && plan.daemonArgs[i + 1] === pair[1], `${pair.join(' ')} in ${plan.daemonArgs.join(' ')}`);
  }
  // chroot: the launcher execs the sh waiter, which starts node under setpriv with a
  // bounding set of kept caps + setup caps and a parent-death signal.
  const cmd = daemonCommand({ config: plan.config, daemonArgs: plan.daemonArgs });
  t.is(cmd.file, '/bin/sh');
  t.is(cmd.argv[1], '-c');
  t.is(cmd.env.UV_USE_IO_URING, '0');
  t.deepEqual(cmd.daemon.slice(0, 3), ['setpriv', '--pdeathsig', 'TERM']);
  t.true(cmd.daemon.includes('--no-new-privs'));
  t.is(cmd.argv.slice(-cmd.daemon.length).join(' '), cmd.daemon.join(' '), 'the daemon command ends the waiter\'s arguments');
  t.deepEqual(execBoundingSet(plan.config).sort(), ['chown', 'dac_override', 'fowner', 'fsetid', 'mknod', 'setfcap', 'setgid', 'setpcap', 'setuid', 'sys_admin', 'sys_chroot'].sort());
  // File handles (inodes or migration) need CAP_DAC_READ_SEARCH to survive the bounding set.
  const handles = { ...plan.config, fs: { ...plan.config.fs, migration: { ...plan.config.fs.migration, mode: 'file-handles' as const } } };
  t.true(execBoundingSet(handles).includes('dac_read_search'));
  t.true(execBoundingSet({ ...plan.config, fs: { ...plan.config.fs, inodeFileHandles: 'prefer' } }).includes('dac_read_search'));
  t.false(execBoundingSet(plan.config).includes('dac_read_search'));
});

test('virtiofsd form: every option before --, none after', async (t) => {
  const d = tmp(t);
  const plan = await planLaunch(['--socket-path', `${d}/vfs.sock`, '--shared-dir', d, '--cache=always', '--xattr', '--announce-submounts', '--thread-pool-size', '16', '--sandbox', 'namespace', '--seccomp', 'none', '--log-level', 'warn']);
  t.is(plan.config.sharedDir, d);
  t.is(plan.config.fs.cache, 'always');
  t.true(plan.config.fs.xattr);
  t.true(plan.config.fs.announceSubmounts);
  t.is(plan.config.threadPoolSize, 16);
  const cmd = daemonCommand({ config: plan.config, daemonArgs: plan.daemonArgs, uidMap: parseIdMap(':0:100000:65536:') });
  // The launcher execs unshare for the pid (and user) namespace without forking, so the
  // waiter stays in the host's mount namespace; the daemon makes the others as pid 1.
  t.true(cmd.file.endsWith('/unshare'), cmd.file);
  const sep = cmd.argv.indexOf('--');
  const outer = cmd.argv.slice(1, sep);
  for (const f of ['--pid', '--user', '--map-users=100000,0,65536']) t.true(outer.includes(f), f);
  for (const f of ['--fork', '--mount', '--net']) t.false(outer.includes(f), f);
  t.deepEqual(cmd.argv.slice(sep + 1, sep + 3), ['/bin/sh', '-c']);
  t.is(cmd.daemon[0], 'unshare');
  const inner = cmd.daemon.slice(1, cmd.daemon.indexOf('--'));
  t.deepEqual(inner, ['--mount', '--net', '--ipc', '--uts', '--propagation', 'slave']);
  const setpriv = cmd.daemon.slice(cmd.daemon.indexOf('--') + 1);
  t.deepEqual(setpriv.slice(0, 3), ['setpriv', '--pdeathsig', 'KILL']);
});

test('libvirt form: --fd=N, -o source=...,cache=...,sandbox=...,xattr, --thread-pool-size', async (t) => {
  const d = tmp(t);
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(path.join(d, 'libvirt.sock'), resolve));
  t.teardown(() => server.close());
  const fd = (server as unknown as { _handle: { fd: number } })._handle.fd;
  t.true(fd > 2);
  const plan = await planLaunch([`--fd=${fd}`, '-o', `source=${d},cache=always,sandbox=chroot,xattr`, '--thread-pool-size=4', '--seccomp=none']);
  t.is(plan.config.listenFd, fd);
  t.is(plan.config.sharedDir, d);
  t.is(plan.config.sandbox, 'chroot');
  t.is(plan.config.fs.cache, 'always');
  t.true(plan.config.fs.xattr);
  const noXattr = await planLaunch([`--fd=${fd}`, '-o', `source=${d},no_xattr,sandbox=none`, '--seccomp=none']);
  t.false(noXattr.config.fs.xattr);
  // libvirt 9.0's <cache mode='none'/> and <lock posix='off' flock='off'/>.
  const libvirt9 = await planLaunch([`--fd=${fd}`, '-o', `source=${d},cache=none,no_flock,no_posix_lock`, '--thread-pool-size=1', '--seccomp=none']);
  t.is(libvirt9.config.fs.cache, 'never');
  t.is(libvirt9.config.sharedDir, d);
});

test('--mountpoint is the launcher\'s: the daemon gets --fuse-fd 3 instead', async (t) => {
  const d = tmp(t);
  fs.mkdirSync(`${d}/mnt`);
  const plan = await planLaunch(['--shared-dir', d, '--mountpoint', `${d}/mnt`, '--seccomp', 'none']);
  t.is(plan.mountpoint, `${d}/mnt`);
  t.is(plan.config.fuseFd, 3);
  t.false(plan.daemonArgs.includes('--mountpoint'));
  t.is(plan.config.sandbox, 'namespace');
});

test('id maps: virtiofsd syntax with any separator', (t) => {
  t.deepEqual(parseIdMap(':0:100000:65536:'), { inner: 0, outer: 100000, count: 65536 });
  t.deepEqual(parseIdMap('/1000/1000/1/'), { inner: 1000, outer: 1000, count: 1 });
  for (const bad of ['', ':', '0:1:1', ':0:1:1', ':a:1:1:', ':0:1:0:', ':0:1:1:2:', `:0:${2 ** 32}:1:`]) t.is(parseIdMap(bad), undefined, bad);
});
