// --xattrmap: the rule parser (every type and scope, separators, white space, the map
// shorthand's expansion, an error naming the rule for each malformed form), the mapper in
// both directions (prefix, ok, bad, unsupported, no rule matching), and the daemon's
// option parser (implies --xattr; -o xattrmap=; --security-label / -o security_label).
import test from 'ava';
import { constants as osConstants } from 'node:os';
import { SCOPE_CLIENT, SCOPE_SERVER, XattrMapError, parseXattrMap, type XattrMap } from '../src/fs/xattr-map.js';
import { UsageError, parseDaemonArgs } from '../src/daemon/options.js';

const { EPERM, EOPNOTSUPP, ERANGE } = osConstants.errno;
const ALL = SCOPE_CLIENT | SCOPE_SERVER;

function rules(src: string): string[] {
  return parseXattrMap(src).rules.map((r) => `${r.type} ${r.scope} '${r.key.toString()}' '${r.prepend.toString()}' #${r.index}`);
}

/** The host name for a guest name, or the errno. */
function client(m: XattrMap, name: string): string | number {
  const out = Buffer.alloc(256);
  const b = Buffer.from(name);
  const n = m.mapClient(b, b.length, out);
  if (n < 0) return -n;
  t0(out[n] === 0, 'NUL-terminated');
  return out.toString('utf8', 0, n);
}

function t0(cond: boolean, what: string): void {
  if (!cond) throw new Error(what);
}

/** The guest's view of a host list, through both the size query and the listing. */
function server(m: XattrMap, names: string[]): string[] {
  const list = Buffer.from(names.map((n) => `${n}\0`).join(''));
  const size = m.mapServerList(list, list.length, null, 0, 0);
  const out = Buffer.alloc(size + 20, 0xff);
  const n = m.mapServerList(list, list.length, out, 4, size);
  t0(n === size, `size query ${size} but listing ${n}`);
  if (size > 0) t0(m.mapServerList(list, list.length, out, 4, size - 1) === -ERANGE, 'one byte short is ERANGE');
  return n === 0 ? [] : out.toString('utf8', 4, 4 + n - 1).split('\0');
}

test('every type and scope, fields as written', (t) => {
  t.deepEqual(rules(':prefix:client:trusted.:user.virtiofs.:'), [`prefix ${SCOPE_CLIENT} 'trusted.' 'user.virtiofs.' #1`]);
  t.deepEqual(rules(':ok:server::security.:'), [`ok ${SCOPE_SERVER} '' 'security.' #1`]);
  t.deepEqual(rules(':bad:all:::'), [`bad ${ALL} '' '' #1`]);
  t.deepEqual(rules(':unsupported:client:system.:system.:'), [`unsupported ${SCOPE_CLIENT} 'system.' 'system.' #1`]);
});

test('each rule has its own separator; white space (newlines too) between rules; rules may also abut', (t) => {
  const src = `
    /prefix/all/trusted./user.virtiofs./
    |bad|server||trusted.|
      xbadxclientxuser.virtiofs.xx
    :ok:all:::`;
  t.deepEqual(rules(src), [
    `prefix ${ALL} 'trusted.' 'user.virtiofs.' #1`,
    `bad ${SCOPE_SERVER} '' 'trusted.' #2`,
    `bad ${SCOPE_CLIENT} 'user.virtiofs.' '' #3`,
    `ok ${ALL} '' '' #4`,
  ]);
  t.deepEqual(rules(':prefix:all::user.virtiofs.::bad:all:::'), [`prefix ${ALL} '' 'user.virtiofs.' #1`, `bad ${ALL} '' '' #2`]);
  // A multi-byte separator, and fields holding white space and other separators.
  t.deepEqual(rules('§ok§client§user. a:b§§'), [`ok ${SCOPE_CLIENT} 'user. a:b' '' #1`]);
});

test('map expands as virtiofsd: without a key prefix all and refuse the rest; with one, also guard the prefix and pass the rest', (t) => {
  t.deepEqual(rules(':map::user.virtiofs.:'), [`prefix ${ALL} '' 'user.virtiofs.' #1`, `bad ${ALL} '' '' #1`]);
  t.deepEqual(rules(' :ok:client:user.:: /map/trusted./user.virtiofs./ '), [
    `ok ${SCOPE_CLIENT} 'user.' '' #1`,
    `prefix ${ALL} 'trusted.' 'user.virtiofs.' #2`,
    `bad ${ALL} 'user.virtiofs.' 'trusted.' #2`,
    `ok ${ALL} '' '' #2`,
  ]);
});

test('malformed maps: the error names the rule (number and text) and what is wrong', (t) => {
  const cases: [string, number | null, string, RegExp][] = [
    ['', null, '', /^no rules: give at least one/],
    ['  \n ', null, '', /^no rules/],
    [':tomato:all:::', 1, ':tomato:all:::', /type 'tomato' is not one of prefix, ok, bad, unsupported, map/],
    [':ok:all::: /prefix/helloworld///', 2, '/prefix/helloworld///', /scope 'helloworld' is not one of client, server, all/],
    [':prefix:client:hi', 1, ':prefix:client:hi', /the key field is not closed by ':'/],
    [':ok:all::: :prefix:all:trusted.:user.vm.', 2, ':prefix:all:trusted.:user.vm.', /the prepend field is not closed by ':'/],
    [':bad', 1, ':bad', /the type field is not closed by ':'/],
    [':ok:', 1, ':ok:', /the scope field is not closed/],
    [':map:trusted.:', 1, ':map:trusted.:', /the prepend field is not closed/],
    [':map:trusted.:user.x.::ok:all:::', 1, ':map:trusted.:user.x.:', /a map rule must be the last rule/],
    [':map::a.: :map::b.:', 1, ':map::a.:', /a map rule must be the last rule/],
    [`:prefix:all::${'p'.repeat(256)}:`, 1, `:prefix:all::${'p'.repeat(256)}:`, /the prepend is 256 bytes, longer than any xattr name \(255\)/],
    [':OK:all:::', 1, ':OK:all:::', /type 'OK'/],
  ];
  for (const [src, rule, text, re] of cases) {
    const e = t.throws(() => parseXattrMap(src), { instanceOf: XattrMapError }, JSON.stringify(src));
    t.is(e?.rule, rule, src);
    t.is(e?.ruleText, text, src);
    t.regex(e?.problem ?? '', re, src);
    t.is(e?.message, rule === null ? e?.problem : `rule ${rule} '${text}': ${e?.problem}`);
  }
});

test('client names: prefix prepends, ok passes, bad is EPERM, unsupported EOPNOTSUPP, first match wins', (t) => {
  const m = parseXattrMap(`
    :unsupported:client:system.posix_acl_:: :bad:client:user.virtiofs.::
    :prefix:client:trusted.:user.virtiofs.: :prefix:all:security.:user.virtiofs.:
    :ok:client:user.:: :bad:all:::`);
  t.is(client(m, 'trusted.overlay.opaque'), 'user.virtiofs.trusted.overlay.opaque');
  t.is(client(m, 'security.selinux'), 'user.virtiofs.security.selinux');
  t.is(client(m, 'user.mime_type'), 'user.mime_type');
  t.is(client(m, 'user.virtiofs.trusted.x'), EPERM, 'the mapped namespace is not reachable directly');
  t.is(client(m, 'system.posix_acl_access'), EOPNOTSUPP);
  t.is(client(m, 'system.nfs4_acl'), EPERM, 'the catch-all');
  t.is(client(m, 'trusted.' + 'x'.repeat(233)), 'user.virtiofs.trusted.' + 'x'.repeat(233), '255 bytes fit');
  t.is(client(m, 'trusted.' + 'x'.repeat(234)), ERANGE, 'a mapped name over 255 bytes');
  t.deepEqual(m.warnings, []);
});

test('host lists: prefix strips, ok passes, bad and unsupported hide; the size query matches the listing', (t) => {
  const m = parseXattrMap('/prefix/all/trusted./user.virtiofs./ /bad/server//trusted./ /unsupported/server//security.ima/ /bad/client/user.virtiofs.// /ok/all///');
  t.deepEqual(server(m, ['user.virtiofs.trusted.a', 'trusted.host', 'security.ima', 'security.selinux', 'user.plain']),
    ['trusted.a', 'security.selinux', 'user.plain']);
  const all = parseXattrMap(':map::user.virtiofs.:');
  t.deepEqual(server(all, ['user.virtiofs.security.selinux', 'user.other', 'security.selinux', 'user.virtiofs.x']), ['security.selinux', 'x']);
  t.deepEqual(server(all, ['user.other', 'trusted.t']), [], 'everything hidden: an empty list (size 0)');
  t.deepEqual(server(all, ['user.virtiofs.']), [], 'a host name that is only the prefix would be empty for the guest: hidden');
  t.deepEqual(server(all, []), []);
});

test('a map without catch-alls warns, and what no rule matches is refused and hidden', (t) => {
  const m = parseXattrMap(':prefix:client:trusted.:user.t.: :ok:server::user.:');
  t.is(m.warnings.length, 2);
  t.regex(m.warnings[0] ?? '', /no client or all rule has an empty key.*EPERM/);
  t.regex(m.warnings[1] ?? '', /no server or all rule has an empty prepend.*hidden/);
  t.is(client(m, 'trusted.a'), 'user.t.trusted.a');
  t.is(client(m, 'user.a'), EPERM);
  t.deepEqual(server(m, ['user.a', 'security.b']), ['user.a']);
});

test('daemon options: --xattrmap and -o xattrmap= imply --xattr; a bad map is a UsageError naming the rule', (t) => {
  const base = ['--shared-dir', '/srv', '--socket-path', '/run/v.sock'];
  const c = parseDaemonArgs([...base, '--xattrmap', ':map::user.virtiofs.:']);
  t.true(c.fs.xattr);
  t.is(c.fs.xattrmap?.rules.length, 2);
  t.true(parseDaemonArgs([...base, '--xattrmap=:ok:all:::']).fs.xattr);
  const legacy = parseDaemonArgs(['--fd=3', '-o', 'source=/srv,no_xattr,xattrmap=:map::user.virtiofs.:']);
  t.true(legacy.fs.xattr, 'as virtiofsd, the map wins over no_xattr');
  t.is(legacy.fs.xattrmap?.rules[0]?.prepend.toString(), 'user.virtiofs.');
  const warned = parseDaemonArgs([...base, '--xattrmap', ':prefix:all:trusted.:user.t.:']);
  t.is(warned.notes.length, 2, 'the missing catch-alls are logged at start');
  const e = t.throws(() => parseDaemonArgs([...base, '--xattrmap', ':ok:all::: :prefix:everywhere:::']), { instanceOf: UsageError });
  t.is(e?.message, "--xattrmap: rule 2 ':prefix:everywhere:::': scope 'everywhere' is not one of client, server, all");
  t.is(parseDaemonArgs(base).fs.xattrmap, null);
});

test('daemon options: --security-label and -o security_label imply --xattr', (t) => {
  const base = ['--shared-dir', '/srv', '--socket-path', '/run/v.sock'];
  const c = parseDaemonArgs([...base, '--security-label']);
  t.true(c.fs.securityLabel);
  t.true(c.fs.xattr);
  const legacy = parseDaemonArgs(['--fd=3', '-o', 'source=/srv,security_label']);
  t.true(legacy.fs.securityLabel);
  t.true(legacy.fs.xattr);
  t.false(parseDaemonArgs(base).fs.securityLabel);
  t.throws(() => parseDaemonArgs([...base, '--security-label=yes']), { instanceOf: UsageError, message: /--security-label: takes no value/ });
});
