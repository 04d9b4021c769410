// The stateful hostile-guest fuzzer of the FUSE core, shared by its two transports: in
// process through handle() (test/fs-fuzz-stateful.test.ts, under bubblewrap) and through the
// vhost-user frontend into the sandboxed daemon vfs-launch starts, seccomp filter on
// (test/fuzz-vhost-stateful.test.ts). A seeded PRNG draws well-formed but hostile requests
// of every opcode the core serves, with node ids and handles from the ones it handed out
// (live), ones forgotten or released (stale), 0, 1, random 64-bit values and 2^64-1; names
// from a pool with "..", ".", "a/b", "/abs", "", 300-byte names and names with a NUL inside;
// huge sizes and offsets; callers 0, 1000 and 65534. A model of the guest's lookup counts
// and open handles follows the replies; each reply is checked for being exactly one,
// well-formed, of the size its opcode implies, with the right unique and none of the
// secret that lives only outside the share. The transport only moves bytes (Serve).
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {
  AccessIn, Attr, BatchForgetIn, CopyFileRangeIn, CreateIn, Dirent, DIRENTPLUS_HEAD_SIZE, ENTRY_OUT_SIZE,
  EntryOutHead, FallocateIn, FlushIn, ForgetIn, ForgetOne, FsyncIn, GetattrIn, GetxattrIn, InitIn, InterruptIn,
  LinkIn, LseekIn, MkdirIn, MknodIn, Op, OpenIn, OpenOut, OutHeader, ReadIn, ReleaseIn, Rename2In, RenameIn,
  SetattrIn, SetxattrIn, SETXATTR_IN_COMPAT_SIZE, SyncfsIn, WriteIn, WriteOut, direntAlign, fixedArgSize, opName,
} from '../../src/fs/fuse-abi.js';
import { cstr, request, struct } from '../fs-helpers.js';
import { PickSet, Rng } from './prng.js';

/** What the fuzzer needs of the world it runs in. */
export interface FuzzWorld {
  /** The share's parent: a symlink target the guest may try. */
  parent: string;
  /** A name and content only outside the share: no reply may ever carry them. */
  secret: Buffer;
}

/**
 * Carry one request (its readable parts, in order) to the server and its reply back into
 * `writable` (in order); returns the reply's length, 0 when there is none.
 */
export type Serve = (readable: Buffer[], writable: Buffer[], op: number) => number;

export const U64_MAX = (1n << 64n) - 1n;
export const I64_MAX = (1n << 63n) - 1n;
export const EIO = -5;
export const S_IFMT = 0o170000;
export const S_IFDIR = 0o040000;
export const S_IFREG = 0o100000;
export const S_IFIFO = 0o010000;
export const S_IFCHR = 0o020000;
export const S_IFSOCK = 0o140000;

/**
 * A fresh share inside a watched parent: sentinels beside the share (a file, a dir, a
 * symlink, a fifo and a file named by the secret), symlinks in the share that point out.
 */
export function makeFuzzShare(): FuzzWorld & { share: string } {
  const parent = fs.mkdtempSync(path.join(os.tmpdir(), 'vfs-fuzz-'));
  const share = path.join(parent, 'share');
  fs.mkdirSync(share);
  // Sentinels beside the share: nothing the guest does may change them, or read them.
  const secret = `outside-only-${process.pid}-${Date.now().toString(36)}`;
  fs.writeFileSync(path.join(parent, 'sentinel-file'), `${secret}\n`);
  fs.writeFileSync(path.join(parent, secret), `${secret}\n`);
  fs.chmodSync(path.join(parent, 'sentinel-file'), 0o644);
  fs.mkdirSync(path.join(parent, 'sentinel-dir'));
  fs.writeFileSync(path.join(parent, 'sentinel-dir', secret), `${secret}\n`);
  fs.writeFileSync(path.join(parent, 'sentinel-dir', 'inner'), 'inner\n');
  fs.symlinkSync('/etc/hostname', path.join(parent, 'sentinel-link'));
  fs.symlinkSync('share', path.join(parent, 'sentinel-share-link'));
  execFileSync('mkfifo', [path.join(parent, 'sentinel-fifo')]);
  // Inside the share: symlinks that point out (absolute and relative) and a few entries.
  fs.symlinkSync(path.join(parent, 'sentinel-file'), path.join(share, 'out'));
  fs.symlinkSync(path.join(parent, 'sentinel-dir'), path.join(share, 'outdir'));
  fs.symlinkSync('..', path.join(share, 'up'));
  fs.symlinkSync('../sentinel-file', path.join(share, 'uprel'));
  fs.mkdirSync(path.join(share, 'dir'));
  fs.writeFileSync(path.join(share, 'file'), 'hello from the share\n');
  fs.writeFileSync(path.join(share, 'dir', 'a'), 'a');
  return { parent, share, secret: Buffer.from(secret) };
}

/** Everything in `parent` but the share: type, mode, owner, size, times, link target, content. */
export function snapshot(parent: string): Map<string, string> {
  const out = new Map<string, string>();
  walk(Buffer.from(parent), (p, rel, st) => {
    let extra = '';
    if (st.isSymbolicLink()) extra = `-> ${fs.readlinkSync(p)}`;
    else if (st.isFile()) extra = fs.readFileSync(p).toString('base64');
    out.set(rel, `mode ${st.mode.toString(8)} uid ${st.uid} gid ${st.gid} nlink ${st.nlink} size ${st.size} ` +
      `mtime ${st.mtimeNs} ctime ${st.ctimeNs} ${extra}`);
  }, (rel) => rel === 'share');
  return out;
}

/** lstat every entry under `top` (itself as "."); names are bytes (the guest's need not be UTF-8). */
export function walk(top: Buffer, fn: (p: Buffer, rel: string, st: fs.BigIntStats) => void, skip: (rel: string) => boolean = () => false): void {
  const visit = (p: Buffer, rel: string): void => {
    const st = fs.lstatSync(p, { bigint: true });
    fn(p, rel, st);
    if (!st.isDirectory()) return;
    for (const n of fs.readdirSync(p, { encoding: 'buffer' }).sort(Buffer.compare)) {
      const text = Buffer.from(n.toString()).equals(n) ? n.toString() : `hex:${n.toString('hex')}`;
      const r = rel === '.' ? text : `${rel}/${text}`;
      if (!skip(r)) visit(Buffer.concat([p, Buffer.from('/'), n]), r);
    }
  };
  visit(top, '.');
}

// ---- value pools -----------------------------------------------------------------------

export const PLAIN_NAMES = [
  'a', 'b', 'c', 'f', 'g', 'dir', 'file', 'out', 'outdir', 'up', 'uprel', 'escape', 'sentinel-file',
  'sentinel-dir', 'fifo', 'dev',
];
export const HOSTILE_NAMES = ['..', '.', 'a/b', '/abs', '../escape', '/tmp/escape', '../sentinel-file', '../sentinel-dir', ''];
export const IDS = [0, 1000, 65534];
export const XATTR_NAMES = [
  'user.a', 'user.b', 'user.a/b', 'trusted.t', 'security.capability', 'system.posix_acl_access', 'noprefix',
  'user.' + 'x'.repeat(250), '',
];
export const OPEN_BITS = [
  0o1, 0o2, 0o3, 0o100, 0o200, 0o400, 0o1000, 0o2000, 0o4000, 0o10000, 0o20000, 0o40000, 0o100000, 0o200000,
  0o400000, 0o1000000, 0o2000000, 0o4010000, 0o10000000, 0o20200000,
];

export function newEncodeDev(major: number, minor: number): number {
  return ((minor & 0xff) | ((major & 0xfff) << 8) | ((minor & ~0xff) << 12)) >>> 0;
}
// Only harmless character devices: null, zero, full, and the whiteout 0:0 (never a block device).
export const CHAR_DEVS = [newEncodeDev(1, 3), newEncodeDev(1, 5), newEncodeDev(1, 7), 0];

export interface Outcome {
  n: number;
  error: number;
  body: Buffer;
}

export interface Built {
  op: number;
  parts: Buffer[];
  nodeid: bigint;
  /** Model update once the reply (null: none) is in. */
  after?: (o: Outcome | null) => void;
  note: string;
  /** The request is malformed on purpose (shorter arguments): EINVAL, no model change. */
  malformed?: boolean;
}

export const NO_REPLY_OPS = new Set<number>([Op.FORGET, Op.BATCH_FORGET, Op.INTERRUPT, Op.NOTIFY_REPLY]);

export class StatefulFuzzer {
  readonly rng: Rng;
  /** Guest-held lookups per node id (the root, never forgotten, is not tracked). */
  readonly refs = new Map<number, number>();
  readonly liveNodes = new PickSet();
  readonly liveDirs = new PickSet();
  readonly liveFiles = new PickSet();
  readonly staleNodes = new PickSet();
  readonly liveFh = new PickSet();
  readonly staleFh = new PickSet();
  /** The node each handle was opened on (the client always sends that pair). */
  readonly fhNode = new Map<number, bigint>();
  readonly modeOf = new Map<number, number>();
  /** The inode number each node id was handed out for. */
  readonly inoOf = new Map<number, bigint>();
  maxNode = 1;
  maxFh = 0;
  initialized = true;
  unique = 1000n;
  readonly failures: string[] = [];
  readonly history: string[] = [];
  readonly errnos = new Map<string, number>();
  readonly reply = Buffer.alloc(256 * 1024);

  constructor(seed: number, readonly w: FuzzWorld) {
    this.rng = new Rng(seed);
  }

  /** The request being served, for failures found while reading its reply. */
  current = '';

  fail(msg: string): void {
    if (this.failures.length < 20) this.failures.push(msg.startsWith('#') ? msg : `${this.current}: ${msg}`);
  }

  // -- model --
  addRef(nodeid: number, mode: number, ino?: bigint): void {
    if (nodeid === 1) return;
    if (nodeid === 0) {
      this.fail('entry reply with node id 0');
      return;
    }
    // A forgotten id may come back while the core still holds its inode (an open handle, or
    // inodes looked up in a forgotten directory, keep it), but only for the same file.
    if (this.staleNodes.has(nodeid)) this.staleNodes.delete(nodeid);
    if (ino !== undefined) {
      const was = this.inoOf.get(nodeid);
      if (was !== undefined && was !== ino) this.fail(`node id ${nodeid} named ino ${was} and now ino ${ino} (an id reused for another file)`);
      this.inoOf.set(nodeid, ino);
    }
    this.refs.set(nodeid, (this.refs.get(nodeid) ?? 0) + 1);
    this.liveNodes.add(nodeid);
    const type = mode & S_IFMT;
    const known = this.modeOf.get(nodeid);
    if (known !== undefined && (known & S_IFMT) !== type) this.fail(`node ${nodeid} changed type ${known.toString(8)} -> ${mode.toString(8)}`);
    this.modeOf.set(nodeid, mode);
    if (type === S_IFDIR) this.liveDirs.add(nodeid);
    else if (type === S_IFREG) this.liveFiles.add(nodeid);
    if (nodeid > this.maxNode) this.maxNode = nodeid;
  }

  dropRefs(nodeid: number, n: number): void {
    const r = this.refs.get(nodeid);
    if (r === undefined) return;
    if (r - n > 0) {
      this.refs.set(nodeid, r - n);
      return;
    }
    this.refs.delete(nodeid);
    this.liveNodes.delete(nodeid);
    this.liveDirs.delete(nodeid);
    this.liveFiles.delete(nodeid);
    this.staleNodes.add(nodeid);
  }

  addFh(fh: number, nodeid: bigint): void {
    this.fhNode.set(fh, nodeid);
    if (fh === 0 || this.liveFh.has(fh) || this.staleFh.has(fh)) this.fail(`open reply with fh ${fh} (zero, live or reused)`);
    this.liveFh.add(fh);
    if (fh > this.maxFh) this.maxFh = fh;
  }

  dropFh(fh: number): void {
    if (!this.liveFh.has(fh)) return;
    this.liveFh.delete(fh);
    this.staleFh.add(fh);
  }

  /** INIT on a live session and DESTROY release everything the guest held. */
  dropAll(): void {
    for (const n of this.liveNodes.values()) this.dropRefs(n, Infinity);
    for (const fh of this.liveFh.values()) this.dropFh(fh);
  }

  // -- value pools --
  nodeid(pref: 'dir' | 'file' | 'any' = 'any'): bigint {
    const r = this.rng.int(100);
    const set = pref === 'dir' && this.liveDirs.size > 0 ? this.liveDirs : pref === 'file' && this.liveFiles.size > 0 ? this.liveFiles : this.liveNodes;
    if (r < 50 && set.size > 0) return BigInt(set.pick(this.rng));
    if (r < 68) return 1n;
    if (r < 78 && this.staleNodes.size > 0) return BigInt(this.staleNodes.pick(this.rng));
    if (r < 82) return 0n;
    if (r < 87) return this.rng.u64();
    if (r < 90) return U64_MAX;
    if (r < 92) return I64_MAX;
    return BigInt(this.rng.int(this.maxNode + 5));
  }

  fh(): bigint {
    const r = this.rng.int(100);
    if (r < 65 && this.liveFh.size > 0) return BigInt(this.liveFh.pick(this.rng));
    if (r < 77 && this.staleFh.size > 0) return BigInt(this.staleFh.pick(this.rng));
    if (r < 80) return 0n;
    if (r < 86) return this.rng.u64();
    if (r < 89) return U64_MAX;
    return BigInt(this.rng.int(this.maxFh + 5));
  }

  /** The node to name with handle `fh`: mostly its own, as a client sends it; sometimes any. */
  nodeFor(fh: bigint): bigint {
    const own = this.fhNode.get(Number(fh));
    return own !== undefined && this.rng.chance(0.8) ? own : this.nodeid();
  }

  /** A name with its terminator (unterminated only when `last` allows it). */
  name(last = false): Buffer {
    const r = this.rng.int(100);
    if (r < 68) return cstr(this.rng.pick(PLAIN_NAMES));
    if (r < 84) return cstr(this.rng.pick(HOSTILE_NAMES));
    if (r < 88) return cstr('n'.repeat(300));
    if (r < 90) return cstr('m'.repeat(255));
    if (r < 92) return cstr('k'.repeat(256));
    if (r < 96) return cstr(`${this.rng.pick(PLAIN_NAMES)}\0${this.rng.pick(['x', '..', '/abs', 'a/b'])}`);
    if (r < 98 && last) return Buffer.from(this.rng.pick(PLAIN_NAMES));
    const raw = this.rng.bytes(1 + this.rng.int(12));
    for (let i = 0; i < raw.length; i++) if (raw[i] === 0 || raw[i] === 0x2f) raw[i] = 0x41;
    return cstr(raw);
  }

  /** Offsets and sizes: small, or huge enough that the host refuses them (ext4 ends at 16 TiB),
   *  never in between, so no request makes a multi-gigabyte (sparse or real) file. */
  off64(): bigint {
    const r = this.rng.int(100);
    if (r < 45) return BigInt(this.rng.int(65536));
    if (r < 55) return this.rng.pick([0n, 1n, 4095n, 4096n, 65535n]);
    if (r < 60) return 1n << 44n;
    if (r < 64) return 1n << 50n;
    if (r < 68) return (1n << 53n) - 1n;
    if (r < 72) return 1n << 53n;
    if (r < 78) return I64_MAX;
    if (r < 82) return 1n << 63n;
    if (r < 88) return U64_MAX;
    const v = this.rng.u64();
    return v < 1n << 44n ? v | (1n << 60n) : v;
  }

  size32(): number {
    const r = this.rng.int(100);
    if (r < 50) return this.rng.int(8192);
    if (r < 60) return 0;
    if (r < 70) return 4096;
    if (r < 78) return 131072;
    if (r < 86) return 0x7fffffff;
    if (r < 94) return 0xffffffff;
    return this.rng.u32();
  }

  mode(): number {
    return this.rng.chance(0.8) ? this.rng.pick([0o644, 0o755, 0o600, 0o777, 0o000, 0o4755, 0o2775, 0o1777]) : this.rng.u32() & 0o7777;
  }

  openFlags(): number {
    if (this.rng.chance(0.1)) return this.rng.u32();
    let f = this.rng.int(3);
    const extra = this.rng.int(4);
    for (let i = 0; i < extra; i++) f |= this.rng.pick(OPEN_BITS);
    return f >>> 0;
  }

  xname(): Buffer {
    return this.rng.chance(0.05) ? Buffer.from('user.unterminated') : cstr(this.rng.pick(XATTR_NAMES));
  }

  // -- request generators --
  gen(): Built {
    const rng = this.rng;
    // After a DESTROY everything but INIT gets EIO: try a few, then start again.
    if (!this.initialized && rng.chance(0.1)) return this.genInit();
    const r = rng.int(1000);
    // Cumulative weights (per mille).
    if (r < 90) return this.genLookup();
    if (r < 120) return this.genForget();
    if (r < 140) return this.genBatchForget();
    if (r < 180) return this.genGetattr();
    if (r < 230) return this.genSetattr();
    if (r < 245) return { op: Op.READLINK, parts: [], nodeid: this.nodeid(), note: 'readlink' };
    if (r < 265) return this.genSymlink();
    if (r < 290) return this.genMknod();
    if (r < 320) return this.genMkdir();
    if (r < 345) return { op: Op.UNLINK, parts: [this.name(true)], nodeid: this.nodeid('dir'), note: 'unlink' };
    if (r < 360) return { op: Op.RMDIR, parts: [this.name(true)], nodeid: this.nodeid('dir'), note: 'rmdir' };
    if (r < 380) return this.genRename(false);
    if (r < 400) return this.genRename(true);
    if (r < 420) return this.genLink();
    if (r < 460) return this.genOpen();
    if (r < 500) return this.genCreate(false);
    if (r < 515) return this.genCreate(true);
    if (r < 555) return this.genRead(Op.READ);
    if (r < 600) return this.genWrite();
    if (r < 615) return this.genFhOnly(Op.FLUSH, FlushIn.size);
    if (r < 650) return this.genRelease(Op.RELEASE);
    if (r < 657) return this.genFhOnly(Op.FSYNC, FsyncIn.size);
    if (r < 680) return this.genOpendir();
    if (r < 700) return this.genRead(Op.READDIR);
    if (r < 725) return this.genRead(Op.READDIRPLUS);
    if (r < 745) return this.genRelease(Op.RELEASEDIR);
    if (r < 750) return this.genFhOnly(Op.FSYNCDIR, FsyncIn.size);
    if (r < 760) return { op: Op.STATFS, parts: [], nodeid: this.nodeid(), note: 'statfs' };
    if (r < 775) return { op: Op.ACCESS, parts: [struct(AccessIn, { mask: rng.chance(0.8) ? rng.int(8) : rng.u32() })], nodeid: this.nodeid(), note: 'access' };
    if (r < 805) return this.genXattr();
    if (r < 825) return this.genFallocate();
    if (r < 845) return this.genLseek();
    if (r < 865) return this.genCopy();
    if (r < 868) return { op: Op.SYNCFS, parts: [struct(SyncfsIn, {})], nodeid: this.nodeid(), note: 'syncfs' };
    if (r < 890) return { op: Op.INTERRUPT, parts: [struct(InterruptIn, { unique: rng.chance(0.5) ? this.unique - 1n : rng.u64() })], nodeid: this.nodeid(), note: 'interrupt' };
    if (r < 920) return this.genOther();
    if (r < 994) return this.genLookup();
    if (r < 995) return this.genInit();
    return this.genMalformed();
  }

  entryAfter(o: Outcome | null): void {
    if (o === null || o.error !== 0) return;
    const h = EntryOutHead.decode(o.body, 0);
    const a = Attr.decode(o.body, EntryOutHead.size);
    this.addRef(Number(h.nodeid), a.mode, a.ino);
  }

  genLookup(): Built {
    return { op: Op.LOOKUP, parts: [this.name(true)], nodeid: this.nodeid('dir'), after: (o) => this.entryAfter(o), note: 'lookup' };
  }

  nlookup(nodeid: bigint): bigint {
    const held = this.refs.get(Number(nodeid)) ?? 1;
    return this.rng.pick([1n, 1n, 2n, BigInt(held), BigInt(held), 0n, this.rng.u64(), U64_MAX]);
  }

  genForget(): Built {
    const nodeid = this.nodeid();
    const n = this.nlookup(nodeid);
    return {
      op: Op.FORGET, parts: [struct(ForgetIn, { nlookup: n })], nodeid, note: `forget ${n}`,
      after: () => this.dropRefs(Number(nodeid), Number(n)),
    };
  }

  genBatchForget(): Built {
    const k = this.rng.int(6);
    const entries: [bigint, bigint][] = [];
    for (let i = 0; i < k; i++) {
      const id = this.nodeid();
      entries.push([id, this.nlookup(id)]);
    }
    // The count may claim more entries than the request carries.
    const count = this.rng.chance(0.2) ? k + 1 + this.rng.int(1000) : this.rng.chance(0.05) ? 0xffffffff : k;
    const parts = [struct(BatchForgetIn, { count })];
    for (const [nodeid, nlookup] of entries) parts.push(struct(ForgetOne, { nodeid, nlookup }));
    return {
      op: Op.BATCH_FORGET, parts, nodeid: 0n, note: `batch_forget ${k}/${count}`,
      after: () => {
        for (const [id, n] of entries.slice(0, Math.min(count, k))) this.dropRefs(Number(id), Number(n));
      },
    };
  }

  genGetattr(): Built {
    const flags = this.rng.chance(0.5) ? 1 : this.rng.chance(0.5) ? 0 : this.rng.u32();
    const fh = this.fh();
    return { op: Op.GETATTR, parts: [struct(GetattrIn, { getattrFlags: flags, fh })], nodeid: this.nodeFor(fh), note: 'getattr' };
  }

  genSetattr(): Built {
    const rng = this.rng;
    // Random valid bits, but rarely a size (and then a small or refused one), and chown
    // to the small id set so later callers meet files they own and files they do not.
    let valid = rng.u32() & 0xfff;
    if (rng.chance(0.7)) valid &= ~0x8;
    const size = rng.chance(0.5) ? BigInt(rng.int(70000)) : this.off64();
    const idOf = (): number => (rng.chance(0.85) ? rng.pick(IDS) : rng.chance(0.5) ? 0xffffffff : rng.u32());
    const time = (): bigint => (rng.chance(0.7) ? BigInt(rng.int(2_000_000_000)) : rng.u64());
    const nsec = (): number => (rng.chance(0.8) ? rng.int(1_000_000_000) : rng.u32());
    const fh = this.fh();
    const v = struct(SetattrIn, {
      valid, fh, size, atime: time(), mtime: time(), ctime: time(), atimensec: nsec(), mtimensec: nsec(),
      ctimensec: nsec(), mode: rng.chance(0.8) ? this.mode() : rng.u32(), uid: idOf(), gid: idOf(),
    });
    return { op: Op.SETATTR, parts: [v], nodeid: this.nodeFor(fh), note: `setattr valid 0x${valid.toString(16)}` };
  }

  genSymlink(): Built {
    const targets = ['/etc/passwd', '..', '../..', `${this.w.parent}/sentinel-file`, 'a', 'dir/../..', 'x'.repeat(5000)];
    const tgt = this.rng.chance(0.1) ? Buffer.alloc(0) : cstr(this.rng.pick(targets));
    return {
      op: Op.SYMLINK, parts: [this.name(), this.rng.chance(0.03) ? Buffer.from('unterminated') : tgt],
      nodeid: this.nodeid('dir'), after: (o) => this.entryAfter(o), note: 'symlink',
    };
  }

  genMknod(): Built {
    const rng = this.rng;
    const type = rng.pick([S_IFIFO, S_IFIFO, S_IFREG, S_IFCHR, S_IFCHR, S_IFSOCK, 0, S_IFDIR, S_IFMT]);
    const rdev = type === S_IFCHR || rng.chance(0.2) ? rng.pick(CHAR_DEVS) : 0;
    // Mode bits never name a block device (a fuzzed one could be the host's disk).
    const mode = type | this.mode();
    return {
      op: Op.MKNOD, parts: [struct(MknodIn, { mode, rdev, umask: rng.chance(0.5) ? 0o022 : rng.u32() }), this.name(true)],
      nodeid: this.nodeid('dir'), after: (o) => this.entryAfter(o), note: `mknod 0${mode.toString(8)}`,
    };
  }

  genMkdir(): Built {
    return {
      op: Op.MKDIR, parts: [struct(MkdirIn, { mode: this.rng.chance(0.9) ? this.mode() : this.rng.u32(), umask: 0o022 }), this.name(true)],
      nodeid: this.nodeid('dir'), after: (o) => this.entryAfter(o), note: 'mkdir',
    };
  }

  genRename(two: boolean): Built {
    const newdir = this.nodeid('dir');
    const flags = this.rng.chance(0.8) ? this.rng.int(8) : this.rng.u32();
    const head = two ? struct(Rename2In, { newdir, flags }) : struct(RenameIn, { newdir });
    return {
      op: two ? Op.RENAME2 : Op.RENAME, parts: [head, this.name(), this.name(true)], nodeid: this.nodeid('dir'),
      note: two ? `rename2 flags ${flags}` : 'rename',
    };
  }

  genLink(): Built {
    return {
      op: Op.LINK, parts: [struct(LinkIn, { oldnodeid: this.nodeid() }), this.name(true)], nodeid: this.nodeid('dir'),
      after: (o) => this.entryAfter(o), note: 'link',
    };
  }

  openAfter(o: Outcome | null, at: number, nodeid: bigint): void {
    if (o === null || o.error !== 0) return;
    this.addFh(Number(OpenOut.decode(o.body, at).fh), nodeid);
  }

  genOpen(): Built {
    const flags = this.openFlags();
    const nodeid = this.nodeid('file');
    return {
      op: Op.OPEN, parts: [struct(OpenIn, { flags, openFlags: this.rng.chance(0.9) ? 0 : this.rng.u32() })], nodeid,
      after: (o) => this.openAfter(o, 0, nodeid), note: `open 0${flags.toString(8)}`,
    };
  }

  genCreate(tmp: boolean): Built {
    const flags = this.openFlags();
    const mode = (this.rng.chance(0.9) ? S_IFREG : this.rng.pick([S_IFIFO, S_IFCHR, S_IFDIR, 0])) | this.mode();
    const parts = [struct(CreateIn, { flags, mode, umask: 0o022 }), tmp && this.rng.chance(0.7) ? cstr('/') : this.name(true)];
    return {
      op: tmp ? Op.TMPFILE : Op.CREATE, parts, nodeid: this.nodeid('dir'), note: `${tmp ? 'tmpfile' : 'create'} 0${flags.toString(8)}`,
      after: (o) => {
        this.entryAfter(o);
        if (o !== null && o.error === 0) this.openAfter(o, ENTRY_OUT_SIZE, EntryOutHead.decode(o.body, 0).nodeid);
      },
    };
  }

  genRead(op: number): Built {
    const size = this.size32();
    const fh = this.fh();
    return {
      op, parts: [struct(ReadIn, { fh, offset: this.off64(), size, flags: this.rng.chance(0.9) ? 0 : this.rng.u32() })],
      nodeid: this.nodeFor(fh), note: `${opName.get(op)} size ${size}`,
      after: op === Op.READDIRPLUS ? (o) => this.direntplusAfter(o) : op === Op.READDIR ? (o) => this.direntsCheck(o, false) : undefined,
    };
  }

  direntsCheck(o: Outcome | null, plus: boolean): void {
    if (o === null || o.error !== 0) return;
    const b = o.body;
    let p = 0;
    const head = plus ? DIRENTPLUS_HEAD_SIZE : Dirent.size;
    while (p < b.length) {
      if (p + head > b.length) return this.fail(`dirent record at ${p} overruns the ${b.length}-byte reply`);
      const d = Dirent.decode(b, p + (plus ? ENTRY_OUT_SIZE : 0));
      const rec = direntAlign(head + d.namelen);
      if (d.namelen === 0 || d.namelen > 255 || p + rec > b.length) return this.fail(`bad dirent namelen ${d.namelen} at ${p}`);
      if (plus) {
        const e = EntryOutHead.decode(b, p);
        const a = Attr.decode(b, p + EntryOutHead.size);
        if (e.nodeid !== 0n) {
          this.addRef(Number(e.nodeid), a.mode, a.ino);
          const name = b.subarray(p + DIRENTPLUS_HEAD_SIZE, p + DIRENTPLUS_HEAD_SIZE + d.namelen).toString();
          // The entry's attributes must be those of the listed name in the listed directory.
          if (a.ino !== d.ino) this.fail(`READDIRPLUS entry '${name}': dirent ino ${d.ino} but attributes of ino ${a.ino}`);
        }
      }
      p += rec;
    }
  }

  direntplusAfter(o: Outcome | null): void {
    this.direntsCheck(o, true);
  }

  genWrite(): Built {
    const rng = this.rng;
    const data = rng.bytes(rng.chance(0.9) ? rng.int(4096) : rng.int(65536));
    // A size field that disagrees with the payload is refused by the decoder.
    const size = rng.chance(0.95) ? data.length : rng.pick([data.length + 1, 0xffffffff, 0]);
    const fh = this.fh();
    return {
      op: Op.WRITE, parts: [struct(WriteIn, { fh, offset: this.off64(), size, writeFlags: rng.chance(0.8) ? rng.int(8) : rng.u32() }), data],
      nodeid: this.nodeFor(fh), note: `write ${data.length}`, malformed: size !== data.length,
    };
  }

  genFhOnly(op: number, _size: number): Built {
    const fh = this.fh();
    const parts = op === Op.FLUSH ? [struct(FlushIn, { fh })] : [struct(FsyncIn, { fh, fsyncFlags: this.rng.int(4) })];
    return { op, parts, nodeid: this.nodeFor(fh), note: opName.get(op) ?? '' };
  }

  genRelease(op: number): Built {
    const fh = this.fh();
    return {
      op, parts: [struct(ReleaseIn, { fh, flags: this.openFlags(), releaseFlags: this.rng.int(4) })], nodeid: this.nodeid(),
      note: `${opName.get(op)} ${fh}`,
      after: (o) => {
        if (o !== null && o.error === 0) this.dropFh(Number(fh));
      },
    };
  }

  genOpendir(): Built {
    const nodeid = this.nodeid('dir');
    return {
      op: Op.OPENDIR, parts: [struct(OpenIn, { flags: this.rng.chance(0.8) ? 0o200000 : this.openFlags() })], nodeid,
      after: (o) => this.openAfter(o, 0, nodeid), note: 'opendir',
    };
  }

  genXattr(): Built {
    const rng = this.rng;
    const nodeid = this.nodeid();
    switch (rng.int(4)) {
      case 0: {
        const value = rng.bytes(rng.chance(0.9) ? rng.int(64) : rng.int(70000));
        const size = rng.chance(0.9) ? value.length : rng.pick([value.length + 1, 0xffffffff]);
        return {
          op: Op.SETXATTR, parts: [struct(SetxattrIn, { size, flags: rng.int(4) }).subarray(0, SETXATTR_IN_COMPAT_SIZE), this.xname(), value], nodeid, note: `setxattr ${size}`,
        };
      }
      case 1:
        return { op: Op.GETXATTR, parts: [struct(GetxattrIn, { size: this.size32() }), this.xname()], nodeid, note: 'getxattr' };
      case 2:
        return { op: Op.LISTXATTR, parts: [struct(GetxattrIn, { size: this.size32() })], nodeid, note: 'listxattr' };
      default:
        return { op: Op.REMOVEXATTR, parts: [this.xname()], nodeid, note: 'removexattr' };
    }
  }

  genFallocate(): Built {
    const rng = this.rng;
    // Lengths as offsets: small or refused, so nothing allocates gigabytes on the host disk.
    const mode = rng.chance(0.7) ? rng.pick([0, 1, 3, 0x10, 0x20, 0x08]) : rng.u32();
    const fh = this.fh();
    return {
      op: Op.FALLOCATE, parts: [struct(FallocateIn, { fh, offset: this.off64(), length: this.off64(), mode })],
      nodeid: this.nodeFor(fh), note: `fallocate mode ${mode}`,
    };
  }

  genLseek(): Built {
    const whence = this.rng.chance(0.9) ? this.rng.int(6) : this.rng.u32();
    const fh = this.fh();
    return { op: Op.LSEEK, parts: [struct(LseekIn, { fh, offset: this.rng.chance(0.5) ? this.off64() : this.rng.u64(), whence })], nodeid: this.nodeFor(fh), note: `lseek ${whence}` };
  }

  genCopy(): Built {
    const rng = this.rng;
    const len = rng.chance(0.5) ? BigInt(rng.int(100000)) : rng.pick([U64_MAX, I64_MAX, 1n << 40n, 0n]);
    const fhIn = this.fh();
    const fhOut = this.fh();
    return {
      op: Op.COPY_FILE_RANGE,
      parts: [struct(CopyFileRangeIn, {
        fhIn, offIn: this.off64(), nodeidOut: this.nodeFor(fhOut), fhOut, offOut: this.off64(), len,
        flags: rng.chance(0.8) ? 0n : rng.u64(),
      })],
      nodeid: this.nodeFor(fhIn), note: `copy_file_range ${len}`,
    };
  }

  genOther(): Built {
    const op = this.rng.pick([
      0, 7, 19, 52, 53, 99, 255, 4096, 0x7fffffff, 0xffffffff, Op.GETLK, Op.SETLK, Op.SETLKW, Op.BMAP, Op.IOCTL, Op.POLL,
      Op.SETUPMAPPING, Op.REMOVEMAPPING, Op.NOTIFY_REPLY,
    ]);
    return { op, parts: [this.rng.bytes(this.rng.int(128))], nodeid: this.nodeid(), note: `opcode ${op}` };
  }

  /** A restarted guest (INIT on a live session) or a DESTROY, followed later by INIT. */
  genInit(): Built {
    if (this.initialized && this.rng.chance(0.5)) {
      return {
        op: Op.DESTROY, parts: [], nodeid: 0n, note: 'destroy',
        after: (o) => {
          if (o !== null && o.error === 0) {
            this.dropAll();
            this.initialized = false;
          }
        },
      };
    }
    return {
      op: Op.INIT, parts: [struct(InitIn, { major: 7, minor: 38, maxReadahead: 131072, flags: this.rng.u32() })], nodeid: 0n, note: 'init',
      after: (o) => {
        if (o !== null && o.error === 0) {
          if (this.initialized) this.dropAll();
          this.initialized = true;
        }
      },
    };
  }

  /** Arguments cut short of their fixed struct: refused before dispatch. */
  genMalformed(): Built {
    const b = this.gen();
    const fixed = fixedArgSize.get(b.op) ?? 0;
    if (b.op === Op.INIT || fixed === 0) return b;
    const first = b.parts[0] as Buffer;
    return { op: b.op, parts: [first.subarray(0, this.rng.int(fixed))], nodeid: b.nodeid, note: `${b.note} (cut)`, malformed: true };
  }

  // -- one request --
  /**
   * Build request `i`, have `serve` carry it to the server (it returns the reply's length in
   * `writable`, 0 for none) and check the reply against the model. A throw from `serve` is
   * a failure of this request (the transport names what went wrong: a dead daemon, a hang).
   */
  run(i: number, serve: Serve): void {
    const rng = this.rng;
    const b = this.gen();
    const uid = rng.pick(IDS);
    const gid = rng.chance(0.8) ? uid : rng.pick(IDS);
    const uniq = this.unique++;
    const req = request(b.op, b.parts, { nodeid: b.nodeid, uid, gid, unique: uniq });
    const readable = rng.chance(0.2) && req.length > 41 ? [req.subarray(0, 41), req.subarray(41)] : [req];
    const reply = this.reply;
    reply.fill(0xa5, 0, 16);
    const writable = rng.chance(0.2) ? [reply.subarray(0, 24), reply.subarray(24)] : [reply];
    const fhArg = (b.op === Op.READ || b.op === Op.READDIR || b.op === Op.READDIRPLUS) && !b.malformed ? ` fh ${(b.parts[0] as Buffer).readBigUInt64LE(0)}` : '';
    const what = `#${i} ${opName.get(b.op) ?? `op ${b.op}`} (${b.note}${fhArg}) node ${b.nodeid} uid ${uid} gid ${gid}`;
    this.current = what;
    if (process.env.VFS_FUZZ_TRACE) process.stderr.write(`${what}\n`);
    let n: number;
    try {
      n = serve(readable, writable, b.op);
    } catch (err) {
      this.fail(`${what}: serving it threw ${err instanceof Error ? err.stack : String(err)}`);
      return;
    }
    const noReply = NO_REPLY_OPS.has(b.op);
    if (noReply) {
      this.note(`${what} -> no reply`);
      if (n !== 0) this.fail(`${what}: ${n}-byte reply to an opcode that gets none`);
      if (this.initialized && !b.malformed) b.after?.(null);
      return;
    }
    if (n === 0) {
      this.fail(`${what}: no reply`);
      return;
    }
    const h = OutHeader.decode(reply, 0);
    const body = reply.subarray(16, n);
    if (body.includes(this.w.secret)) this.fail(`${what}: the reply carries a name or content from outside the share`);
    this.note(`${what} -> ${h.error === 0 ? `${n - 16} bytes` : `errno ${-h.error}`}`);
    if (h.len !== n) this.fail(`${what}: header len ${h.len}, reply ${n}`);
    if (h.unique !== uniq) this.fail(`${what}: unique ${h.unique}, sent ${uniq}`);
    if (h.error > 0 || h.error < -4095) this.fail(`${what}: error ${h.error} out of range`);
    if (h.error < 0 && n !== 16) this.fail(`${what}: error reply of ${n} bytes`);
    const key = h.error === 0 ? 'ok' : `-${-h.error}`;
    const k = `${opName.get(b.op) ?? b.op} ${key}`;
    this.errnos.set(k, (this.errnos.get(k) ?? 0) + 1);
    // The decoder refuses a malformed request before anything else, INIT or not.
    if (b.malformed && h.error !== -22) this.fail(`${what}: malformed request answered ${h.error}`);
    if (!this.initialized && !b.malformed && b.op !== Op.INIT && h.error !== EIO) this.fail(`${what}: answered ${h.error} before INIT`);
    if (h.error === 0) this.checkSize(what, b, n - 16, body);
    if (!b.malformed) b.after?.({ n, error: h.error, body });
  }

  checkSize(what: string, b: Built, len: number, body: Buffer): void {
    const exact: Record<number, number> = {
      [Op.LOOKUP]: ENTRY_OUT_SIZE, [Op.MKNOD]: ENTRY_OUT_SIZE, [Op.MKDIR]: ENTRY_OUT_SIZE, [Op.SYMLINK]: ENTRY_OUT_SIZE,
      [Op.LINK]: ENTRY_OUT_SIZE, [Op.GETATTR]: 104, [Op.SETATTR]: 104, [Op.OPEN]: OpenOut.size, [Op.OPENDIR]: OpenOut.size,
      [Op.CREATE]: ENTRY_OUT_SIZE + OpenOut.size, [Op.TMPFILE]: ENTRY_OUT_SIZE + OpenOut.size, [Op.WRITE]: WriteOut.size,
      [Op.COPY_FILE_RANGE]: WriteOut.size, [Op.STATFS]: 80, [Op.LSEEK]: 8, [Op.INIT]: 64, [Op.UNLINK]: 0, [Op.RMDIR]: 0,
      [Op.RENAME]: 0, [Op.RENAME2]: 0, [Op.FLUSH]: 0, [Op.RELEASE]: 0, [Op.RELEASEDIR]: 0, [Op.FSYNC]: 0, [Op.FSYNCDIR]: 0,
      [Op.ACCESS]: 0, [Op.SETXATTR]: 0, [Op.REMOVEXATTR]: 0, [Op.FALLOCATE]: 0, [Op.SYNCFS]: 0, [Op.DESTROY]: 0,
    };
    const want = exact[b.op];
    if (want !== undefined) {
      if (len !== want) this.fail(`${what}: ${len}-byte body, expected ${want}`);
    } else if (b.op === Op.READ || b.op === Op.READDIR || b.op === Op.READDIRPLUS || b.op === Op.GETXATTR || b.op === Op.LISTXATTR) {
      const size = (b.parts[0] as Buffer).readUInt32LE(b.op === Op.GETXATTR || b.op === Op.LISTXATTR ? 0 : ReadIn.off.size);
      const limit = size === 0 && (b.op === Op.GETXATTR || b.op === Op.LISTXATTR) ? 8 : size;
      if (len > limit) this.fail(`${what}: ${len}-byte body for a request of ${size}`);
    } else if (b.op === Op.READLINK) {
      if (len === 0 || len > 4096) this.fail(`${what}: ${len}-byte link target`);
    } else {
      this.fail(`${what}: success (${len} bytes) for an opcode that should fail`);
    }
    if (b.op === Op.WRITE && body.readUInt32LE(0) > (b.parts[1] as Buffer).length) this.fail(`${what}: wrote more than it got`);
  }

  note(line: string): void {
    this.history.push(line);
    if (this.history.length > 40) this.history.shift();
  }

  /** Node ids and handles the guest holds (the root excluded): once it lets go of all, the core holds none. */
  expectedFds(): number {
    return this.liveNodes.size + this.liveFh.size;
  }

  /**
   * The fewest inode and handle fds the core can hold: the guest's lookups and handles, and
   * the inode of each handle the guest still holds after forgetting its node (a handle keeps
   * its inode, so it can be reopened; since 5fe4693). More is right when a forgotten
   * directory stays for the inodes looked up in it (they record it as their parent), which
   * the model does not follow; the exact count is checked once the guest let go of all.
   */
  minimumFds(): number {
    const pinned = new Set<bigint>();
    for (const fh of this.liveFh.values()) {
      const node = this.fhNode.get(fh);
      if (node !== undefined && node !== 1n && !this.liveNodes.has(Number(node))) pinned.add(node);
    }
    return this.liveNodes.size + this.liveFh.size + pinned.size;
  }
}
