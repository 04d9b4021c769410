// --posix-acl and --killpriv-v2 on the daemon's command line, as virtiofsd takes them:
// --posix-acl implies --xattr and refuses id translation; each pair with
// its --no- form lets the one given last win; the -o spellings map to the same options.
import test from 'ava';
import { UsageError, parseDaemonArgs } from '../src/daemon/options.js';

const base = ['--shared-dir', '/srv', '--socket-path', '/run/v.sock'];

test('--posix-acl turns on POSIX ACLs and extended attributes; the default has neither', (t) => {
  const cfg = parseDaemonArgs([...base, '--posix-acl']);
  t.true(cfg.fs.posixAcl);
  t.true(cfg.fs.xattr, '--posix-acl implies --xattr');
  const plain = parseDaemonArgs(base);
  t.false(plain.fs.posixAcl);
  t.false(plain.fs.xattr);
  t.false(plain.fs.killprivV2, 'killpriv v2 is off by default, as in virtiofsd');
  const legacy = parseDaemonArgs(['--fd=3', '-o', 'source=/srv,posix_acl,killpriv_v2']);
  t.true(legacy.fs.posixAcl);
  t.true(legacy.fs.xattr);
  t.true(legacy.fs.killprivV2);
});

test('the last of --posix-acl/--no-posix-acl and --killpriv-v2/--no-killpriv-v2 wins', (t) => {
  t.false(parseDaemonArgs([...base, '--posix-acl', '--no-posix-acl']).fs.posixAcl);
  t.true(parseDaemonArgs([...base, '--no-posix-acl', '--posix-acl']).fs.posixAcl);
  t.false(parseDaemonArgs([...base, '--killpriv-v2', '--no-killpriv-v2']).fs.killprivV2);
  t.true(parseDaemonArgs([...base, '--no-killpriv-v2', '--killpriv-v2']).fs.killprivV2);
  t.false(parseDaemonArgs(['--fd=3', '-o', 'source=/srv,posix_acl,no_posix_acl']).fs.posixAcl);
});

test('--posix-acl implies --xattr even after -o no_xattr (as --xattrmap and --security-label do)', (t) => {
  t.true(parseDaemonArgs(['--fd=3', '-o', 'source=/srv,no_xattr,posix_acl']).fs.xattr);
  t.false(parseDaemonArgs(['--fd=3', '-o', 'source=/srv,posix_acl,no_posix_acl,no_xattr']).fs.xattr);
});

test('--posix-acl with --translate-uid/--translate-gid is refused; a later --no-posix-acl lifts it', (t) => {
  for (const extra of [['--translate-uid', 'map:1000:0:1'], ['--translate-gid', 'map:1000:0:1']]) {
    const e = t.throws(() => parseDaemonArgs([...base, '--posix-acl', ...extra]), { instanceOf: UsageError });
    t.regex(e?.message ?? '', /^--posix-acl cannot be used with --translate-uid\/--translate-gid/, extra.join(' '));
    t.false(parseDaemonArgs([...base, '--posix-acl', ...extra, '--no-posix-acl']).fs.posixAcl);
  }
});
