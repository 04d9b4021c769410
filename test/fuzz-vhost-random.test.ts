// Random-request fuzz of the daemon as users run it: vfs-launch --sandbox namespace
// --seccomp kill, driven by our vhost-user frontend (memfd guest memory, eventfds, split
// rings) with the random well-formed requests of test/fuzz/random-requests.ts, one at a
// time, on a share pre-populated with files owned by root and by 1000 (setuid and setgid
// ones among them), fifos, symlinks (absolute, dangling, looping, pointing out) and dirs
// (sticky, owned by 1000). Each seed picks a daemon configuration (cache modes, --xattr,
// --writeback, ... and the drop-in parity options: --posix-acl, --killpriv-v2, a kata-style
// --xattrmap with --security-label, --translate-uid/gid, file handles), and the generator
// speaks their request shapes (extension areas, SETXATTR_EXT, ACL values, INIT flags2; see
// test/fuzz/parity-requests.ts). Checked for every request: the daemon is alive (a death or a hang
// fails the seed with its number, the request that did it with all its fields, the ring
// of the requests before it and the launcher's account of the death, which names a
// syscall the seccomp filter refused), a request that needs a reply gets exactly one,
// well-formed (header len = used len, errno in range, errors carry no body, bodies of the
// size the opcode implies) and with its own unique (the frontend checks that), and none
// for FORGET, BATCH_FORGET, INTERRUPT and NOTIFY_REPLY; no reply carries the name or the
// content of the canary dir beside the share. Every 5,000 requests (once, half-way, under
// the default --migration-on-error abort) the daemon migrates to itself (rings stopped,
// DEVICE_STATE saved and loaded back, rings restarted): the save must succeed whatever the
// guest made, so must the load under guest-error, and the node ids the guest holds must
// name the same inodes as before (VFS_FUZZ_MIGRATE_EVERY=0 turns it off). After the storm: the canary is as it was,
// and the session still creates, writes and reads a file (and, with --security-label, stores
// a label or removes the entry it could not label). By default 8 seeds (one per
// configuration) x 40,000 requests from a fresh base seed (about 40 s here); VFS_FUZZ_SEED=<n> replays one
// seed, VFS_FUZZ_REQUESTS=<n> sets the count per seed.
import test, { type ExecutionContext } from 'ava';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {
  Attr, AttrOutHead, CreateIn, ENTRY_OUT_SIZE, EntryOutHead, GetattrIn, InitFlag2, InitIn, MkdirIn, Op, OpenOut, ReadIn, ReleaseIn, WriteIn, WriteOut, opName,
} from '../src/fs/fuse-abi.js';
import { REQUEST, type FuseReply } from './frontend/virtio-fs.js';
import { cstr, request, struct } from './fs-helpers.js';
import { seedFromEnv } from './fuzz/prng.js';
import { enableDeviceState, loadDeviceState, saveDeviceState, startRings, stopRings } from './fuzz/device-state.js';
import { getfattr, secctxRecord, withExt } from './fuzz/parity-requests.js';
import { RandomRequests } from './fuzz/random-requests.js';
import { connectSandboxed, lastWords } from './fuzz/sandboxed-daemon.js';
import { snapshot } from './fuzz/stateful-fuzzer.js';

const PER_SEED = Number(process.env.VFS_FUZZ_REQUESTS ?? 40000);
const RING = 48;
/** Every so many requests the daemon migrates to itself: rings stopped, state saved and loaded back (0: never). */
const MIGRATE_EVERY = Number(process.env.VFS_FUZZ_MIGRATE_EVERY ?? 5000);
const NO_REPLY = new Set<number>([Op.FORGET, Op.BATCH_FORGET, Op.INTERRUPT, Op.NOTIFY_REPLY]);
const XATTR_OPS = new Set<number>([Op.SETXATTR, Op.GETXATTR, Op.LISTXATTR, Op.REMOVEXATTR]);

/** A kata-containers style map: trusted./security. under user.virtiofs., the host's own hidden. */
const KATA_MAP = [
  ':prefix:all:trusted.:user.virtiofs.:', ':prefix:all:security.:user.virtiofs.:',
  ':bad:client:user.virtiofs.::', ':bad:server::trusted.:', ':bad:server::security.:',
  ':unsupported:all:user.unsup.:user.unsup.:', ':ok:all:::',
].join(' ');

/**
 * The daemon configuration of a seed: every cache mode, with and without xattrs, and the
 * fd budget under a tiny RLIMIT_NOFILE (64 fds for inodes and handles: evictions and
 * reopens on every few requests) with O_PATH fds and with file handles; then the parity
 * options: ACLs with killpriv, a kata-style map with labels, id translation (every rule
 * type but squash-host, a forbidden guest range the callers hit), and labels without a map
 * (security.* names as they are: stored where the host allows it, else the undo path) with
 * ACLs and --inode-file-handles=mandatory.
 */
const VARIANTS: readonly string[][] = [
  ['--cache', 'auto', '--xattr', '--rlimit-nofile', '128', '--inode-file-handles=prefer', '--migration-mode', 'file-handles'],
  ['--cache', 'never', '--rlimit-nofile', '128'],
  ['--cache', 'always', '--writeback', '--xattr', '--queue-threads', '1'],
  ['--cache', 'metadata', '--xattr', '--announce-submounts', '--no-readdirplus', '--allow-direct-io'],
  ['--posix-acl', '--killpriv-v2', '--cache', 'auto', '--writeback', '--migration-confirm-paths', '--migration-verify-handles',
    '--migration-on-error', 'guest-error'],
  ['--xattrmap', KATA_MAP, '--security-label', '--killpriv-v2', '--cache', 'never', '--allow-mmap', '--migration-on-error', 'guest-error'],
  ['--translate-uid', 'guest:65534:1000:1', '--translate-uid', 'host:1000:2000:1', '--translate-uid', 'forbid-guest:1:999',
    '--translate-gid', 'map:1000:3000:1', '--translate-gid', 'squash-guest:5000:100:1000', '--killpriv-v2', '--xattr', '--cache', 'always'],
  ['--inode-file-handles', 'mandatory', '--posix-acl', '--security-label', '--rlimit-nofile', '128', '--cache', 'metadata', '--allow-mmap',
    '--migration-mode', 'file-handles', '--migration-on-error', 'guest-error'],
];
/** The parity request shapes in a request's description (parity-requests.ts, random-requests.ts). */
const SHAPES = /(bad ext|pre-6\.3 secctx|ext secctx\[none\]|ext secctx|ext groups|acl random|acl \d+ entries(?: [a-z ]+)?(?= xattr)| ext(?= \|))/;
/** Options that turn the xattr opcodes on. */
const XATTR_ON = ['--xattr', '--xattrmap', '--security-label', '--posix-acl'];
/** What the first INIT asks for in flags2 (as a 6.x guest with an LSM does). */
const INIT_FLAGS2 = InitFlag2.SECURITY_CTX | InitFlag2.CREATE_SUPP_GROUP;

const replay = seedFromEnv();
const base = replay ?? (Date.now() ^ (process.pid << 16)) >>> 0;
const seeds = replay !== undefined ? [replay] : VARIANTS.map((_, k) => (base + k) >>> 0);

interface Share {
  parent: string;
  share: string;
  names: string[];
  /** Content and a name that live only in the canary: no reply may carry them. */
  secret: Buffer;
}

/** The share and, beside it, the canary dir nothing may change. */
function makeShare(): Share {
  const parent = fs.mkdtempSync(path.join(os.tmpdir(), 'vfs-fuzz-rand-'));
  const share = path.join(parent, 'share');
  const canary = path.join(parent, 'canary');
  fs.mkdirSync(canary);
  const secret = `canary-secret-${process.pid}-${Date.now().toString(36)}`;
  fs.writeFileSync(path.join(canary, 'file'), `${secret}\n`);
  fs.writeFileSync(path.join(canary, secret), `${secret}\n`);
  fs.writeFileSync(path.join(canary, 'suid-1000'), 'canary suid\n');
  fs.chownSync(path.join(canary, 'suid-1000'), 1000, 1000);
  fs.chmodSync(path.join(canary, 'suid-1000'), 0o4755);
  fs.mkdirSync(path.join(canary, 'dir'));
  fs.symlinkSync('../share', path.join(canary, 'to-share'));
  execFileSync('mkfifo', [path.join(canary, 'fifo')]);

  fs.mkdirSync(share);
  const file = (rel: string, content: string | Buffer, mode = 0o644, owner = 0): void => {
    const p = path.join(share, rel);
    fs.writeFileSync(p, content);
    fs.chownSync(p, owner, owner);
    fs.chmodSync(p, mode);
  };
  const dir = (rel: string, mode = 0o755, owner = 0): void => {
    const p = path.join(share, rel);
    fs.mkdirSync(p);
    fs.chownSync(p, owner, owner);
    fs.chmodSync(p, mode);
  };
  dir('d1');
  dir('d1/d2');
  file('d1/f-in', 'in d1\n');
  dir('d-1000', 0o755, 1000);
  file('d-1000/own', 'owned by 1000\n', 0o644, 1000);
  dir('sticky', 0o1777);
  file('sticky/t-1000', 'in sticky\n', 0o644, 1000);
  file('f', 'hello from the share\n');
  file('f-1000', Buffer.alloc(5000, 0x61), 0o644, 1000);
  file('suid-1000', Buffer.alloc(8192, 0x62), 0o4755, 1000);
  file('sgid-1000', 'setgid\n', 0o2755, 1000);
  file('suid-root', 'setuid root\n', 0o4755, 0);
  file('ro', 'read only\n', 0o444);
  file('exec-1000', '#!/bin/sh\n', 0o6711, 1000);
  const big = path.join(share, 'big');
  fs.writeFileSync(big, '');
  fs.truncateSync(big, 1 << 20);
  fs.writeFileSync(path.join(share, 'big'), 'data in the middle', { flag: 'r+' });
  fs.linkSync(path.join(share, 'f'), path.join(share, 'hl'));
  execFileSync('mkfifo', [path.join(share, 'fifo'), path.join(share, 'fifo-1000')]);
  fs.chownSync(path.join(share, 'fifo-1000'), 1000, 1000);
  fs.symlinkSync('/etc/passwd', path.join(share, 'abs'));
  fs.symlinkSync('f', path.join(share, 'rel'));
  fs.symlinkSync('nowhere', path.join(share, 'dangling'));
  fs.symlinkSync('loop', path.join(share, 'loop'));
  fs.symlinkSync('..', path.join(share, 'up'));
  fs.symlinkSync('d1', path.join(share, 'dlink'));
  fs.symlinkSync('../canary', path.join(share, 'canary-link'));
  const names = ['d1', 'd2', 'f-in', 'd-1000', 'own', 'sticky', 't-1000', 'f', 'f-1000', 'suid-1000', 'sgid-1000',
    'suid-root', 'ro', 'exec-1000', 'big', 'hl', 'fifo', 'fifo-1000', 'abs', 'rel', 'dangling', 'loop', 'up', 'dlink',
    'canary-link'];
  return { parent, share, names, secret: Buffer.from(secret) };
}

/** Problems with one reply, as text (empty: well-formed). */
function replyProblems(r: FuseReply | undefined, op: number, replyLens: readonly number[], expect: { exact?: number; max?: number }): string[] {
  const room = replyLens.reduce((a, b) => a + b, 0);
  if (NO_REPLY.has(op)) return r === undefined ? [] : [`a ${r.usedLen}-byte reply to an opcode that gets none`];
  if (r === undefined) return [room >= 16 ? 'no reply' : ''].filter((s) => s !== '');
  const out: string[] = [];
  if (r.header.len !== r.usedLen) out.push(`out header len ${r.header.len}, used.len ${r.usedLen}`);
  if (r.header.error > 0 || r.header.error < -4095) out.push(`error ${r.header.error} out of range`);
  if (r.header.error < 0 && r.usedLen !== 16) out.push(`error reply of ${r.usedLen} bytes`);
  if (r.header.error === 0) {
    const body = r.usedLen - 16;
    if (expect.exact !== undefined && body !== expect.exact) out.push(`${body}-byte body, expected ${expect.exact}`);
    if (expect.max !== undefined && body > expect.max) out.push(`${body}-byte body for a request of at most ${expect.max}`);
  }
  return out;
}

async function fuzzSeed(t: ExecutionContext, seed: number): Promise<void> {
  const variant = VARIANTS[seed % VARIANTS.length] as string[];
  const xattr = variant.some((o) => XATTR_ON.includes(o));
  const labels = variant.includes('--security-label');
  const s = makeShare();
  t.teardown(() => fs.rmSync(s.parent, { recursive: true, force: true }));
  const before = snapshot(s.parent);
  // With --queue-threads, a second request queue (served by the thread: READ/WRITE there,
  // the rest handed to the main loop) takes every other request; memfds sealable, as QEMU's.
  const threads = variant.includes('--queue-threads');
  const { d, fe, io, closeFrontend } = await connectSandboxed(t, s.share, variant,
    threads ? { requestQueues: 2, regions: [{ gpa: 0, size: 256 << 20, allowSealing: true }] } : {});
  enableDeviceState(fe);
  const guestError = variant.includes('guest-error');
  // Under --migration-on-error abort one inode the guest made unlocatable (a deleted file it
  // holds) fails the whole load and empties the tables: once, half-way, is enough there.
  const migrateEvery = guestError ? MIGRATE_EVERY : Math.max(1, Math.floor(PER_SEED / 2));
  const migrations = { saved: 0, loaded: 0, refused: 0, bytes: 0, ms: 0, checked: 0 };
  /** The daemon migrates to itself (as a destination would take the source's state); a problem, or undefined. */
  /** Inode numbers (st_ino) of some held nodes, by node id (GETATTR; errors left out). */
  const inos = (ids: readonly bigint[]): Map<bigint, bigint> => {
    const out = new Map<bigint, bigint>();
    for (const id of ids) {
      const r = io.call([request(Op.GETATTR, [struct(GetattrIn, {})], { nodeid: id })], [16, 104]);
      if (r !== undefined && r.header.error === 0) out.set(id, Attr.decode(r.body, AttrOutHead.size).ino);
    }
    return out;
  };
  const migrateToItself = (): string | undefined => {
    // Node ids must name the same files after the migration (or fail, for what was lost).
    const before = inos(gen.heldNodeIds(64));
    const bases = stopRings(fe);
    const saved = saveDeviceState(fe);
    if (!d.alive()) return 'the daemon died saving its state';
    if (saved.check !== 0n) return `the save failed (CHECK_DEVICE_STATE ${saved.check})`;
    migrations.saved++;
    migrations.bytes = Math.max(migrations.bytes, saved.data.length);
    if (process.env.VFS_FUZZ_DUMP_STATE !== undefined) fs.writeFileSync(process.env.VFS_FUZZ_DUMP_STATE, saved.data);
    const loaded = loadDeviceState(fe, saved.data);
    if (!d.alive()) return 'the daemon died loading its own state';
    // Under abort an inode the save could only send as failed fails the whole load (the tables are then empty).
    if (loaded.check === 0n) migrations.loaded++;
    else if (guestError) {
      const why = d.log().split('\n').filter((l) => /migration: /.test(l)).slice(-3).join('\n');
      return `the load of its own state failed under --migration-on-error guest-error (CHECK_DEVICE_STATE ${loaded.check}):\n${why}`;
    }
    else migrations.refused++;
    migrations.ms += saved.ms + loaded.ms;
    startRings(fe, bases);
    if (loaded.check === 0n) {
      const after = inos([...before.keys()]);
      for (const [id, ino] of after) {
        if (ino !== before.get(id)) return `node ${id} was inode ${before.get(id)} before the migration and is inode ${ino} after it`;
      }
      migrations.checked += before.size;
    }
    return undefined;
  };
  const ok = (op: number, parts: Buffer[], nodeid: bigint | number = 1): Buffer => {
    const r = io.call([request(op, parts, { nodeid })], [16, 256 * 1024]);
    if (r === undefined || r.header.error !== 0) throw new Error(`${opName.get(op)}: ${r === undefined ? 'no reply' : `error ${r.header.error}`}`);
    return r.body;
  };
  const initBody = (): Buffer => ok(Op.INIT, [struct(InitIn, { major: 7, minor: 38, maxReadahead: 131072, flags: 0xffffffff, flags2: INIT_FLAGS2 })], 0);
  const first = initBody();

  const gen = new RandomRequests(seed, s.names);
  gen.initReplied(first);
  const ring: string[] = [];
  const counts = new Map<string, number>();
  /** Requests of the parity shapes and how they came back (that they reach the daemon's paths). */
  const shapes = new Map<string, number>();
  let failure: string | undefined;
  const started = Date.now();
  let i = 0;
  for (; i < PER_SEED && failure === undefined; i++) {
    if (MIGRATE_EVERY > 0 && i > 0 && i % migrateEvery === 0) {
      try {
        const why = migrateToItself();
        if (why !== undefined) failure = `migration to itself after request #${i - 1}: ${why}`;
      } catch (err) {
        failure = `migration to itself after request #${i - 1}: ${err instanceof Error ? err.message : String(err)}`;
      }
      ring.push(`#${i} (migrated to itself)`);
      if (failure !== undefined) break;
    }
    const req = gen.next();
    ring.push(`#${i} ${req.desc}`);
    if (ring.length > RING) ring.shift();
    let r: FuseReply | undefined;
    try {
      r = io.call(req.parts, req.replyLens, threads && req.queue === REQUEST && (i & 1) === 1 ? REQUEST + 1 : req.queue);
    } catch (err) {
      failure = `request #${i} (${req.desc}): ${err instanceof Error ? err.message : String(err)}`;
      break;
    }
    const problems = replyProblems(r, req.op, req.replyLens, req.expect);
    if (r !== undefined && r.body.includes(s.secret)) problems.push('the reply carries a name or content of the canary outside the share');
    // Without --xattr the xattr opcodes are ENOSYS, as virtiofsd's.
    // (A request whose extension area is malformed is EINVAL before any opcode is looked at.)
    if (!xattr && r !== undefined && XATTR_OPS.has(req.op) && r.header.error !== -38 && r.header.error !== -5 &&
      !(r.header.error === -22 && req.desc.includes(' bad ext: '))) problems.push(`xattr opcode answered ${r.header.error} without --xattr`);
    if (problems.length > 0) {
      failure = `request #${i} (${req.desc}): ${problems.join('; ')}`;
      break;
    }
    const key = `${opName.get(req.op) ?? 'other'} ${r === undefined ? 'none' : r.header.error === 0 ? 'ok' : -r.header.error}`;
    counts.set(key, (counts.get(key) ?? 0) + 1);
    const shape = SHAPES.exec(req.desc)?.[1];
    if (shape !== undefined) {
      const k = `${shape} ${r === undefined ? 'none' : r.header.error === 0 ? 'ok' : 'err'}`;
      shapes.set(k, (shapes.get(k) ?? 0) + 1);
    }
    if (r === undefined) gen.noReply(req);
    else if (r.header.error === 0) req.onOk?.(r.body);
    else req.onFail?.();
  }
  const ms = Date.now() - started;
  if (failure !== undefined) {
    t.log(`seed ${seed} (${variant.join(' ')}): FAILED after ${i} requests; replay: VFS_FUZZ_SEED=${seed} npx ava test/fuzz-vhost-random.test.ts`);
    t.log(`last ${ring.length} requests:\n  ${ring.join('\n  ')}`);
    t.log(`daemon: ${d.alive() ? 'alive' : await lastWords(d)}`);
    t.fail(failure);
    return;
  }
  t.true(d.alive(), 'the daemon is alive after the storm');
  t.deepEqual(snapshot(s.parent), before, 'the canary beside the share is unchanged');

  // The session still serves (after an INIT of its own: the storm's last INIT may have agreed anything).
  gen.initReplied(initBody());
  const labelled = labels && (gen.agreedFlags2 & InitFlag2.SECURITY_CTX) !== 0;
  t.is(labelled, labels, 'SECURITY_CTX is agreed exactly with --security-label');
  // With labels agreed every creation carries a context block: one without a label (an LSM that has none) here.
  const noLabel = labelled ? [secctxRecord(null)] : [];
  const fresh = `fresh-${seed}`;
  const c = ok(Op.CREATE, [struct(CreateIn, { flags: 2 | 0o200, mode: 0o100644, umask: 0 }), cstr(fresh), ...noLabel]);
  const node = EntryOutHead.decode(c, 0).nodeid;
  const fh = OpenOut.decode(c, ENTRY_OUT_SIZE).fh;
  const data = Buffer.from(`written after ${PER_SEED} random requests, seed ${seed}\n`);
  t.is(WriteOut.decode(ok(Op.WRITE, [struct(WriteIn, { fh, offset: 0n, size: data.length }), data], node), 0).size, data.length);
  t.deepEqual(ok(Op.READ, [struct(ReadIn, { fh, offset: 0n, size: 4096 })], node), data);
  ok(Op.RELEASE, [struct(ReleaseIn, { fh })], node);
  t.is(fs.readFileSync(path.join(s.share, fresh), 'utf8'), data.toString());
  if (labelled) {
    // A labelled MKDIR: stored (through the map) where the host allows it, else refused and the dir removed.
    const value = Buffer.from('system_u:object_r:fresh_t:s0\0');
    const dir = `fresh-dir-${seed}`;
    const r = io.call([withExt(Op.MKDIR, [struct(MkdirIn, { mode: 0o755, umask: 0 }), cstr(dir)], secctxRecord(value))], [16, 256]);
    const hostName = variant.includes('--xattrmap') ? 'user.virtiofs.security.selinux' : 'security.selinux';
    if (r?.header.error === 0) {
      t.deepEqual(getfattr(path.join(s.share, dir), hostName), value, `the label stored as ${hostName}`);
    } else {
      // The host refused the label (security.* without CAP_SYS_ADMIN): the request fails and the dir is gone.
      t.false(fs.existsSync(path.join(s.share, dir)), `the dir whose label failed (${r?.header.error}) was removed again`);
    }
    t.log(`labelled MKDIR: ${r?.header.error === 0 ? `stored as ${hostName}` : `refused ${r?.header.error}, removed`}`);
  }
  closeFrontend();
  t.is(await d.stop(), 0, `the launcher exits 0 after SIGTERM:\n${d.log().slice(-2000)}`);

  if (threads) {
    const m = /queue thread 0 \(queue 2\): (\d+) requests served there, (\d+) handed to the main thread/.exec(d.log());
    t.truthy(m, 'the queue thread reports what it served');
    t.true(Number(m?.[1] ?? 0) > 0 && Number(m?.[2] ?? 0) > 0, `the queue thread served requests and handed others over: ${m?.[0] ?? ''}`);
    t.log(m?.[0] ?? '');
  }
  const oks = [...counts.entries()].filter(([k]) => k.endsWith(' ok')).sort(([a], [b]) => a.localeCompare(b)).map(([k, v]) => `${k.slice(0, -3)} ${v}`);
  const total = [...counts.values()].reduce((a, b) => a + b, 0);
  t.log(`seed ${seed} (${variant.join(' ')}): ${i} requests in ${ms} ms, ${total} answered as expected; daemon alive throughout, ` +
    `still held ${gen.heldNodes} nodes and ${gen.heldFhs} handles at the end`);
  t.log(`successes: ${oks.join(', ')}`);
  t.log(`migrations to itself: ${migrations.saved} saved (up to ${migrations.bytes} bytes), ${migrations.loaded} loaded, ` +
    `${migrations.refused} refused under abort; ${migrations.ms} ms in all; ${migrations.checked} node ids named the same inode after it`);
  const warns = new Map<string, number>();
  for (const l of d.log().split('\n')) {
    const m = /(?:WARN|ERROR) (.*)$/.exec(l);
    if (m !== null) {
      const k = (m[1] as string).replace(/\d+/g, 'N').replace(/'[^']*'/g, "'…'").slice(0, 110);
      warns.set(k, (warns.get(k) ?? 0) + 1);
    }
  }
  t.log(`daemon warnings: ${[...warns.entries()].sort(([, a], [, b]) => b - a).slice(0, 12).map(([k, v]) => `${v}x ${k}`).join('\n  ')}`);
  t.log(`parity shapes: ${[...shapes.entries()].sort(([a], [b]) => a.localeCompare(b)).map(([k, v]) => `${k} ${v}`).join(', ')}`);
}

if (process.geteuid?.() !== 0) {
  test('random-request fuzz of the sandboxed daemon needs root', (t) => {
    t.fail('run as root: the callers 0/1000/65534 are real credential switches in the daemon');
  });
}
for (const seed of seeds) {
  test.serial(`random requests through vhost-user into vfs-launch --sandbox namespace --seccomp kill, seed ${seed}`, async (t) => {
    t.timeout(4 * 60_000);
    await fuzzSeed(t, seed);
  });
}
