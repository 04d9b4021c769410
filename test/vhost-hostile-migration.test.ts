// The vhost-user messages of live migration, sent by a hostile or broken VMM to the daemon as
// users run it (vfs-launch --sandbox namespace --seccomp kill): SET_LOG_BASE with fds and
// sizes that do not make a dirty log (a pipe, zero and huge sizes, an offset past the file,
// a log file the frontend can shrink under the daemon's mapping), and SET_DEVICE_STATE_FD
// loads of garbage, of a pipe that never delivers, of an endless stream, and of well-formed
// states whose inodes name files outside the share (through symlinks in it, "..", a file
// handle of a file beside it). Checked: each fails cleanly (nack or CHECK_DEVICE_STATE
// error, a log line), the daemon keeps serving, it holds no fd on anything outside the
// share, and nothing beside the share changes. And a state cannot switch on what the
// destination's own options leave off (a label the daemon would store without --security-label).
// On the source side: a guest's directory tree deeper than PATH_MAX, with an inode at its
// bottom that the daemon knows by no name, neither fails the whole save nor stalls it.
import test, { type ExecutionContext } from 'ava';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { Attr, CreateIn, GetattrIn, InitFlag2, InitIn, LinkIn, MkdirIn, Op, OutHeader } from '../src/fs/fuse-abi.js';
import { decodeState, encodeState, type MigrationState } from '../src/fs/migration-state.js';
import { AT_FDCWD, nameToHandleAt } from '../src/sys/file-calls.js';
import { FLAG_VERSION, FLAG_NEED_REPLY, u64 } from './frontend/vhost-user.js';
import { memfdCreate, truncateFd, closeFd } from './frontend/sys-calls.js';
import { pipeCloexec } from '../src/sys/event-calls.js';
import { cstr, request, struct } from './fs-helpers.js';
import { getfattr, secctxRecord, withExt } from './fuzz/parity-requests.js';
import { connectSandboxed, lastWords, type SandboxedSession } from './fuzz/sandboxed-daemon.js';
import { makeFuzzShare, snapshot } from './fuzz/stateful-fuzzer.js';

const SET_LOG_BASE = 6;
const SET_FEATURES = 2;
const SET_PROTOCOL_FEATURES = 16;
const SET_DEVICE_STATE_FD = 42;
const CHECK_DEVICE_STATE = 43;
const LOG_ALL = 1n << 26n;
const LOG_SHMFD = 1n << 1n;
const DEVICE_STATE = 1n << 19n;
const LOAD = 1;

function root(t: ExecutionContext): boolean {
  if (process.geteuid?.() === 0) return true;
  t.fail('needs root: the namespace sandbox and file handles');
  return false;
}

/** A session with LOG_SHMFD and DEVICE_STATE negotiated on top of the frontend's usual set. */
async function session(t: ExecutionContext, share: string, args: string[]): Promise<SandboxedSession> {
  const s = await connectSandboxed(t, share, args);
  const pf = s.fe.vu.protocolFeatures | LOG_SHMFD | DEVICE_STATE;
  t.is(s.fe.vu.set(SET_PROTOCOL_FEATURES, u64(pf)), 0n);
  s.fe.vu.protocolFeatures = pf;
  init(s);
  return s;
}

function init(s: SandboxedSession): void {
  const r = s.io.call([request(Op.INIT, [struct(InitIn, { major: 7, minor: 38, maxReadahead: 131072, flags: 0xffffffff })], { nodeid: 0 })], [16, 256]);
  if (r === undefined || r.header.error !== 0) throw new Error(`INIT: ${r?.header.error}`);
}

function getattr(s: SandboxedSession, nodeid: number | bigint = 1): { error: number; attr?: ReturnType<typeof Attr.decode> } {
  const r = s.io.call([request(Op.GETATTR, [struct(GetattrIn, {})], { nodeid })], [OutHeader.size, 104]);
  if (r === undefined) throw new Error('GETATTR: no reply');
  return { error: r.header.error, attr: r.header.error === 0 ? Attr.decode(r.body, 16) : undefined };
}

/** SET_LOG_BASE of `size` bytes at `offset` in `fd`; the backend's u64 answer (0 = mapped). */
function logBase(s: SandboxedSession, fd: number, size: bigint, offset = 0n): bigint {
  const p = Buffer.alloc(16);
  p.writeBigUInt64LE(size, 0);
  p.writeBigUInt64LE(offset, 8);
  s.fe.vu.send(SET_LOG_BASE, p, [fd], FLAG_VERSION | FLAG_NEED_REPLY);
  const r = s.fe.vu.recv('SET_LOG_BASE reply');
  return r.payload.readBigUInt64LE(0);
}

/** Stop every ring (GET_VRING_BASE), as QEMU does before the state moves; their bases. */
function stopRings(s: SandboxedSession): number[] {
  return s.fe.queues.map((q) => s.fe.getVringBase(q.index));
}

function startRings(s: SandboxedSession, bases: number[]): void {
  for (const q of s.fe.queues) s.fe.startQueue(q, bases[q.index]);
}

/** SET_DEVICE_STATE_FD (load) with `fd`, then CHECK_DEVICE_STATE: its u64 (0 = loaded). */
function loadState(s: SandboxedSession, fd: number): { reply: bigint; check: bigint; ms: number } {
  const p = Buffer.alloc(8);
  p.writeUInt32LE(LOAD, 0);
  const start = Date.now();
  s.fe.vu.send(SET_DEVICE_STATE_FD, p, [fd], FLAG_VERSION | FLAG_NEED_REPLY);
  const reply = s.fe.vu.recv('SET_DEVICE_STATE_FD reply').payload.readBigUInt64LE(0);
  closeFd(fd);
  s.fe.vu.send(CHECK_DEVICE_STATE, Buffer.alloc(0), [], FLAG_VERSION);
  const check = s.fe.vu.recv('CHECK_DEVICE_STATE reply').payload.readBigUInt64LE(0);
  return { reply, check, ms: Date.now() - start };
}

/** A pipe whose read end carries `data` and then end of file. */
function statePipe(data: Buffer): number {
  const [rd, wr] = pipeCloexec();
  // Bigger than a pipe holds: fill it from a child writer instead.
  if (data.length > 60000) throw new Error('state too big for the test pipe');
  fs.writeSync(wr, data);
  closeFd(wr);
  return rd;
}

/**
 * The daemon's fds on anything beside the share (the share's parent and its sentinels),
 * compared by device and inode: /proc shows the daemon's paths relative to its own root.
 */
function fdsOutside(pid: number, parent: string, share: string): string[] {
  const outside = new Map<string, string>();
  const add = (p: string): void => {
    const st = fs.lstatSync(p);
    outside.set(`${st.dev}:${st.ino}`, p);
  };
  add(parent);
  for (const n of fs.readdirSync(parent)) if (path.join(parent, n) !== share) add(path.join(parent, n));
  for (const n of fs.readdirSync(path.join(parent, 'sentinel-dir'))) add(path.join(parent, 'sentinel-dir', n));
  const out: string[] = [];
  for (const n of fs.readdirSync(`/proc/${pid}/fd`)) {
    try {
      const st = fs.statSync(`/proc/${pid}/fd/${n}`);
      const hit = outside.get(`${st.dev}:${st.ino}`);
      if (hit !== undefined) out.push(`fd ${n} -> ${hit}`);
    } catch {
      // closed meanwhile
    }
  }
  return out;
}

test.serial('SET_LOG_BASE: bad fds and sizes are refused, a log the frontend could shrink is refused, the daemon keeps serving', async (t) => {
  t.timeout(120_000);
  if (!root(t)) return;
  const w = makeFuzzShare();
  t.teardown(() => fs.rmSync(w.parent, { recursive: true, force: true }));
  const s = await session(t, w.share, ['--xattr']);
  const [rd, wr] = pipeCloexec();
  t.not(logBase(s, rd, 4096n), 0n, 'a pipe is no log');
  closeFd(wr);
  const sealable = (): number => memfdCreate('log', 4096, true);
  for (const [what, size, offset] of [['size 0', 0n, 0n], ['size 2^40', 1n << 40n, 0n], ['size 2^63', 1n << 63n, 0n],
    ['past the file', 4096n, 4096n], ['offset 2^63', 64n, 1n << 63n]] as const) {
    t.not(logBase(s, sealable(), size, offset), 0n, what);
  }
  t.is(getattr(s).error, 0, 'serving after the refused logs');

  // A memfd made without MFD_ALLOW_SEALING: the daemon cannot seal it, so QEMU's peer could
  // shrink it under the mapping and the next logged device write would fault.
  const loose = memfdCreate('log-unsealable', 4096, false);
  t.not(logBase(s, loose, 4096n), 0n, 'a log that cannot be sealed against shrinking is refused');
  t.is(s.fe.vu.set(SET_FEATURES, u64(s.fe.features | LOG_ALL)), 0n, 'logging on');
  t.is(truncateFd(loose, 0), 0, 'the frontend shrinks it');
  t.is(getattr(s).error, 0, 'a device write with logging on after the shrink');
  t.true(s.d.alive(), `alive: ${s.d.alive() ? '' : await lastWords(s.d)}`);
  closeFd(loose);

  // The control: a sealable log is mapped (sealed by the daemon: it cannot shrink) and written.
  const good = sealable();
  t.is(logBase(s, good, 4096n), 0n, 'a sealable memfd is mapped');
  t.not(truncateFd(good, 0), 0, 'the daemon sealed it against shrinking (EPERM)');
  t.is(getattr(s).error, 0);
  const bits = Buffer.alloc(4096);
  fs.readSync(good, bits, 0, 4096, 0);
  t.true(bits.some((b) => b !== 0), 'the reply and the used ring were logged');
  closeFd(good);
  t.true(s.d.alive());
  s.closeFrontend();
  t.is(await s.d.stop(), 0, s.d.log().slice(-2000));
});

test.serial('SET_DEVICE_STATE_FD: garbage, a silent pipe, an endless stream and states pointing outside the share fail cleanly', async (t) => {
  t.timeout(180_000);
  if (!root(t)) return;
  const w = makeFuzzShare();
  t.teardown(() => fs.rmSync(w.parent, { recursive: true, force: true }));
  const before = snapshot(w.parent);
  const s = await session(t, w.share, ['--xattr', '--migration-mode', 'file-handles', '--inode-file-handles=prefer']);
  const fail = (what: string, r: { reply: bigint; check: bigint }): void => {
    t.is(r.reply & 0xffn, 0n, `${what}: the transfer is accepted (it is read after the reply)`);
    t.not(r.check, 0n, `${what}: CHECK_DEVICE_STATE reports the failure`);
  };
  // While the rings run the state must not move: refused at once (error bit, no fd back).
  const running = loadState(s, statePipe(Buffer.from('VFSSTATE')));
  t.is(running.reply, 0x101n, 'a transfer with the rings running is refused');
  t.is(getattr(s).error, 0, 'and the rings serve on');
  let bases = stopRings(s);
  fail('garbage', loadState(s, statePipe(Buffer.from('VFSSTATE' + 'garbage'.repeat(100)))));
  fail('empty', loadState(s, statePipe(Buffer.alloc(0))));
  // A pipe that never delivers: bounded by the stall limit, then the daemon serves again.
  const [rd, wr] = pipeCloexec();
  const silent = loadState(s, rd);
  fail('silent pipe', silent);
  closeFd(wr);
  t.true(silent.ms < 30_000, `a silent pipe is given up on (${silent.ms} ms)`);
  // An endless stream: /dev/zero never ends; the size limit stops it.
  const endless = loadState(s, fs.openSync('/dev/zero', 'r'));
  fail('endless', endless);
  const hwm = /VmHWM:\s+(\d+)/.exec(fs.readFileSync(`/proc/${s.d.pid}/status`, 'utf8'))?.[1];
  t.log(`endless stream refused after ${endless.ms} ms; daemon peak RSS ${Math.round(Number(hwm) / 1024)} MiB`);
  startRings(s, bases);
  t.is(getattr(s).error, 0, 'serving after the failed loads');

  // Well-formed states whose inodes lead outside: symlinks in the share, '..', a handle of a
  // file beside the share. Under --migration-on-error abort (the default) each load fails.
  const outsideHandle = nameToHandleAt(AT_FDCWD, Buffer.from(`${path.join(w.parent, 'sentinel-file')}\0`), 0);
  t.true(Buffer.isBuffer(outsideHandle), 'a file handle of the sentinel beside the share');
  const states: [string, MigrationState][] = [
    ['path through a symlink to a dir outside', { session: null, handles: [], inodes: [{ nodeid: 5, refs: 1, verifyHandle: null, location: { kind: 'path', path: Buffer.from('outdir/inner') } }] }],
    ['path through up -> ..', { session: null, handles: [], inodes: [{ nodeid: 5, refs: 1, verifyHandle: null, location: { kind: 'path', path: Buffer.from('up/sentinel-file') } }] }],
    ['path ..', { session: null, handles: [], inodes: [{ nodeid: 5, refs: 1, verifyHandle: null, location: { kind: 'path', path: Buffer.from('../sentinel-file') } }] }],
    ['name under a symlink parent', {
      session: null, handles: [{ fh: 1, nodeid: 6, flags: 2 }], inodes: [
        { nodeid: 5, refs: 1, verifyHandle: null, location: { kind: 'name', parent: 1, name: Buffer.from('outdir') } },
        { nodeid: 6, refs: 1, verifyHandle: null, location: { kind: 'name', parent: 5, name: Buffer.from('inner') } }],
    }],
    ['file handle of a file beside the share', {
      session: null, handles: [{ fh: 1, nodeid: 5, flags: 2 }],
      inodes: [{ nodeid: 5, refs: 1, verifyHandle: null, location: { kind: 'handle', handle: outsideHandle as Buffer } }],
    }],
  ];
  // The check itself sees an fd on a sentinel (this process's own).
  const probe = fs.openSync(path.join(w.parent, 'sentinel-dir', 'inner'), 'r');
  t.is(fdsOutside(process.pid, w.parent, w.share).length, 1, 'fdsOutside finds an fd beside the share');
  fs.closeSync(probe);
  for (const [what, st] of states) {
    bases = stopRings(s);
    fail(what, loadState(s, statePipe(encodeState(st))));
    t.deepEqual(fdsOutside(s.d.pid, w.parent, w.share), [], `${what}: no fd outside the share`);
    startRings(s, bases);
    t.true(getattr(s, 5).error < 0, `${what}: node 5 is unknown after the failed load`);
  }
  t.true(s.d.alive(), `alive: ${s.d.alive() ? '' : await lastWords(s.d)}`);
  const lines = s.d.log().split('\n').filter((l) => /migration: /.test(l));
  t.log(lines.map((l) => l.replace(/^\S+ /, '')).join('\n'));
  t.true(lines.length >= states.length + 4, 'each failure is logged');
  t.true(lines.some((l) => /not reachable in the shared directory/.test(l)), 'the outside file handle was opened and refused by its path');
  init(s);
  t.is(getattr(s).error, 0, 'the session serves after all of it');
  t.deepEqual(snapshot(w.parent), before, 'nothing beside the share changed');
  s.closeFrontend();
  t.is(await s.d.stop(), 0, s.d.log().slice(-2000));
});

test.serial('a loaded state cannot switch on what the destination\'s options leave off: labels (SECURITY_CTX) are not stored without --security-label', async (t) => {
  t.timeout(120_000);
  if (!root(t)) return;
  const w = makeFuzzShare();
  t.teardown(() => fs.rmSync(w.parent, { recursive: true, force: true }));
  const s = await session(t, w.share, ['--xattr']);
  const bases = stopRings(s);
  const flags = 0x4ae4f47b;
  const r = loadState(s, statePipe(encodeState({ session: { flags, flags2: InitFlag2.SECURITY_CTX | InitFlag2.CREATE_SUPP_GROUP }, inodes: [], handles: [] })));
  t.is(r.check, 0n, 'the state (an INIT agreement, no inodes) is taken');
  t.regex(s.d.log(), /the source agreed INIT flags2 0x1 this daemon does not offer with its options; ignored/);
  startRings(s, bases);
  // The guest, believing SECURITY_CTX agreed, sends a label with its creation.
  const value = Buffer.from('system_u:object_r:etc_t:s0\0');
  const c = s.io.call([withExt(Op.MKDIR, [struct(MkdirIn, { mode: 0o755, umask: 0 }), cstr('labelled')], secctxRecord(value))], [16, 256]);
  t.is(c?.header.error, 0, 'the creation is served (its label record parsed and skipped)');
  t.true(fs.statSync(path.join(w.share, 'labelled')).isDirectory());
  t.is(getfattr(path.join(w.share, 'labelled'), 'security.selinux'), undefined, 'no label stored: the daemon was not started with --security-label');
  s.closeFrontend();
  t.is(await s.d.stop(), 0, s.d.log().slice(-2000));
});

/** Remove a tree deeper than PATH_MAX (fs.rmSync walks it by full paths and recursion). */
function removeDeep(dir: string): void {
  execFileSync('rm', ['-rf', '--', dir]);
}

/** SET_DEVICE_STATE_FD (save) into a pipe; the bytes the daemon wrote and CHECK_DEVICE_STATE's u64. */
function saveState(s: SandboxedSession): { reply: bigint; data: Buffer; check: bigint; ms: number } {
  const [rd, wr] = pipeCloexec();
  const p = Buffer.alloc(8); // direction 0: save, phase 0: stopped
  const start = Date.now();
  s.fe.vu.send(SET_DEVICE_STATE_FD, p, [wr], FLAG_VERSION | FLAG_NEED_REPLY);
  closeFd(wr);
  const reply = s.fe.vu.recv('SET_DEVICE_STATE_FD reply').payload.readBigUInt64LE(0);
  const data = (reply & 0xffn) === 0n ? fs.readFileSync(rd) : Buffer.alloc(0);
  closeFd(rd);
  s.fe.vu.send(CHECK_DEVICE_STATE, Buffer.alloc(0), [], FLAG_VERSION);
  const check = s.fe.vu.recv('CHECK_DEVICE_STATE reply').payload.readBigUInt64LE(0);
  return { reply, data, check, ms: Date.now() - start };
}

/** A guest's MKDIR chain of `depth` levels named `name` below the root; the node ids, top first. */
function mkdirChain(s: SandboxedSession, name: string, depth: number): bigint[] {
  const nodes: bigint[] = [];
  let parent = 1n;
  for (let i = 0; i < depth; i++) {
    const r = s.io.call([request(Op.MKDIR, [struct(MkdirIn, { mode: 0o755, umask: 0 }), cstr(name)], { nodeid: parent })], [16, 128]);
    if (r === undefined || r.header.error !== 0) throw new Error(`MKDIR at depth ${i}: ${r?.header.error}`);
    parent = r.body.readBigUInt64LE(0);
    nodes.push(parent);
  }
  return nodes;
}

/** TMPFILE in `dir`, then LINK it there as `name`: an inode the daemon knows by no parent and name. */
function linkedTmpfile(s: SandboxedSession, dir: bigint, name: string): bigint {
  const t = s.io.call([request(Op.TMPFILE, [struct(CreateIn, { flags: 2, mode: 0o644, umask: 0 }), cstr('/')], { nodeid: dir })], [16, 144]);
  if (t === undefined || t.header.error !== 0) throw new Error(`TMPFILE: ${t?.header.error}`);
  const node = t.body.readBigUInt64LE(0);
  const l = s.io.call([request(Op.LINK, [struct(LinkIn, { oldnodeid: node }), cstr(name)], { nodeid: dir })], [16, 128]);
  if (l === undefined || l.header.error !== 0) throw new Error(`LINK: ${l?.header.error}`);
  return node;
}

test.serial('source side: a guest\'s tree deeper than PATH_MAX neither crashes the save nor makes a state the destination refuses whole', async (t) => {
  t.timeout(180_000);
  if (!root(t)) return;
  const w = makeFuzzShare();
  t.teardown(() => removeDeep(w.parent));
  const s = await session(t, w.share, ['--migration-on-error', 'guest-error']);
  // 257 levels of 255-byte names: the bottom is 65,792 bytes from the root (more than the
  // state's u16 path length); an inode there known by no name (an O_TMPFILE file linked in)
  // has no /proc path the kernel can print, so the source searches the share for it.
  const chain = mkdirChain(s, 'd'.repeat(255), 257);
  linkedTmpfile(s, chain.at(-1) as bigint, 'deep');
  const bases = stopRings(s);
  const saved = saveState(s);
  t.true(s.d.alive(), `the daemon lives through the save: ${s.d.alive() ? '' : await lastWords(s.d)}`);
  t.is(saved.reply & 0xffn, 0n, `the save is accepted: ${s.d.log().split('\n').filter((l) => /migration|rror/.test(l)).join('\n')}`);
  t.is(saved.check, 0n, 'and done');
  t.log(`state of ${saved.data.length} bytes saved in ${saved.ms} ms`);
  const st = decodeState(saved.data);
  t.is(st.inodes.filter((i) => i.location.kind === 'failed').length, 1, 'the unreachable inode alone is sent as failed (the guest gets an error for it)');
  t.is(st.inodes.filter((i) => i.location.kind === 'name').length, 257, 'the directories go by parent and name');
  startRings(s, bases);
  t.is(getattr(s).error, 0, 'the source serves on');
  s.closeFrontend();
  t.is(await s.d.stop(), 0, s.d.log().slice(-2000));
});

test.serial('source side: the search for an inode without a path is bounded in work, not quadratic in the depth of a guest\'s tree', async (t) => {
  t.timeout(180_000);
  if (!root(t)) return;
  const w = makeFuzzShare();
  t.teardown(() => removeDeep(w.parent));
  const s = await session(t, w.share, ['--migration-on-error', 'guest-error']);
  // 6,000 levels of one-byte names: a search that re-walks every directory's path from the
  // root costs 18 million openat calls (15 s for 3,000 levels here before it was bounded);
  // the inode at the bottom is past PATH_MAX anyway.
  const chain = mkdirChain(s, 'a', 6000);
  linkedTmpfile(s, chain.at(-1) as bigint, 'deep');
  const bases = stopRings(s);
  const saved = saveState(s);
  t.true(s.d.alive());
  t.is(saved.check, 0n);
  t.true(saved.ms < 20_000, `the save took ${saved.ms} ms`);
  t.log(`state of ${saved.data.length} bytes saved in ${saved.ms} ms`);
  startRings(s, bases);
  t.is(getattr(s).error, 0);
  s.closeFrontend();
  t.is(await s.d.stop(), 0, s.d.log().slice(-2000));
});
