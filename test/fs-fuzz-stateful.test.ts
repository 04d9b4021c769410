// Stateful hostile-guest fuzzing of the FUSE core, in process through handle(). A
// seeded PRNG (VFS_FUZZ_SEED=<n> replays a run; the seed is logged on failure) sends
// ~20,000 well-formed but hostile requests of every opcode the core serves, with node
// ids and file handles drawn from the ones it handed out (live), ones already
// forgotten or released (stale), 0, 1, random 64-bit values and 2^64-1; names from a
// pool with "..", ".", "a/b", "/abs", "", 300-byte names and names with a NUL inside;
// huge sizes and offsets; callers uid/gid 0, 1000 and 65534 (as root, so the core
// really switches credentials). A model of the guest's lookup counts and open handles
// follows the replies. Checked during the run: handle() never throws and logs no
// internal failure, every request that needs a reply gets exactly one well-formed
// reply of the size its opcode implies (and none for FORGET, BATCH_FORGET, INTERRUPT),
// the thread's credentials are back to root after each request, READDIRPLUS entries
// describe the names listed, and the core holds exactly the inodes and handles of the
// model. After: nothing outside the shared dir changed, the session still serves, and
// once everything is forgotten and released (then DESTROY) the fd count is back.
// VFS_FUZZ_REQUESTS changes the length; VFS_FUZZ_TRACE=1 prints each request to stderr
// before it is served (for a hang, which only shows as an ava timeout). The regression
// tests at the end are the bugs the fuzzer found, each on its own.
//
// The core runs in this process, as root, with no sandbox: a core that lets a request
// escape the share would act on the host itself (a deliberately broken copy once chmod-ed
// and chown-ed the machine's `/`). So this file's tests run only in a re-run of itself
// under bubblewrap, where the host is read-only and only a fresh TMPDIR (which holds the
// test worlds) and ava's cache are writable; outside, the one test here starts that run.
import test, { type ExecutionContext } from 'ava';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {
  Attr, CreateIn, Dirent, DIRENTPLUS_HEAD_SIZE, ENTRY_OUT_SIZE, EntryOutHead, ForgetIn, GetattrIn, InitIn, MkdirIn,
  MknodIn, Op, OpenIn, OpenOut, ReadIn, ReleaseIn, WriteIn, WriteOut, direntAlign, opName,
} from '../src/fs/fuse-abi.js';
import { createFuseServer, fuseServerFdCount } from '../src/fs/fuse-server.js';
import { DEFAULT_FS_OPTIONS } from '../src/fs/options.js';
import type { FuseSession } from '../src/fs/session.js';
import { setLogLevel, setLogSink } from '../src/log.js';
import { AT_FDCWD, O_CLOEXEC, O_DIRECTORY, O_PATH, close, openat } from '../src/sys/file-calls.js';
import { cstr, request, send, struct } from './fs-helpers.js';
import {
  PLAIN_NAMES, S_IFCHR, S_IFIFO, S_IFREG, StatefulFuzzer, makeFuzzShare, newEncodeDev, snapshot, walk,
  type FuzzWorld, type Serve,
} from './fuzz/stateful-fuzzer.js';

const REQUESTS = Number(process.env.VFS_FUZZ_REQUESTS ?? 20000);
const CONFINED = process.env.VFS_FUZZ_CONFINED === '1';
const REPO = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..');

/** Register a test of this file: only in the confined re-run (see the header). */
function confined(name: string, impl: (t: ExecutionContext) => void): void {
  if (CONFINED) test.serial(name, impl);
}

if (!CONFINED) {
  test('the stateful fuzz and its regressions, run under bubblewrap with the host read-only', (t) => {
    t.timeout(6 * 60_000);
    const seed = process.env.VFS_FUZZ_SEED ?? String((Date.now() ^ (process.pid << 16)) >>> 0);
    const jail = fs.mkdtempSync(path.join(os.tmpdir(), 'vfs-fuzz-jail-'));
    const cache = path.join(REPO, 'node_modules', '.cache');
    fs.mkdirSync(cache, { recursive: true });
    t.teardown(() => fs.rmSync(jail, { recursive: true, force: true }));
    const r = spawnSync('bwrap', [
      '--ro-bind', '/', '/', '--bind', jail, jail, '--bind', cache, cache, '--proc', '/proc', '--dev', '/dev',
      '--chdir', REPO, '--', process.execPath, path.join(REPO, 'node_modules/ava/entrypoints/cli.mjs'),
      path.relative(REPO, new URL(import.meta.url).pathname), '--timeout', '5m',
    ], { encoding: 'utf8', env: { ...process.env, VFS_FUZZ_CONFINED: '1', VFS_FUZZ_SEED: seed, TMPDIR: jail }, timeout: 5.5 * 60_000 });
    const out = `${r.stdout ?? ''}${r.stderr ?? ''}`;
    t.log(`seed ${seed} (replay: VFS_FUZZ_SEED=${seed} npx ava ${path.relative(REPO, new URL(import.meta.url).pathname)})`);
    if (r.error !== undefined) t.fail(`bwrap: ${r.error.message} (scripts/setup.sh installs bubblewrap)`);
    t.is(r.status, 0, out);
    t.regex(out, /3 tests passed/, out);
    for (const line of out.split('\n').filter((l) => /^\s+(✔|ℹ)/.test(l))) t.log(line.trim());
  });
}
// ---- the shared directory inside a watched parent --------------------------------------

interface World extends FuzzWorld {
  share: string;
  session: FuseSession;
  rootFd: number;
  procSelfFd: number;
  cleanup(): void;
}

function makeWorld(): World {
  const { parent, share, secret } = makeFuzzShare();
  const rootFd = openat(AT_FDCWD, share, O_PATH | O_DIRECTORY | O_CLOEXEC);
  const procSelfFd = openat(AT_FDCWD, '/proc/self/fd', O_PATH | O_DIRECTORY | O_CLOEXEC);
  if (rootFd < 0 || procSelfFd < 0) throw new Error('cannot open the test dirs');
  const session = createFuseServer({
    rootFd, procSelfFd, options: { ...DEFAULT_FS_OPTIONS, xattr: true }, transport: 'devfuse', maxWrite: 1 << 20,
  });
  return {
    parent, share, session, secret, rootFd, procSelfFd,
    cleanup() {
      close(rootFd);
      close(procSelfFd);
      fs.rmSync(parent, { recursive: true, force: true });
    },
  };
}

function openFds(): number {
  return fs.readdirSync('/proc/self/fd').length;
}

function ok(session: FuseSession, op: number, parts: Buffer[], nodeid: bigint | number): Buffer {
  const a = send(session, request(op, parts, { nodeid }));
  if (a === null || a.error !== 0) throw new Error(`${opName.get(op)} failed: ${a?.error}`);
  return a.body;
}

confined('stateful hostile-guest fuzz: replies, confinement, service and fds hold up', (t) => {
  t.timeout(5 * 60_000);
  if (process.geteuid?.() !== 0) {
    t.log('needs root (credential switching); skipped');
    t.pass();
    return;
  }
  const seed = process.env.VFS_FUZZ_SEED !== undefined ? Number(process.env.VFS_FUZZ_SEED) >>> 0 : (Date.now() ^ (process.pid << 16)) >>> 0;
  t.log(`seed ${seed} (replay: VFS_FUZZ_SEED=${seed} npx ava test/fs-fuzz-stateful.test.ts)`);
  const started = Date.now();
  const w = makeWorld();
  t.teardown(() => w.cleanup());
  const pool = [...PLAIN_NAMES, 'abs', 'x', 'b'].filter((n) => n !== '');
  const tmpBefore = pool.filter((n) => fs.existsSync(path.join(os.tmpdir(), n)));
  const before = snapshot(w.parent);

  // Internal failures surface only as log lines (handle() turns a throw into EIO).
  const logged: string[] = [];
  setLogLevel('warn');
  setLogSink((line) => {
    if (/ failed: |could not encode|could not restore|ERROR/.test(line)) logged.push(line);
  });
  t.teardown(() => {
    setLogSink((line) => process.stderr.write(line + '\n'));
    setLogLevel('info');
  });

  const fz = new StatefulFuzzer(seed, w);
  // In process, the core switches this thread's credentials: they must be back after each request.
  const serve: Serve = (readable, writable) => {
    const n = w.session.handle(readable, writable);
    const euid = process.geteuid?.() ?? 0;
    const egid = process.getegid?.() ?? 0;
    if (euid !== 0 || egid !== 0) fz.fail(`credentials left at ${euid}/${egid}`);
    return n;
  };
  const initReply = send(w.session, request(Op.INIT, [struct(InitIn, { major: 7, minor: 38, maxReadahead: 131072, flags: 0xffffffff })]));
  t.is(initReply?.error, 0);
  const baseFds = openFds();
  const report = (): void => {
    t.log(`seed ${seed}`);
    t.log('last requests:\n  ' + fz.history.join('\n  '));
  };

  for (let i = 0; i < REQUESTS && fz.failures.length === 0 && logged.length === 0; i++) {
    fz.run(i, serve);
    if (i % 250 === 249 && fz.initialized) {
      const held = fuseServerFdCount(w.session);
      if (held < fz.minimumFds()) {
        fz.fail(`after #${i}: the core holds ${held} inode/handle fds, fewer than the ${fz.minimumFds()} the guest's ` +
          `${fz.liveNodes.size} nodes and ${fz.liveFh.size} handles need`);
      }
    }
  }
  if (fz.failures.length > 0 || logged.length > 0) report();
  t.deepEqual(fz.failures, [], 'invariants held during the storm');
  t.deepEqual(logged, [], 'no internal failure was logged');
  if (fz.failures.length > 0 || logged.length > 0) return;
  const storm = Date.now() - started;

  // 2. Nothing outside the shared directory changed.
  t.deepEqual(snapshot(w.parent), before, 'the shared dir\'s parent and its sentinels are unchanged');
  t.deepEqual(pool.filter((n) => fs.existsSync(path.join(os.tmpdir(), n))), tmpBefore, 'nothing new in /tmp');

  // 3. The session still serves.
  if (!fz.initialized) {
    t.is(send(w.session, request(Op.INIT, [struct(InitIn, { major: 7, minor: 38, maxReadahead: 131072, flags: 0xffffffff })]))?.error, 0);
    fz.initialized = true;
  }
  const fresh = `fresh-${seed}`;
  t.is(send(w.session, request(Op.LOOKUP, [cstr(fresh)]))?.error, -2, 'a new name is not there yet');
  const c = ok(w.session, Op.CREATE, [struct(CreateIn, { flags: 2, mode: 0o100644, umask: 0 }), cstr(fresh)], 1);
  const node = Number(EntryOutHead.decode(c, 0).nodeid);
  const fh = OpenOut.decode(c, ENTRY_OUT_SIZE).fh;
  fz.addRef(node, S_IFREG);
  const data = Buffer.from(`written after the storm, seed ${seed}\n`);
  const wr = ok(w.session, Op.WRITE, [struct(WriteIn, { fh, offset: 0n, size: data.length }), data], node);
  t.is(WriteOut.decode(wr, 0).size, data.length);
  const rd = ok(w.session, Op.READ, [struct(ReadIn, { fh, offset: 0n, size: 4096 })], node);
  t.deepEqual(rd, data, 'reads back what was written');
  const ga = ok(w.session, Op.GETATTR, [struct(GetattrIn, {})], node);
  t.is(Attr.decode(ga, 16).size, BigInt(data.length));
  ok(w.session, Op.RELEASE, [struct(ReleaseIn, { fh })], node);
  t.is(fs.readFileSync(path.join(w.share, fresh), 'utf8'), data.toString());

  // 4. Forget and release everything the guest holds: the core holds nothing, and the
  // process is back to the fds it had after INIT; DESTROY changes nothing more.
  for (const f of fz.liveFh.values()) send(w.session, request(Op.RELEASE, [struct(ReleaseIn, { fh: BigInt(f) })]));
  for (const n of fz.liveNodes.values()) {
    send(w.session, request(Op.FORGET, [struct(ForgetIn, { nlookup: BigInt(fz.refs.get(n) ?? 0) })], { nodeid: n }));
  }
  t.is(fuseServerFdCount(w.session), 0, 'the core holds no inode or handle once the guest let go of all');
  t.true(openFds() <= baseFds + 2, `fds: ${openFds()} now, ${baseFds} after INIT`);
  t.is(send(w.session, request(Op.DESTROY, []))?.error, 0);
  t.true(openFds() <= baseFds + 2, `fds after DESTROY: ${openFds()}, ${baseFds} after INIT`);
  t.deepEqual(logged, []);

  let notRoot = 0;
  walk(Buffer.from(w.share), (_p, _rel, st) => {
    if (st.uid !== 0n) notRoot++;
  });
  t.log(`${notRoot} entries in the share are owned by a caller other than root`);
  const answers = [...fz.errnos.entries()].sort(([a], [b]) => a.localeCompare(b)).map(([k, v]) => `${k}: ${v}`).join(', ');
  t.log(`${REQUESTS} requests in ${storm} ms; answers: ${answers}`);
});

// ---- regressions the fuzzer found --------------------------------------------------------

function withWorld(fn: (t: ExecutionContext, w: World) => void): (t: ExecutionContext) => void {
  return (t) => {
    const w = makeWorld();
    try {
      t.is(send(w.session, request(Op.INIT, [struct(InitIn, { major: 7, minor: 38, maxReadahead: 131072, flags: 0xffffffff })]))?.error, 0);
      fn(t, w);
    } finally {
      w.cleanup();
    }
  };
}

const entryNode = (body: Buffer): number => Number(EntryOutHead.decode(body, 0).nodeid);

confined('READDIRPLUS on a directory handle whose inode the guest forgot still describes that directory', withWorld((t, w) => {
  // A guest may FORGET a directory's node id while it keeps an OPENDIR handle on it (the
  // kernel never does, a hostile guest can). The inode's O_PATH fd is then closed, and its
  // number goes to the next fd opened: here the inode of another directory with the same
  // names in it. READDIRPLUS must look names up in the directory it lists.
  const d1 = entryNode(ok(w.session, Op.MKDIR, [struct(MkdirIn, { mode: 0o755 }), cstr('d1')], 1));
  ok(w.session, Op.MKNOD, [struct(MknodIn, { mode: S_IFREG | 0o644 }), cstr('x')], d1);
  const fh = OpenOut.decode(ok(w.session, Op.OPENDIR, [struct(OpenIn, { flags: 0 })], d1), 0).fh;
  send(w.session, request(Op.FORGET, [struct(ForgetIn, { nlookup: 1n })], { nodeid: d1 }));
  const d2 = entryNode(ok(w.session, Op.MKDIR, [struct(MkdirIn, { mode: 0o755 }), cstr('d2')], 1));
  const x2 = entryNode(ok(w.session, Op.MKNOD, [struct(MknodIn, { mode: S_IFREG | 0o644 }), cstr('x')], d2));
  const body = ok(w.session, Op.READDIRPLUS, [struct(ReadIn, { fh, size: 65536 })], d1);
  const names: string[] = [];
  for (let p = 0; p < body.length;) {
    const d = Dirent.decode(body, p + ENTRY_OUT_SIZE);
    const name = body.subarray(p + DIRENTPLUS_HEAD_SIZE, p + DIRENTPLUS_HEAD_SIZE + d.namelen).toString();
    names.push(name);
    const e = EntryOutHead.decode(body, p);
    if (name === 'x') {
      t.not(Number(e.nodeid), x2, 'not the x of the other directory');
      t.is(Attr.decode(body, p + EntryOutHead.size).ino, d.ino, 'attributes of the x listed');
      t.is(BigInt(fs.statSync(path.join(w.share, 'd1', 'x')).ino), d.ino);
    }
    p += direntAlign(DIRENTPLUS_HEAD_SIZE + d.namelen);
  }
  t.deepEqual(names.sort(), ['.', '..', 'x']);
}));

confined('CREATE of an existing fifo or device node does not open it (OPEN refuses them too)', withWorld((t, w) => {
  // Without O_EXCL, CREATE of a name that exists opens it. A guest that made a fifo with
  // MKNOD could then block the device thread for good (open without a peer, or READ of an
  // empty fifo), and one that made a device node would open the host's device. O_RDWR
  // keeps this test from blocking while the bug is there.
  ok(w.session, Op.MKNOD, [struct(MknodIn, { mode: S_IFIFO | 0o666 }), cstr('fifo')], 1);
  ok(w.session, Op.MKNOD, [struct(MknodIn, { mode: S_IFCHR | 0o666, rdev: newEncodeDev(1, 3) }), cstr('null')], 1);
  ok(w.session, Op.MKDIR, [struct(MkdirIn, { mode: 0o755 }), cstr('sub')], 1);
  const create = (name: string, flags: number): number =>
    send(w.session, request(Op.CREATE, [struct(CreateIn, { flags, mode: S_IFREG | 0o644 }), cstr(name)]))?.error ?? 0;
  const ENXIO = -6;
  t.is(create('fifo', 2), ENXIO);
  t.is(create('fifo', 2 | 0o1000), ENXIO, 'O_TRUNC');
  t.is(create('null', 1), ENXIO);
  t.is(create('sub', 0), -21, 'EISDIR');
  t.is(create('out', 2), -40, 'ELOOP: a symlink is not followed');
  t.is(create('fifo', 2 | 0o200), -17, 'EEXIST with O_EXCL');
  t.is(fuseServerFdCount(w.session), 3, 'only the three entries made above');
  // An existing regular file still opens (and O_TRUNC truncates it), as the caller.
  fs.writeFileSync(path.join(w.share, 'reg'), 'old content');
  fs.chownSync(path.join(w.share, 'reg'), 1000, 1000);
  fs.chmodSync(path.join(w.share, 'reg'), 0o600);
  const a = send(w.session, request(Op.CREATE, [struct(CreateIn, { flags: 2 | 0o1000, mode: S_IFREG | 0o644 }), cstr('reg')], { uid: 1000, gid: 1000 }));
  t.is(a?.error, 0);
  t.is(fs.statSync(path.join(w.share, 'reg')).size, 0);
  t.is(send(w.session, request(Op.CREATE, [struct(CreateIn, { flags: 2, mode: S_IFREG | 0o644 }), cstr('reg')], { uid: 65534, gid: 65534 }))?.error, -13,
    'EACCES for a caller the file does not let in');
  fs.chmodSync(w.share, 0o777);
  const n = send(w.session, request(Op.CREATE, [struct(CreateIn, { flags: 2, mode: S_IFREG | 0o640 }), cstr('new')], { uid: 65534, gid: 65534 }));
  t.is(n?.error, 0);
  const st = fs.statSync(path.join(w.share, 'new'));
  t.is(st.uid, 65534);
  t.is(st.mode & 0o7777, 0o640);
}));
