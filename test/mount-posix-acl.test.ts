// --posix-acl and --killpriv-v2 through a real FUSE mount of the daemon as users run it
// (vfs-launch, --sandbox namespace, --seccomp kill). Each ACL case runs the same commands
// (setfacl, getfacl, umask + creations, access by other uids through setpriv) in a
// directory of the mount and in a plain directory of the same host file system: the host
// kernel's own answer is the expected one. Without --posix-acl the guest has no ACLs
// (EOPNOTSUPP from setfacl, host ACLs not listed), as with virtiofsd.
import test, { type ExecutionContext } from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { mountFor, run, subdirMaker, useMount, type RunResult, type Server } from './mount-helpers.js';

const SANDBOXED = ['--sandbox', 'namespace', '--seccomp', 'kill'];
const current = useMount(test, [...SANDBOXED, '--', '--posix-acl', '--log-level', 'debug']);
const subdir = subdirMaker(current, 'acl');

interface User { uid: number; gid: number; groups?: number[] }
const ROOT: User = { uid: 0, gid: 0, groups: [] };
const U1000: User = { uid: 1000, gid: 1000 };
const U1001: User = { uid: 1001, gid: 1001 };

/** A shell command as `u` (setpriv: real and effective ids, the given supplementary groups only). */
function sh(u: User, cwd: string, cmd: string): RunResult {
  const groups = u.groups !== undefined && u.groups.length > 0 ? ['--groups', u.groups.join(',')] : ['--clear-groups'];
  return run('setpriv', ['--reuid', String(u.uid), '--regid', String(u.gid), ...groups, '--', '/bin/sh', '-c', cmd], { cwd });
}

/** The same command in the mount's subdirectory and in the reference one: [mount, reference]. */
function both(u: User, d: { m: string; r: string }, cmd: string): [RunResult, RunResult] {
  return [sh(u, d.m, cmd), sh(u, d.r, cmd)];
}

function okBoth(t: ExecutionContext, u: User, d: { m: string; r: string }, cmd: string): string {
  const [m, r] = both(u, d, cmd);
  t.is(m.status, 0, `through the mount: ${cmd}: ${m.stderr}`);
  t.is(r.status, 0, `reference: ${cmd}: ${r.stderr}`);
  t.is(m.stdout, r.stdout, `same output as the host's own file system: ${cmd}`);
  return m.stdout;
}

function modeOf(p: string): string {
  return (fs.lstatSync(p).mode & 0o7777).toString(8);
}

/**
 * INIT's agreed flags from the daemon's debug log. The launcher mounts before the daemon
 * runs: a stat waits for INIT's answer, the log line follows through the pipe.
 */
async function agreedFlags(s: Server): Promise<number> {
  fs.statSync(s.mnt);
  for (let i = 0; i < 500; i++) {
    const m = /agreed 0x([0-9a-f]+)\//.exec(s.stderr());
    if (m !== null) return parseInt(m[1] ?? '0', 16);
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`no INIT line: ${s.stderr()}`);
}

function alive(t: ExecutionContext, s: Server): void {
  t.is(s.child.exitCode, null, `the daemon is still running: ${s.stderr()}`);
  t.notRegex(s.stderr(), /SIGSYS|seccomp violation/);
}

test('INIT agreed POSIX_ACL, DONT_MASK and SETXATTR_EXT, not HANDLE_KILLPRIV_V2', async (t) => {
  const flags = await agreedFlags(current());
  t.is(flags & (1 << 20), 1 << 20, 'POSIX_ACL');
  t.is(flags & (1 << 6), 1 << 6, 'DONT_MASK');
  t.is(flags & (1 << 29), 1 << 29, 'SETXATTR_EXT');
  t.is(flags & (1 << 28), 0, 'no HANDLE_KILLPRIV_V2 without --killpriv-v2');
});

test('setfacl/getfacl round trip: the host file carries the ACL, the mode follows it', (t) => {
  const d = subdir();
  const out = okBoth(t, ROOT, d, 'touch f && chmod 640 f && setfacl -m u:1000:rw,g:1001:r f && getfacl -n -c f && stat -c %a f');
  t.regex(out, /^user:1000:rw-$/m);
  t.regex(out, /^group:1001:r--$/m);
  t.regex(out, /^mask::rw-$/m);
  t.regex(out, /^660$/m, 'the group bits are the mask');
  // What the host sees is what the guest set.
  t.is(run('getfacl', ['-n', '-c', path.join(d.h, 'f')]).stdout, run('getfacl', ['-n', '-c', path.join(d.r, 'f')]).stdout);
  t.is(modeOf(path.join(d.h, 'f')), '660');
  okBoth(t, ROOT, d, 'setfacl -x u:1000 f && setfacl -b f && getfacl -n -c f && stat -c %a f');
  alive(t, current());
});

test('default ACL: inherited by files, directories and fifos, the umask ignored; without one the umask applies', (t) => {
  const d = subdir();
  okBoth(t, ROOT, d, 'mkdir acl plain && setfacl -d -m u:1000:rwx,g::r-x,o::---,m::rwx acl && getfacl -n -c acl');
  const out = okBoth(t, ROOT, d, 'umask 077 && touch acl/f plain/f && mkdir acl/d plain/d && mkfifo acl/p plain/p && '
    + 'stat -c "%n %a" acl/f acl/d acl/p plain/f plain/d plain/p && getfacl -n -c acl/f acl/d');
  t.regex(out, /^acl\/f 660$/m, 'file: the default ACL, not umask 077');
  t.regex(out, /^acl\/d 770$/m);
  t.regex(out, /^acl\/p 660$/m);
  t.regex(out, /^plain\/f 600$/m, 'no default ACL: umask 077 applied');
  t.regex(out, /^plain\/d 700$/m);
  t.regex(out, /^plain\/p 600$/m);
  t.regex(out, /^default:user:1000:rwx$/m, 'a new directory inherits the default ACL');
  const out2 = okBoth(t, ROOT, d, 'umask 027 && touch plain/g && mkdir plain/e && stat -c "%n %a" plain/g plain/e');
  t.regex(out2, /^plain\/g 640$/m);
  t.regex(out2, /^plain\/e 750$/m);
  // The host files themselves carry those modes (the daemon did not mask twice nor skip it).
  t.is(modeOf(path.join(d.h, 'acl/f')), '660');
  t.is(modeOf(path.join(d.h, 'plain/f')), '600');
  alive(t, current());
});

test('a non-owner granted or denied by an ACL entry; the mask limits it', (t) => {
  const d = subdir();
  okBoth(t, ROOT, d, 'chmod 755 . && echo secret > f && chmod 600 f && setfacl -m u:1000:r f && mkdir w && chmod 755 w && setfacl -m u:1000:rwx w');
  t.is(sh(U1000, d.m, 'cat f').stdout, 'secret\n', 'uid 1000 reads through its ACL entry');
  const denied = both(U1001, d, 'cat f');
  t.not(denied[0].status, 0);
  t.regex(denied[0].stderr, /Permission denied/, 'uid 1001 has no entry');
  t.is(denied[0].status, denied[1].status);
  const noWrite = both(U1000, d, 'echo x >> f');
  t.regex(noWrite[0].stderr, /Permission denied/, 'read only for uid 1000');
  t.is(noWrite[0].status, noWrite[1].status);
  // A directory entry lets uid 1000 create in a root-owned 0755 directory, and 1001 not.
  t.is(sh(U1000, d.m, 'touch w/mine && stat -c %u w/mine').stdout, '1000\n');
  t.regex(sh(U1001, d.m, 'touch w/theirs').stderr, /Permission denied/);
  // The mask entry caps the named entry.
  okBoth(t, ROOT, d, 'setfacl -m u:1000:rw f && setfacl -m m::r f && getfacl -n -c f');
  t.regex(sh(U1000, d.m, 'echo x >> f').stderr, /Permission denied/, 'mask r-- takes the write away');
  okBoth(t, ROOT, d, 'setfacl -m m::rw f');
  t.is(sh(U1000, d.m, 'echo x >> f && cat f').stdout, 'secret\nx\n', 'mask rw- gives it back');
  alive(t, current());
});

test('chmod rewrites the ACL mask', (t) => {
  const d = subdir();
  const out = okBoth(t, ROOT, d, 'touch f && setfacl -m u:1000:rwx f && chmod 640 f && getfacl -n -c f && chmod 770 f && getfacl -n -c f');
  t.regex(out, /^mask::r--$/m);
  t.regex(out, /^mask::rwx$/m);
  t.is(run('getfacl', ['-n', '-c', path.join(d.h, 'f')]).stdout, run('getfacl', ['-n', '-c', path.join(d.r, 'f')]).stdout);
  alive(t, current());
});

test('setfacl by the owner clears setgid unless the owner is in the group (primary or supplementary)', (t) => {
  const d = subdir();
  for (const dir of [d.m, d.r]) {
    for (const name of ['nonmember', 'primary', 'supplementary']) {
      const f = path.join(dir, name);
      fs.writeFileSync(f, '');
      fs.chownSync(f, 1000, 2000);
      fs.chmodSync(f, 0o2755);
    }
    fs.chmodSync(dir, 0o755);
  }
  const cases: [string, User][] = [
    ['nonmember', { uid: 1000, gid: 1000 }],
    ['primary', { uid: 1000, gid: 2000 }],
    ['supplementary', { uid: 1000, gid: 1000, groups: [2000] }],
  ];
  for (const [name, u] of cases) {
    const [m, r] = both(u, d, `setfacl -m u:1001:r ${name} && stat -c %a ${name}`);
    t.is(m.status, 0, m.stderr);
    t.is(m.stdout, r.stdout, `${name}: as the host kernel decides`);
    t.is(modeOf(path.join(d.h, name)), modeOf(path.join(d.r, name)), `${name}: the host file`);
  }
  t.is(modeOf(path.join(d.h, 'nonmember')), '755', 'setgid cleared for a caller outside the group');
  t.is(modeOf(path.join(d.h, 'supplementary')), '2755', 'kept for a member by a supplementary group');
  // Not the owner: EPERM, as the host kernel says for that user.
  const [m, r] = both(U1001, d, 'setfacl -m u:1001:rw primary');
  t.not(m.status, 0);
  t.regex(m.stderr, /Operation not permitted/);
  t.is(m.status, r.status);
  alive(t, current());
});

test('without --posix-acl: setfacl fails with EOPNOTSUPP, host ACLs are not shown, the umask is the client\'s', async (t) => {
  for (const extra of [['--xattr'], []]) {
    const s = await mountFor(t, [...SANDBOXED, '--', ...extra]);
    fs.writeFileSync(path.join(s.shared, 'hostacl'), '');
    t.is(run('setfacl', ['-m', 'u:1000:rw', path.join(s.shared, 'hostacl')]).status, 0);
    const set = sh(ROOT, s.mnt, 'touch f && setfacl -m u:1000:rw f');
    t.not(set.status, 0);
    t.regex(set.stderr, /Operation not supported/, `setfacl ${extra.join(' ')}`);
    t.notRegex(run('getfacl', ['-n', '-c', path.join(s.shared, 'f')]).stdout, /user:1000/, 'nothing reached the host file');
    const get = sh(ROOT, s.mnt, 'getfacl -n -c hostacl');
    t.notRegex(get.stdout, /user:1000/, 'the host ACL is not visible');
    if (extra.length > 0) t.notRegex(sh(ROOT, s.mnt, 'getfattr -d -m - hostacl').stdout, /posix_acl/);
    t.is(sh(ROOT, s.mnt, 'umask 027 && touch g && mkdir e && stat -c %a g e').stdout, '640\n750\n');
    t.is(s.child.exitCode, null, s.stderr());
  }
});


for (const killpriv of [true, false]) {
  test(`${killpriv ? '--killpriv-v2' : 'default (no killpriv v2)'}: writes, truncations and O_TRUNC opens by a non-owner clear setuid/setgid; root's do not`, async (t) => {
    const s = await mountFor(t, [...SANDBOXED, '--', '--log-level', 'debug', ...(killpriv ? ['--killpriv-v2'] : [])]);
    fs.chmodSync(s.mnt, 0o755);
    t.is(((await agreedFlags(s)) & (1 << 28)) !== 0, killpriv, 'HANDLE_KILLPRIV_V2 agreed only with --killpriv-v2');
    const make = (name: string, mode: number): string => {
      const f = path.join(s.mnt, name);
      fs.writeFileSync(f, 'data');
      fs.chmodSync(f, mode);
      return f;
    };
    const cases: [string, number, string, User, number][] = [
      ['w-suid', 0o4777, 'echo more >> w-suid', U1000, 0o777],
      ['w-sgid', 0o2777, 'echo more >> w-sgid', U1000, 0o777],
      // setgid without group-exec, writer outside the group: the kernel's rule since 6.2
      // (setattr_should_drop_sgid) clears it, which we apply under HANDLE_KILLPRIV_V2; the
      // FUSE client clearing it itself (no killpriv) still keeps the older rule (group-exec only).
      ['w-sgid-nox', 0o2767, 'echo more >> w-sgid-nox', U1000, killpriv ? 0o767 : 0o2767],
      ['t-suid', 0o4777, 'truncate -s 1 t-suid', U1000, 0o777],
      ['o-suid', 0o6777, ': > o-suid', U1000, 0o777],
      ['root-w', 0o6777, 'echo more >> root-w', ROOT, 0o6777],
      ['root-t', 0o4777, 'truncate -s 1 root-t', ROOT, 0o4777],
    ];
    for (const [name, mode, cmd, u, want] of cases) {
      make(name, mode);
      const r = sh(u, s.mnt, cmd);
      t.is(r.status, 0, `${cmd}: ${r.stderr}`);
      t.is(modeOf(path.join(s.shared, name)), want.toString(8), `${name}: the host file after '${cmd}' as uid ${u.uid}`);
      // A full stat: the client invalidates size and times after a write, not the mode, so a
      // statx asking for the mode alone (stat -c %a) may show the cached one for up to the
      // attribute timeout (1 s with --cache auto), as under virtiofsd.
      t.is(modeOf(path.join(s.mnt, name)), want.toString(8), `${name}: what the mount shows`);
    }
    t.is(s.child.exitCode, null, s.stderr());
    t.notRegex(s.stderr(), /SIGSYS/);
  });
}
