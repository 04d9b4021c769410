// The daemon's option parser: virtiofsd spellings accepted, every bad input refused
// with a message that names the option.
import test from 'ava';
import { parseDaemonArgs, UsageError } from '../src/daemon/options.js';

test('virtiofsd-style options parse into the config', (t) => {
  const cfg = parseDaemonArgs([
    '--shared-dir', '/srv', '--socket-path=/run/v.sock', '--cache', 'always', '--xattr',
    '--readonly', '--announce-submounts', '--no-readdirplus', '--sandbox', 'chroot', '--seccomp=log',
    '--thread-pool-size', '0', '--tag', 'myfs', '--log-level', 'debug',
  ]);
  t.is(cfg.sharedDir, '/srv');
  t.is(cfg.socketPath, '/run/v.sock');
  t.is(cfg.fs.cache, 'always');
  t.true(cfg.fs.xattr);
  t.true(cfg.fs.readonly);
  t.true(cfg.fs.announceSubmounts);
  t.false(cfg.fs.readdirplus);
  t.is(cfg.sandbox, 'chroot');
  t.is(cfg.seccomp, 'log');
  t.is(cfg.tag, 'myfs');
  t.is(cfg.logLevel, 'debug');
});

test('libvirt forms: --fd=N and -o source=,cache=,sandbox=,xattr', (t) => {
  const cfg = parseDaemonArgs(['--fd=3', '-o', 'source=/srv,cache=never,sandbox=none,xattr', '--thread-pool-size=16']);
  t.is(cfg.listenFd, 3);
  t.is(cfg.sharedDir, '/srv');
  t.is(cfg.fs.cache, 'never');
  t.is(cfg.sandbox, 'none');
  t.true(cfg.fs.xattr);
  t.is(cfg.threadPoolSize, 16);
});

test('--socket is an alias of --socket-path and underscores are accepted', (t) => {
  const cfg = parseDaemonArgs(['--shared_dir=/srv', '--socket', '/run/x.sock']);
  t.is(cfg.sharedDir, '/srv');
  t.is(cfg.socketPath, '/run/x.sock');
});

const bad: Array<[string[], RegExp]> = [
  [['--socket-path', '/s'], /--shared-dir: required/],
  [['--shared-dir', '/srv'], /--socket-path: required/],
  [['--shared-dir', '/srv', '--socket-path', '/s', '--cache', 'sometimes'], /--cache: 'sometimes' is not one of never\|metadata\|auto\|always/],
  [['--shared-dir', '/srv', '--socket-path', '/s', '--bogus'], /--bogus: unknown option/],
  [['--shared-dir', '/a', '--shared-dir', '/b', '--socket-path', '/s'], /--shared-dir: given twice with different values/],
  [['--shared-dir', '/srv', '--socket-path'], /--socket-path: expects a value/],
  [['--shared-dir', '/srv', '--fd', 'x'], /--fd: expects a non-negative integer/],
  [['--shared-dir', '/srv', '--fd', '3', '--socket-path', '/s'], /alternatives; give only one/],
  [['--shared-dir', '/srv', '--xattr=yes', '--fd', '3'], /--xattr: takes no value/],
  [['-o', 'source=/srv,frobnicate', '--fd', '3'], /-o frobnicate: unknown option/],
  [['--shared-dir', '/srv', '--mountpoint', '/mnt'], /--mountpoint: the daemon can mount itself only with --sandbox none/],
  [['stray'], /'stray': unexpected argument/],
];

for (const [argv, message] of bad) {
  test(`refuses ${argv.join(' ')}`, (t) => {
    const err = t.throws(() => parseDaemonArgs(argv), { instanceOf: UsageError });
    t.regex(err?.message ?? '', message);
  });
}

test('the same option twice with the same value is accepted', (t) => {
  const cfg = parseDaemonArgs(['--shared-dir', '/srv', '--shared-dir=/srv', '--fd', '3']);
  t.is(cfg.sharedDir, '/srv');
});

test('virtiofsd options with an equivalent here are accepted, with a note where behaviour differs', (t) => {
  const base = ['--shared-dir', '/srv', '--socket-path', '/run/v.sock'];
  const plain = parseDaemonArgs([...base, '--inode-file-handles=never', '--no-killpriv-v2', '--no-posix-acl']);
  t.deepEqual(plain.notes, []);
  t.false(plain.fs.preserveNoatime);
  t.is(plain.fs.inodeFileHandles, 'never');
  const noted = parseDaemonArgs([...base, '--inode-file-handles', 'prefer', '--killpriv-v2', '--preserve-noatime']);
  t.true(noted.fs.preserveNoatime);
  t.is(noted.fs.inodeFileHandles, 'prefer');
  t.is(parseDaemonArgs([...base, '--inode-file-handles=mandatory']).fs.inodeFileHandles, 'mandatory');
  t.true(noted.fs.killprivV2);
  t.false(plain.fs.killprivV2);
  t.false(plain.fs.posixAcl);
  t.deepEqual(noted.notes, []);
});

test('--migration-* options take virtiofsd values and defaults', (t) => {
  const base = ['--shared-dir', '/srv', '--socket-path', '/run/v.sock'];
  t.deepEqual(parseDaemonArgs(base).fs.migration, { mode: 'find-paths', onError: 'abort', verifyHandles: false, confirmPaths: false });
  const all = parseDaemonArgs([...base, '--migration-mode=file-handles', '--migration-on-error', 'guest-error', '--migration-verify-handles', '--migration_confirm_paths']);
  t.deepEqual(all.fs.migration, { mode: 'file-handles', onError: 'guest-error', verifyHandles: true, confirmPaths: true });
  // Each parse has its own migration options (not the defaults object).
  t.is(parseDaemonArgs(base).fs.migration.mode, 'find-paths');
});

test('virtiofsd options vfs does not implement are refused saying so and what to do', (t) => {
  const base = ['--shared-dir', '/srv', '--socket-path', '/run/v.sock'];
  const cases: [string[], RegExp][] = [
    [['--migration-mode=paths'], /^--migration-mode: 'paths' is not one of find-paths\|file-handles/],
    [['--migration-on-error=ignore'], /^--migration-on-error: 'ignore' is not one of abort\|guest-error/],
    [['--inode-file-handles=always'], /^--inode-file-handles: 'always' is not one of never\|prefer\|mandatory/],
    [['--no-such-thing'], /^--no-such-thing: unknown option; run with --help/],
  ];
  for (const [extra, re] of cases) {
    const e = t.throws(() => parseDaemonArgs([...base, ...extra]), { instanceOf: UsageError }, extra.join(' '));
    t.regex(e?.message ?? '', re, extra.join(' '));
  }
});

// What libvirt 9.0 (Debian 12) passes: qemuVirtioFSBuildCommandLine builds `--fd=N -o
// source=DIR[,cache=none|always][,sandbox=namespace|chroot][,xattr|no_xattr][,flock|no_flock]
// [,posix_lock|no_posix_lock] [--thread-pool-size=N] [-d]`, the source path's commas doubled.
const LIBVIRT_9_ACCEPTED: Array<[string, (cfg: ReturnType<typeof parseDaemonArgs>) => unknown, unknown]> = [
  ['source=/srv', (c) => c.sharedDir, '/srv'],
  ['source=/srv/a,,b,,,,c', (c) => c.sharedDir, '/srv/a,b,,c'],
  ['source=/srv,cache=none', (c) => c.fs.cache, 'never'],
  ['source=/srv,cache=always', (c) => c.fs.cache, 'always'],
  ['source=/srv,cache=never', (c) => c.fs.cache, 'never'],
  ['source=/srv,cache=metadata', (c) => c.fs.cache, 'metadata'],
  ['source=/srv,cache=auto', (c) => c.fs.cache, 'auto'],
  ['source=/srv,sandbox=namespace', (c) => c.sandbox, 'namespace'],
  ['source=/srv,sandbox=chroot', (c) => c.sandbox, 'chroot'],
  ['source=/srv,xattr', (c) => c.fs.xattr, true],
  ['source=/srv,no_xattr', (c) => c.fs.xattr, false],
  ['source=/srv,no_flock', (c) => [c.sharedDir, c.notes], ['/srv', []]],
  ['source=/srv,no_posix_lock', (c) => [c.sharedDir, c.notes], ['/srv', []]],
  ['source=/srv,cache=none,sandbox=chroot,no_xattr,no_flock,no_posix_lock', (c) => [c.fs.cache, c.sandbox, c.fs.xattr], ['never', 'chroot', false]],
];

for (const [list, get, want] of LIBVIRT_9_ACCEPTED) {
  test(`libvirt 9.0 -o ${list}`, (t) => {
    const cfg = parseDaemonArgs(['--fd=3', '-o', list]);
    t.is(cfg.listenFd, 3);
    t.deepEqual(get(cfg), want);
  });
}

test('libvirt 9.0 separate arguments: --thread-pool-size=N and -d', (t) => {
  const cfg = parseDaemonArgs(['--fd=7', '-o', 'source=/srv,cache=none', '--thread-pool-size=0', '-d']);
  t.is(cfg.listenFd, 7);
  t.is(cfg.threadPoolSize, 0);
  t.is(cfg.logLevel, 'debug');
  t.is(cfg.fs.cache, 'never');
});

test('-o posix_lock and -o flock are refused: remote locks are not offered', (t) => {
  for (const key of ['posix_lock', 'flock']) {
    const e = t.throws(() => parseDaemonArgs(['--fd=3', '-o', `source=/srv,${key}`]), { instanceOf: UsageError });
    t.regex(e?.message ?? '', new RegExp(`^-o ${key}: remote locks are not offered .*<lock posix='off' flock='off'/>`));
  }
});

test('other virtiofsd -o keys map to the long options', (t) => {
  const cfg = parseDaemonArgs(['--fd=3', '-o', 'source=/srv,loglevel=err,allow_direct_io,no_killpriv_v2,no_posix_acl,writeback,announce_submounts,no_readdirplus']);
  t.is(cfg.logLevel, 'error');
  t.true(cfg.fs.allowDirectIo);
  t.true(cfg.fs.writeback);
  t.true(cfg.fs.announceSubmounts);
  t.false(cfg.fs.readdirplus);
  t.is(parseDaemonArgs(['--fd=3', '-o', 'source=/srv,debug']).logLevel, 'debug');
  t.is(parseDaemonArgs(['--fd=3', '-o', 'source=/srv,modcaps=+sys_admin']).modcaps, '+sys_admin');
  t.true(parseDaemonArgs(['--fd=3', '-o', 'source=/srv,killpriv_v2']).fs.killprivV2);
});

test('bad -o values are refused naming the key and the accepted values', (t) => {
  const cases: Array<[string, RegExp]> = [
    ['source=/srv,cache=sometimes', /^-o cache=sometimes: not one of none \(= never\), metadata, auto, always$/],
    ['source=/srv,loglevel=loud', /^-o loglevel=loud: not one of debug, info, warn, err$/],
    ['source=/srv,sandbox=jail', /^--sandbox: 'jail' is not one of namespace\|chroot\|none$/],
    ['source=/srv,xattrmap=:map::', /^--xattrmap: rule 1 ':map::': the prepend field is not closed by ':'/],
    ['source=/srv,cache=none,cache=always', /^--cache: given twice with different values \('never' and 'always'\)/],
  ];
  for (const [list, re] of cases) {
    const e = t.throws(() => parseDaemonArgs(['--fd=3', '-o', list]), { instanceOf: UsageError }, list);
    t.regex(e?.message ?? '', re, list);
  }
});

test('--translate-uid/gid: repeatable, virtiofsd\'s separators and case, forbid-guest with two numbers', (t) => {
  const cfg = parseDaemonArgs(['--shared-dir', '/srv', '--socket-path', '/s', '--translate-uid', 'MAP/1000/0/1', '--translate-uid=guest:0:1000:1',
    '--translate-gid', 'forbid-guest,5,3', '--translate-gid', 'squash-host:100:7:50']);
  t.deepEqual(cfg.fs.translateUid.map((r) => [r.kind, r.base, r.target, r.count]), [['map', 1000, 0, 1], ['guest', 0, 1000, 1]]);
  t.deepEqual(cfg.fs.translateGid.map((r) => [r.kind, r.base, r.count]), [['forbid-guest', 5, 3], ['squash-host', 100, 50]]);
  // map's host side and a host rule overlap in the host-to-guest direction.
  const e = t.throws(() => parseDaemonArgs(['--shared-dir', '/srv', '--socket-path', '/s', '--translate-uid', 'map:0:1000:10', '--translate-uid', 'host:1005:0:1']), { instanceOf: UsageError });
  t.regex(e?.message ?? '', /^--translate-uid: 'host:1005:0:1': its host-to-guest range overlaps that of 'map:0:1000:10'; make the ranges disjoint$/);
  const mixed = t.throws(() => parseDaemonArgs(['--shared-dir', '/srv', '--socket-path', '/s', '--translate-uid', 'guest:1:2/3']), { instanceOf: UsageError });
  t.regex(mixed?.message ?? '', /expected 3 numbers/);
});

test('--announce-submounts is the default; --no-announce-submounts turns it off; both at once are refused', (t) => {
  const base = ['--shared-dir', '/srv', '--socket-path', '/s'];
  t.true(parseDaemonArgs(base).fs.announceSubmounts);
  t.false(parseDaemonArgs([...base, '--no-announce-submounts']).fs.announceSubmounts);
  t.throws(() => parseDaemonArgs([...base, '--no-announce-submounts', '--announce-submounts']), { message: /contradict/ });
  t.true(parseDaemonArgs([...base, '--allow-mmap', '--cache', 'never']).fs.allowMmap);
  t.deepEqual(parseDaemonArgs([...base, '--allow-mmap', '--cache', 'never']).notes, []);
});
