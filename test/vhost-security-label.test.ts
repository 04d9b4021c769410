// --security-label (FUSE_SECURITY_CTX) against the real daemon under vfs-launch
// (--sandbox namespace --seccomp kill), driven by the test frontend: no LSM on this host
// makes the kernel send a label, so the frontend sends CREATE, MKDIR, MKNOD, SYMLINK and
// TMPFILE with security-context extensions as fs/fuse/dir.c lays them out (6.3+: counted in
// total_extlen; older kernels: appended after the names), and the test checks the xattr
// on the host file; the label name goes through --xattrmap; a label the host refuses
// removes the new entry; malformed extensions fail with EINVAL, a log line, nothing
// created, and the daemon keeps serving.
import test, { type ExecutionContext } from 'ava';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { constants as osConstants } from 'node:os';
import { startDaemon, type Daemon } from './frontend/daemons.js';
import { launcherCommand } from './entry-points.js';
import { VirtioFsFrontend } from './frontend/virtio-fs.js';
import { FuseClient, FuseError, O_RDWR, O_CREAT, O_EXCL, S_IFREG, S_IFDIR } from './frontend/fuse-client.js';
import { crashSigns } from './frontend/harness.js';
import * as F from './frontend/fuse-requests.js';
import { pyJson } from './mount-helpers.js';

const { EINVAL, EPERM, EPROTO } = osConstants.errno;
const S_IFIFO = 0o010000;
const LABEL = Buffer.from('system_u:object_r:container_file_t:s0\0');
const SELINUX = 'security.selinux';

interface Env { shared: string; d: Daemon; c: FuseClient }

async function start(t: ExecutionContext, args: string[], init = true): Promise<Env> {
  const parent = fs.mkdtempSync(path.join(os.tmpdir(), 'vfs-secctx-'));
  const shared = path.join(parent, 'shared');
  fs.mkdirSync(shared);
  const d = await startDaemon('vfs', {
    sharedDir: shared, vfsCommand: launcherCommand(), sandbox: 'namespace',
    extraArgs: ['--seccomp', 'kill', ...args],
  });
  t.teardown(async () => {
    await d.stop();
    fs.rmSync(parent, { recursive: true, force: true });
    fs.rmSync(path.dirname(d.socketPath), { recursive: true, force: true });
  });
  const fe = VirtioFsFrontend.open({ socketPath: d.socketPath });
  t.teardown(() => fe.close());
  const c = new FuseClient(fe);
  if (init) c.doInit(F.InitFlag.ASYNC_READ | F.InitFlag.BIG_WRITES | F.INIT_EXT, F.SECURITY_CTX | F.CREATE_SUPP_GROUP);
  return { shared, d, c };
}

type Layout = 'extlen' | 'appended' | 'none';

/** Send a creating request with `ext` after its arguments; the reply's errno (0 on success) and body. */
function send(c: FuseClient, op: number, args: Buffer, ext: Buffer, layout: Layout = 'extlen'): { errno: number; body: Buffer } {
  const replyBody = op === F.Op.CREATE || op === F.Op.TMPFILE ? F.ENTRY_OUT + F.OPEN_OUT : F.ENTRY_OUT;
  const parts = layout === 'none' ? [args] : [args, ext];
  const req = F.request(op, F.ROOT_ID, parts, { totalExtlen: layout === 'extlen' ? ext.length / 8 : 0 });
  const r = c.fe.call([req], [F.OUT_HEADER, replyBody]);
  if (r === undefined) throw new Error('no reply');
  return { errno: r.header.error === 0 ? 0 : -r.header.error, body: r.body };
}

const createArgs = (name: string): Buffer => F.createIn(name, O_RDWR | O_CREAT | O_EXCL, S_IFREG | 0o644);
const mkdirArgs = (name: string): Buffer => F.mkdirIn(name, S_IFDIR | 0o755);
const fifoArgs = (name: string): Buffer => F.mknodIn(name, S_IFIFO | 0o644);
const regArgs = (name: string): Buffer => F.mknodIn(name, S_IFREG | 0o600);
const linkArgs = (name: string): Buffer => F.symlinkIn(name, 'target');
const ctx = (value = LABEL, name = SELINUX): Buffer => F.secctxExt({ name, value });

/** The host's xattrs of a path (not following symlinks), name -> hex value. */
function hostXattrs(p: string): Record<string, string> {
  return pyJson<Record<string, string>>(
    'p = sys.argv[1]\nprint(json.dumps({n: os.getxattr(p, n, follow_symlinks=False).hex() for n in os.listxattr(p, follow_symlinks=False)}))', [p]);
}

/** GETXATTR through the daemon (for a TMPFILE inode, which has no host name). */
function getxattr(c: FuseClient, node: bigint, name: string): Buffer {
  const args = Buffer.alloc(8);
  args.writeUInt32LE(4096, 0);
  const r = c.fe.call([F.request(22, node, [args, F.cstr(name)])], [F.OUT_HEADER, 4096]);
  if (r === undefined || r.header.error !== 0) throw new FuseError('GETXATTR', -(r?.header.error ?? 0));
  return r.body.subarray(0, r.header.len - F.OUT_HEADER);
}

test.serial('labels from CREATE, MKDIR, MKNOD, SYMLINK and TMPFILE land on the host files as security.selinux', async (t) => {
  const { shared, d, c } = await start(t, ['--security-label', '--modcaps=+sys_admin']);
  t.is((c.init?.flags2 ?? 0) & F.SECURITY_CTX, F.SECURITY_CTX, 'SECURITY_CTX agreed');
  // CREATE_SUPP_GROUP is offered by default (as virtiofsd); SECURITY_CTX only with the option (the test below).
  t.is((c.init?.flags2 ?? 0) & F.CREATE_SUPP_GROUP, F.CREATE_SUPP_GROUP, 'CREATE_SUPP_GROUP agreed by default');
  t.true(((c.init?.flags ?? 0) & F.INIT_EXT) !== 0);
  const hex = LABEL.toString('hex');
  for (const [op, args, name] of [
    [F.Op.CREATE, createArgs('file'), 'file'], [F.Op.MKDIR, mkdirArgs('dir'), 'dir'], [F.Op.MKNOD, fifoArgs('fifo'), 'fifo'],
    [F.Op.MKNOD, regArgs('reg'), 'reg'], [F.Op.SYMLINK, linkArgs('link'), 'link'],
  ] as const) {
    const r = send(c, op, args, ctx());
    t.is(r.errno, 0, name);
    t.deepEqual(hostXattrs(path.join(shared, name)), { [SELINUX]: hex }, name);
  }
  t.true(fs.lstatSync(path.join(shared, 'link')).isSymbolicLink());
  t.true(fs.lstatSync(path.join(shared, 'fifo')).isFIFO());
  // Kernels before 6.3 append the context after the names and leave total_extlen 0.
  t.is(send(c, F.Op.MKDIR, mkdirArgs('olddir'), ctx(Buffer.from('old\0')), 'appended').errno, 0);
  t.deepEqual(hostXattrs(path.join(shared, 'olddir')), { [SELINUX]: Buffer.from('old\0').toString('hex') });
  t.is(send(c, F.Op.SYMLINK, linkArgs('oldlink'), ctx(), 'appended').errno, 0);
  t.deepEqual(hostXattrs(path.join(shared, 'oldlink')), { [SELINUX]: hex });
  // An O_TMPFILE file: labelled through its fd before the reply.
  const tmp = send(c, F.Op.TMPFILE, F.createIn('/', O_RDWR, S_IFREG | 0o600), ctx());
  t.is(tmp.errno, 0);
  t.deepEqual(getxattr(c, F.parseEntry(tmp.body).nodeid, SELINUX), LABEL);
  // No LSM label (nr_secctx 0): created, nothing stored. Another LSM's name: stored as sent.
  t.is(send(c, F.Op.CREATE, createArgs('plain'), F.secctxExt()).errno, 0);
  t.deepEqual(hostXattrs(path.join(shared, 'plain')), {});
  t.is(send(c, F.Op.MKDIR, mkdirArgs('smack'), ctx(Buffer.from('_'), 'security.SMACK64')).errno, 0);
  t.deepEqual(hostXattrs(path.join(shared, 'smack')), { 'security.SMACK64': '5f' });
  t.deepEqual(crashSigns(d.log()), []);
});

test.serial('malformed extensions fail with EINVAL and a log line, create nothing, and the daemon keeps serving', async (t) => {
  const { shared, d, c } = await start(t, ['--security-label', '--modcaps=+sys_admin']);
  const good = ctx();
  const mutate = (f: (b: Buffer) => void, base = good): Buffer => {
    const b = Buffer.from(base);
    f(b);
    return b;
  };
  // Structure (sizes, types, doubles) is checked by Request.load(), the context block by security-label.ts.
  const cases: [string, Buffer, Layout, RegExp][] = [
    ['header size not a multiple of 8', mutate((b) => b.writeUInt32LE(b.length - 4, 0)), 'extlen', /extension record at 0 has size \d+/],
    ['header size beyond the request', mutate((b) => b.writeUInt32LE(b.length + 8, 0)), 'extlen', /extension record at 0 \(size \d+\) runs past the request/],
    ['header size 0', mutate((b) => b.writeUInt32LE(0, 0)), 'extlen', /extension record at 0 has size 0/],
    ['two contexts', mutate((b) => b.writeUInt32LE(2, 4)), 'extlen', /2 security contexts/],
    ['context of 0 bytes', mutate((b) => b.writeUInt32LE(0, 8)), 'extlen', /value of 0 bytes/],
    ['value longer than the record', mutate((b) => b.writeUInt32LE(200, 8)), 'extlen', /header says \d+ bytes.*need/],
    ['name without NUL', mutate((b) => b.fill(0x61, 16)), 'extlen', /not NUL-terminated/],
    ['not a security.* name', ctx(LABEL, 'trusted.selinux'), 'extlen', /'trusted\.selinux' is not a security\.\* attribute/],
    ['header larger than its context', Buffer.concat([mutate((b) => b.writeUInt32LE(b.length + 8, 0)), Buffer.alloc(8)]), 'extlen', /header says \d+ bytes/],
    ['empty header with a payload', Buffer.from([16, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8]), 'extlen', /holds no context/],
    ['unknown extension type', Buffer.concat([good, Buffer.from([8, 0, 0, 0, 33, 0, 0, 0])]), 'extlen', /has unknown type 33/],
    ['two security headers', Buffer.concat([good, F.secctxExt()]), 'extlen', /a second record of type 0/],
    ['only a groups record', Buffer.from([16, 0, 0, 0, 32, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]), 'extlen', /no security context record although FUSE_SECURITY_CTX was agreed/],
    ['truncated header (appended)', Buffer.from([8, 0, 0, 0]), 'appended', /extension area of 4 bytes is not a multiple of 8/],
    ['two records (appended)', Buffer.concat([good, F.secctxExt()]), 'appended', /a second record of type 0/],
    ['no extension at all', good, 'none', /no security context record/],
  ];
  let n = 0;
  for (const [what, ext, layout, re] of cases) {
    for (const [op, args] of [[F.Op.CREATE, createArgs(`c${n}`)], [F.Op.MKDIR, mkdirArgs(`d${n}`)], [F.Op.MKNOD, fifoArgs(`m${n}`)], [F.Op.SYMLINK, linkArgs(`s${n}`)]] as const) {
      t.is(send(c, op, args, ext, layout).errno, EINVAL, `${what} (opcode ${op})`);
    }
    t.regex(d.log(), re, what);
    n++;
  }
  // total_extlen beyond the request: refused before dispatch.
  const big = F.request(F.Op.MKDIR, F.ROOT_ID, [mkdirArgs('huge'), good], { totalExtlen: 200 });
  t.is(c.fe.call([big], [F.OUT_HEADER, F.ENTRY_OUT])?.header.error, -EINVAL);
  t.regex(d.log(), /malformed MKDIR request: extension length 1600 exceeds the request/);
  t.deepEqual(fs.readdirSync(shared), [], 'nothing was created');
  t.is(send(c, F.Op.MKDIR, mkdirArgs('after'), good).errno, 0, 'still serving');
  t.is(c.getattr(F.ROOT_ID).mode & 0o170000, S_IFDIR);
  t.deepEqual(crashSigns(d.log()), []);
});

test.serial('the label name goes through --xattrmap; a label the host refuses removes the new entry', async (t) => {
  // kata-style: the guest's security.* under user.virtiofs. (no CAP_SYS_ADMIN needed).
  const { shared, d, c } = await start(t, ['--security-label', '--xattrmap', ':map:security.:user.virtiofs.:']);
  const hex = LABEL.toString('hex');
  t.is(send(c, F.Op.CREATE, createArgs('file'), ctx()).errno, 0);
  t.deepEqual(hostXattrs(path.join(shared, 'file')), { 'user.virtiofs.security.selinux': hex });
  t.is(send(c, F.Op.MKDIR, mkdirArgs('dir'), ctx()).errno, 0);
  t.deepEqual(hostXattrs(path.join(shared, 'dir')), { 'user.virtiofs.security.selinux': hex });
  // user.* xattrs exist only on regular files and directories: the host refuses the label
  // on a symlink or fifo (EPERM), so, as virtiofsd, the entry is removed and the request fails.
  t.is(send(c, F.Op.SYMLINK, linkArgs('link'), ctx()).errno, EPERM);
  t.is(send(c, F.Op.MKNOD, fifoArgs('fifo'), ctx()).errno, EPERM);
  t.deepEqual(fs.readdirSync(shared).sort(), ['dir', 'file']);
  t.regex(d.log(), /could not store the security label user\.virtiofs\.security\.selinux on a new SYMLINK entry \(errno 1\)/);
  t.deepEqual(crashSigns(d.log()), []);
});

test.serial('a label the host refuses (mapped to trusted.*, no CAP_SYS_ADMIN) fails the request and leaves nothing; INIT without SECURITY_CTX is refused', async (t) => {
  const { shared, d, c } = await start(t, ['--security-label', '--xattrmap', ':prefix:all:security.:trusted.vm.: :ok:all:::'], false);
  // A client that cannot send labels (no INIT_EXT): refused as virtiofsd does.
  const r = c.fe.call([F.request(F.Op.INIT, 0n, [F.initIn()])], [F.OUT_HEADER, F.INIT_OUT]);
  t.is(r?.header.error, -EPROTO);
  t.regex(d.log(), /--security-label: the client does not offer FUSE_SECURITY_CTX/);
  c.doInit(F.InitFlag.ASYNC_READ | F.INIT_EXT, F.SECURITY_CTX);
  t.is(send(c, F.Op.CREATE, createArgs('file'), ctx()).errno, EPERM);
  t.is(send(c, F.Op.MKDIR, mkdirArgs('dir'), ctx()).errno, EPERM);
  t.is(send(c, F.Op.MKNOD, regArgs('reg'), ctx()).errno, EPERM);
  t.is(send(c, F.Op.TMPFILE, F.createIn('/', O_RDWR, S_IFREG | 0o600), ctx()).errno, EPERM);
  t.deepEqual(fs.readdirSync(shared), [], 'the new entries were removed');
  t.regex(d.log(), /could not store the security label trusted\.vm\.security\.selinux on a new CREATE entry \(errno 1\).*--modcaps=\+sys_admin/);
  t.is(send(c, F.Op.MKDIR, mkdirArgs('unlabelled'), F.secctxExt()).errno, 0, 'without a label it works');
  t.deepEqual(fs.readdirSync(shared), ['unlabelled']);
  t.deepEqual(crashSigns(d.log()), []);
});
