// Random well-formed FUSE requests for fuzzing the sandboxed daemon through vhost-user
// (test/fuzz-vhost-random.test.ts). Unlike the stateful fuzzer, which follows a strict
// model of the guest's lookups, this one aims at reaching every code path, and with it
// every syscall the seccomp policy must allow: each opcode (and unknown ones) with fields
// drawn from values that succeed as often as ones that fail: node ids and handles mostly
// from those handed out (of the right type), some stale, 0, random or 2^64-1; SETATTR with
// random subsets of FATTR_* (MODE, UID, GID, SIZE, ATIME, MTIME, FH, the _NOW bits,
// KILL_SUIDGID ...) on files the caller owns or not, setuid ones included; open flags,
// modes, sizes and offsets from small to huge; names from the pre-populated share and a
// hostile pool; callers 0, 1000 and 65534; xattrs; writable buffers whole, split at the out
// header, or too small. Each request carries a description of its opcode and fields, for
// the ring of recent requests a failure prints. The model is loose on purpose (lookup
// counts are followed for FORGET to stay plausible, nothing is asserted from it), except
// for what INIT agreed, which decides the shapes of the parity features (parity-requests.ts):
// INIT with INIT_EXT and flags2, extension areas on CREATE/MKDIR/MKNOD/SYMLINK/TMPFILE (a
// label when SECURITY_CTX is agreed, supplementary groups, broken areas) and now and then
// on others, the 16-byte fuse_setxattr_in with SETXATTR_ACL_KILL_SGID once SETXATTR_EXT is
// agreed (the 8-byte one otherwise, and sometimes the wrong one), POSIX ACL values, and
// FUSE_OPEN_KILL_SUIDGID on OPEN and CREATE.
import {
  AccessIn, BatchForgetIn, CopyFileRangeIn, CreateIn, ENTRY_OUT_SIZE, EntryOutHead, FATTR, FallocateIn, FlushIn,
  ForgetIn, ForgetOne, FsyncIn, GetattrIn, GetxattrIn, InitIn, InterruptIn, LinkIn, LseekIn, MkdirIn, MknodIn, Op,
  OpenIn, OpenOut, ReadIn, ReleaseIn, Rename2In, RenameIn, SetattrIn, SetxattrIn, SETXATTR_IN_COMPAT_SIZE, SyncfsIn, WriteIn, opName,
  Attr, type FieldType, type Struct, type StructValue, FUSE_OPEN_KILL_SUIDGID, FUSE_SETXATTR_ACL_KILL_SGID, InHeader, InitFlag,
  InitOut,
} from '../../src/fs/fuse-abi.js';
import { HIPRIO, REQUEST } from '../frontend/virtio-fs.js';
import { cstr, request, struct } from '../fs-helpers.js';
import { ParityShapes, type ExtArea } from './parity-requests.js';
import { PickSet, Rng } from './prng.js';

const U64_MAX = (1n << 64n) - 1n;
const S_IFMT = 0o170000;
const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFIFO = 0o010000;
const S_IFCHR = 0o020000;
const S_IFSOCK = 0o140000;
const S_IFLNK = 0o120000;

/** Callers: root, the owner of the pre-populated setuid files, nobody. */
export const CALLERS = [0, 1000, 65534];

/** Names every share gets besides what the test pre-populates, and hostile ones. */
const NEW_NAMES = ['n1', 'n2', 'n3', 'n4', 'sub', 'tmp', 'x'];
const HOSTILE = [
  '..', '.', '', 'a/b', '/abs', '../canary', '../canary/file', '/etc/passwd', 'x'.repeat(255), 'y'.repeat(256),
  'nul\0after', '\n', ' ', '-rf', '\u00e9\u4e2d', '*', 'a'.repeat(4000),
];
/** Names that are not valid UTF-8, and one that is what a lossy decoding of the first makes. */
const NOT_UTF8 = [Buffer.from([0x66, 0xff, 0x66]), Buffer.from([0xc3, 0x28]), Buffer.from([0x80]), Buffer.from('f\ufffdf')];
const XATTRS = [
  'user.a', 'user.b', 'user.' + 'z'.repeat(240), 'trusted.t', 'security.capability', 'security.selinux',
  'system.posix_acl_access', 'system.posix_acl_default', 'user', 'bogus.x', '', 'user.a/b',
];
const OPEN_BITS = [
  0o100 /* CREAT */, 0o200 /* EXCL */, 0o400 /* NOCTTY */, 0o1000 /* TRUNC */, 0o2000 /* APPEND */,
  0o4000 /* NONBLOCK */, 0o10000 /* DSYNC */, 0o20000 /* ASYNC */, 0o40000 /* DIRECT */, 0o200000 /* DIRECTORY */,
  0o400000 /* NOFOLLOW */, 0o1000000 /* NOATIME */, 0o2000000 /* CLOEXEC */, 0o4010000 /* SYNC */,
  0o10000000 /* PATH */, 0o20200000 /* TMPFILE */,
];
const MODES = [0o644, 0o755, 0o600, 0o777, 0o000, 0o4755, 0o2755, 0o6777, 0o1777, 0o444, 0o4000, 0o2010];
const SETATTR_BITS = [
  FATTR.MODE, FATTR.UID, FATTR.GID, FATTR.SIZE, FATTR.ATIME, FATTR.MTIME, FATTR.FH, FATTR.ATIME_NOW, FATTR.MTIME_NOW,
  FATTR.LOCKOWNER, FATTR.CTIME, FATTR.KILL_SUIDGID,
];
// fuse_file_lock in GETLK/SETLK: u64 start, end; u32 type, pid (after fh and owner).
const LK_IN_SIZE = 8 + 8 + 24 + 4 + 4;

function encodeDev(major: number, minor: number): number {
  return ((minor & 0xff) | ((major & 0xfff) << 8) | ((minor & ~0xff) << 12)) >>> 0;
}
// Harmless character devices only (null, zero, full, the 0:0 whiteout); never a block device.
const CHAR_DEVS = [encodeDev(1, 3), encodeDev(1, 5), encodeDev(1, 7), 0];

export interface RandomRequest {
  op: number;
  unique: bigint;
  /** Device-readable descriptors: the whole request, sometimes split. */
  parts: Buffer[];
  /** Device-writable descriptor lengths; empty for an opcode that gets no reply. */
  replyLens: number[];
  queue: number;
  /** The opcode and every field, for the failure report. */
  desc: string;
  /** The smallest success body this request may get (exact for fixed-size replies). */
  expect: { exact?: number; max?: number };
  /** Model update from a reply (error 0 only). */
  onOk?: (body: Buffer) => void;
  /** Model update from an error reply. */
  onFail?: () => void;
}

type Body = {
  op: number; nodeid: bigint; args: Buffer[]; bulkFrom?: number; replyBody: number; expect: RandomRequest['expect'];
  onOk?: (b: Buffer) => void; ext?: ExtArea;
};

interface NodeInfo {
  type: number;
  refs: number;
}

interface FhInfo {
  node: bigint;
  dir: boolean;
}

const fmt = (v: unknown): string => (typeof v === 'bigint' ? (v > 0xffffn ? `0x${v.toString(16)}` : String(v)) : typeof v === 'number' && v > 0xffff ? `0x${v.toString(16)}` : String(v));

export class RandomRequests {
  readonly rng: Rng;
  private readonly nodes = new Map<number, NodeInfo>();
  private readonly dirs = new PickSet();
  private readonly files = new PickSet();
  private readonly others = new PickSet();
  private readonly stale = new PickSet();
  private readonly fhs = new Map<number, FhInfo>();
  private readonly fileFh = new PickSet();
  private readonly dirFh = new PickSet();
  private readonly staleFh = new PickSet();
  private unique = 1n << 20n;
  private fields: string[] = [];
  /** After DESTROY or a refused INIT, until an INIT: every request but INIT gets EIO. */
  destroyed = false;
  /** What the last successful INIT agreed (flags, and flags2 with INIT_EXT). */
  agreedFlags = 0;
  agreedFlags2 = 0;
  private readonly parity: ParityShapes;

  constructor(seed: number, private readonly shareNames: readonly string[]) {
    this.rng = new Rng(seed);
    this.parity = new ParityShapes(this.rng);
  }

  /** Take the agreement of an INIT reply (fuse_init_out). */
  initReplied(body: Buffer): void {
    if (body.length < 24) return;
    const o = InitOut.decode(Buffer.concat([body, Buffer.alloc(Math.max(0, InitOut.size - body.length))]), 0);
    this.agreedFlags = o.flags;
    this.agreedFlags2 = (o.flags & InitFlag.INIT_EXT) !== 0 ? o.flags2 : 0;
  }

  // ---- loose model ----
  private addEntry(body: Buffer, at = 0): void {
    const id = Number(EntryOutHead.decode(body, at).nodeid);
    const mode = Attr.decode(body, at + EntryOutHead.size).mode;
    if (id <= 1) return;
    const n = this.nodes.get(id);
    if (n !== undefined) {
      n.refs++;
      return;
    }
    this.nodes.set(id, { type: mode & S_IFMT, refs: 1 });
    this.stale.delete(id);
    const t = mode & S_IFMT;
    (t === S_IFDIR ? this.dirs : t === S_IFREG ? this.files : this.others).add(id);
  }

  private forgetNode(id: number, n: number): void {
    const info = this.nodes.get(id);
    if (info === undefined) return;
    info.refs -= n;
    if (info.refs > 0) return;
    this.nodes.delete(id);
    this.dirs.delete(id);
    this.files.delete(id);
    this.others.delete(id);
    this.stale.add(id);
  }

  private addFh(body: Buffer, at: number, node: bigint, dir: boolean): void {
    const fh = Number(OpenOut.decode(body, at).fh);
    this.fhs.set(fh, { node, dir });
    (dir ? this.dirFh : this.fileFh).add(fh);
    this.staleFh.delete(fh);
  }

  private dropFh(fh: bigint): void {
    const f = Number(fh);
    if (!this.fhs.has(f)) return;
    this.fhs.delete(f);
    this.fileFh.delete(f);
    this.dirFh.delete(f);
    this.staleFh.add(f);
  }

  /** DESTROY and a second INIT drop everything the guest held. */
  private dropAll(): void {
    for (const id of [...this.nodes.keys()]) this.forgetNode(id, Infinity);
    for (const fh of [...this.fhs.keys()]) this.dropFh(BigInt(fh));
  }

  /** Up to `n` node ids the guest holds (for checks around a migration). */
  heldNodeIds(n: number): bigint[] {
    return [...this.nodes.keys()].slice(0, n).map((id) => BigInt(id));
  }

  get heldNodes(): number {
    return this.nodes.size;
  }

  get heldFhs(): number {
    return this.fhs.size;
  }

  // ---- value pools ----
  private s<F extends Record<string, FieldType>>(S: Struct<F>, v: Partial<StructValue<F>>): Buffer {
    const b = Buffer.alloc(S.size);
    S.encode(b, 0, v);
    this.fields.push(`${S.name.replace(/^fuse_/, '')}{${Object.entries(v).map(([k, x]) => `${k}=${fmt(x)}`).join(' ')}}`);
    return b;
  }

  private node(pref: 'dir' | 'file' | 'other' | 'any'): bigint {
    const r = this.rng.int(100);
    const set = pref === 'dir' ? this.dirs : pref === 'file' ? this.files : pref === 'other' ? this.others : undefined;
    if (r < 55 && set !== undefined && set.size > 0) return BigInt(set.pick(this.rng));
    if (r < 70) return 1n;
    if (r < 80 && this.nodes.size > 0) return BigInt([...this.nodes.keys()][this.rng.int(this.nodes.size)] as number);
    if (r < 87 && this.stale.size > 0) return BigInt(this.stale.pick(this.rng));
    if (r < 90) return 0n;
    if (r < 94) return this.rng.u64();
    if (r < 96) return U64_MAX;
    if (set !== undefined && set.size > 0) return BigInt(set.pick(this.rng));
    return BigInt(2 + this.rng.int(200));
  }

  /** A handle and the node to send it with (mostly its own, as a client does). */
  private fh(dir: boolean): { fh: bigint; node: bigint } {
    const r = this.rng.int(100);
    const own = dir ? this.dirFh : this.fileFh;
    const other = dir ? this.fileFh : this.dirFh;
    let fh: bigint;
    if (r < 72 && own.size > 0) fh = BigInt(own.pick(this.rng));
    else if (r < 78 && other.size > 0) fh = BigInt(other.pick(this.rng));
    else if (r < 85 && this.staleFh.size > 0) fh = BigInt(this.staleFh.pick(this.rng));
    else if (r < 89) fh = 0n;
    else if (r < 94) fh = this.rng.u64();
    else if (r < 96) fh = U64_MAX;
    else fh = BigInt(this.rng.int(64));
    const info = this.fhs.get(Number(fh));
    return { fh, node: info !== undefined && this.rng.chance(0.85) ? info.node : this.node(dir ? 'dir' : 'file') };
  }

  private name(): string {
    const r = this.rng.int(100);
    if (r < 55) return this.rng.pick(this.shareNames);
    if (r < 80) return this.rng.pick(NEW_NAMES);
    return this.rng.pick(HOSTILE);
  }

  private nameArg(): Buffer {
    if (this.rng.chance(0.02)) {
      // Bytes that are not UTF-8 (Linux names are bytes): the daemon's own paths for them, in
      // /proc and in a migration's search, must not turn them into another file's name.
      const raw = this.rng.pick(NOT_UTF8);
      this.fields.push(`name=0x${raw.toString('hex')}`);
      return cstr(raw);
    }
    const n = this.name();
    this.fields.push(`name=${JSON.stringify(n.length > 40 ? `${n.slice(0, 8)}...(${n.length})` : n)}`);
    return cstr(n);
  }

  private mode(): number {
    return this.rng.chance(0.85) ? this.rng.pick(MODES) : this.rng.u32() & 0o7777;
  }

  private off(): bigint {
    const r = this.rng.int(100);
    if (r < 60) return BigInt(this.rng.int(70000));
    if (r < 70) return this.rng.pick([0n, 4095n, 4096n, 1n << 20n]);
    if (r < 78) return 1n << 44n;
    if (r < 84) return (1n << 63n) - 1n;
    if (r < 90) return U64_MAX;
    return this.rng.u64() | (1n << 60n);
  }

  private size(): number {
    const r = this.rng.int(100);
    if (r < 55) return this.rng.int(8192);
    if (r < 65) return 0;
    if (r < 78) return this.rng.pick([4096, 65536, 131072]);
    if (r < 88) return 0xffffffff;
    return this.rng.u32();
  }

  private openFlags(): number {
    if (this.rng.chance(0.06)) return this.rng.u32();
    let f = this.rng.int(3);
    const extra = this.rng.int(4);
    for (let i = 0; i < extra; i++) f |= this.rng.pick(OPEN_BITS);
    return f >>> 0;
  }

  private xname(): Buffer {
    const n = this.rng.pick(XATTRS);
    this.fields.push(`xattr=${JSON.stringify(n.length > 40 ? `${n.slice(0, 10)}...` : n)}`);
    return cstr(n);
  }

  private id(): number {
    return this.rng.chance(0.9) ? this.rng.pick(CALLERS) : this.rng.pick([0xffffffff, 1, 1001, this.rng.u32()]);
  }

  // ---- requests ----
  next(): RandomRequest {
    this.fields = [];
    const rng = this.rng;
    const uid = rng.pick(CALLERS);
    const gid = rng.chance(0.8) ? uid : rng.pick(CALLERS);
    const unique = this.unique++;
    const b = this.body();
    let nodeid = b.nodeid;
    const ext = b.ext ?? (b.op === Op.INIT || b.op === Op.FORGET || b.op === Op.BATCH_FORGET ? undefined : this.parity.other());
    if (ext !== undefined && ext.desc !== '') this.fields.push(ext.desc);
    const parts0 = ext === undefined || ext.bytes.length === 0 ? Buffer.concat(b.args) : Buffer.concat([...b.args, ext.bytes]);
    const whole = request(b.op, [parts0], { nodeid, uid, gid, unique });
    if (ext !== undefined) whole.writeUInt16LE(ext.units & 0xffff, InHeader.off.totalExtlen);
    // Readable parts: mostly one descriptor (header and arguments), sometimes the bulk data
    // (WRITE, SETXATTR) in its own, as the Linux driver sends it, or a split inside the header.
    let parts: Buffer[] = [whole];
    const bulkAt = b.bulkFrom === undefined ? -1 : whole.length - (parts0.length - b.bulkFrom);
    if (bulkAt > 0 && rng.chance(0.7)) parts = [whole.subarray(0, bulkAt), whole.subarray(bulkAt)];
    else if (rng.chance(0.08) && whole.length > 20) parts = [whole.subarray(0, 20), whole.subarray(20)];
    if (b.op === Op.BATCH_FORGET) nodeid = 0n;
    const noReply = b.op === Op.FORGET || b.op === Op.BATCH_FORGET || b.op === Op.INTERRUPT;
    const want = b.replyBody;
    let replyLens: number[];
    const r = rng.int(100);
    if (noReply) replyLens = b.op === Op.INTERRUPT && rng.chance(0.5) ? [16, 64] : [];
    else if (r < 70) replyLens = want > 0 ? [16, want] : [16];
    else if (r < 85) replyLens = [16 + want];
    else if (r < 92) replyLens = want > 0 ? [8, 8, want] : [8, 8];
    else if (r < 96 && want > 0) replyLens = [16, rng.int(want)].filter((n) => n > 0);
    else replyLens = [16, want + rng.int(4096) + 1];
    const queue = (b.op === Op.FORGET || b.op === Op.BATCH_FORGET) && rng.chance(0.8) ? HIPRIO : REQUEST;
    const desc = `${opName.get(b.op) ?? `opcode ${b.op}`} node ${fmt(nodeid)} uid ${uid} gid ${gid} unique ${unique} ` +
      `${this.fields.join(' ')} | parts ${parts.map((p) => p.length).join('+')} reply ${replyLens.join('+') || 'none'} q${queue}`;
    const onOk = b.onOk;
    return {
      op: b.op, unique, parts, replyLens, queue, desc, expect: b.expect,
      onOk: b.op === Op.DESTROY ? () => { this.dropAll(); this.destroyed = true; }
        : b.op === Op.INIT ? (body) => { if (!this.destroyed) this.dropAll(); this.destroyed = false; this.initReplied(body); }
        : onOk,
      // A refused INIT (EPROTO: a flag --posix-acl or --security-label needs is missing) leaves the session uninitialized.
      onFail: b.op === Op.INIT ? () => { this.dropAll(); this.destroyed = true; } : undefined,
    };
  }

  /** Update the model for a request that gets no reply (FORGET, BATCH_FORGET). */
  noReply(req: RandomRequest): void {
    req.onOk?.(Buffer.alloc(0));
  }

  private body(): Body {
    const rng = this.rng;
    const entry = (op: number, nodeid: bigint, args: Buffer[]): Body =>
      ({ op, nodeid, args, replyBody: ENTRY_OUT_SIZE, expect: { exact: ENTRY_OUT_SIZE }, onOk: (b) => this.addEntry(b) });
    // A creating request carries what the kernel appends for the agreed flags2 (or a broken area).
    const made = (op: number, nodeid: bigint, args: Buffer[]): Body => ({ ...entry(op, nodeid, args), ext: this.parity.creating(this.agreedFlags2) });
    const none = (op: number, nodeid: bigint, args: Buffer[]): Body => ({ op, nodeid, args, replyBody: 0, expect: { exact: 0 } });
    if (this.destroyed && rng.chance(0.3)) return this.init();
    const r = rng.int(1000);
    if (r < 100) return entry(Op.LOOKUP, this.node('dir'), [this.nameArg()]);
    if (r < 125) {
      const nodeid = this.node('any');
      const n = rng.pick([1n, 1n, 2n, BigInt(this.nodes.get(Number(nodeid))?.refs ?? 1), 0n, U64_MAX]);
      return { op: Op.FORGET, nodeid, args: [this.s(ForgetIn, { nlookup: n })], replyBody: 0, expect: {}, onOk: () => this.forgetNode(Number(nodeid), Number(n)) };
    }
    if (r < 140) {
      const k = rng.int(8);
      const items: [bigint, bigint][] = [];
      for (let i = 0; i < k; i++) items.push([this.node('any'), rng.pick([1n, 1n, 2n, 0n, U64_MAX])]);
      const count = rng.chance(0.9) ? k : rng.pick([k + 1, 0xffffffff, 0]);
      const args = [this.s(BatchForgetIn, { count })];
      for (const [nodeid, nlookup] of items) args.push(this.s(ForgetOne, { nodeid, nlookup }));
      return { op: Op.BATCH_FORGET, nodeid: 0n, args, replyBody: 0, expect: {}, onOk: () => { for (const [id, n] of items.slice(0, Math.min(k, count))) this.forgetNode(Number(id), Number(n)); } };
    }
    if (r < 185) {
      const useFh = rng.chance(0.4);
      const { fh, node } = useFh ? this.fh(false) : { fh: 0n, node: this.node('any') };
      return { op: Op.GETATTR, nodeid: node, args: [this.s(GetattrIn, { getattrFlags: useFh ? 1 : rng.chance(0.1) ? rng.u32() : 0, fh })], replyBody: 104, expect: { exact: 104 } };
    }
    if (r < 260) return this.setattr();
    if (r < 272) return { op: Op.READLINK, nodeid: this.node(rng.chance(0.6) ? 'other' : 'any'), args: [], replyBody: 4096, expect: { max: 4096 } };
    if (r < 287) {
      const target = rng.pick(['f', '../..', '/etc/shadow', 'dir/../../canary', 'x'.repeat(rng.chance(0.1) ? 5000 : 10), '']);
      this.fields.push(`target=${JSON.stringify(target.slice(0, 20))}`);
      return made(Op.SYMLINK, this.node('dir'), [this.nameArg(), cstr(target)]);
    }
    if (r < 305) {
      const type = rng.pick([S_IFIFO, S_IFIFO, S_IFREG, S_IFCHR, S_IFSOCK, 0, S_IFDIR, S_IFLNK]);
      const rdev = type === S_IFCHR ? rng.pick(CHAR_DEVS) : rng.chance(0.1) ? rng.pick(CHAR_DEVS) : 0;
      return made(Op.MKNOD, this.node('dir'), [this.s(MknodIn, { mode: type | this.mode(), rdev, umask: rng.pick([0o022, 0, 0o777]) }), this.nameArg()]);
    }
    if (r < 325) return made(Op.MKDIR, this.node('dir'), [this.s(MkdirIn, { mode: rng.chance(0.9) ? this.mode() : rng.u32(), umask: rng.pick([0o022, 0]) }), this.nameArg()]);
    if (r < 345) return none(Op.UNLINK, this.node('dir'), [this.nameArg()]);
    if (r < 355) return none(Op.RMDIR, this.node('dir'), [this.nameArg()]);
    if (r < 370) return none(Op.RENAME, this.node('dir'), [this.s(RenameIn, { newdir: this.node('dir') }), this.nameArg(), this.nameArg()]);
    if (r < 385) {
      const flags = rng.chance(0.9) ? rng.pick([0, 1, 2, 4, 5, 3, 6]) : rng.u32();
      return none(Op.RENAME2, this.node('dir'), [this.s(Rename2In, { newdir: this.node('dir'), flags }), this.nameArg(), this.nameArg()]);
    }
    if (r < 400) return entry(Op.LINK, this.node('dir'), [this.s(LinkIn, { oldnodeid: this.node(rng.chance(0.5) ? 'file' : 'any') }), this.nameArg()]);
    if (r < 445) {
      const nodeid = this.node(rng.chance(0.85) ? 'file' : 'any');
      return { op: Op.OPEN, nodeid, args: [this.s(OpenIn, { flags: this.openFlags(), openFlags: this.openInFlags() })], replyBody: 16, expect: { exact: 16 }, onOk: (b) => this.addFh(b, 0, nodeid, false) };
    }
    if (r < 480) return this.create(Op.CREATE);
    if (r < 492) return this.create(Op.TMPFILE);
    if (r < 530) {
      const { fh, node } = this.fh(false);
      const size = this.size();
      return { op: Op.READ, nodeid: node, args: [this.s(ReadIn, { fh, offset: this.off(), size, readFlags: rng.chance(0.9) ? 0 : rng.u32(), flags: rng.chance(0.9) ? 0 : rng.u32() })], replyBody: Math.min(size, 256 * 1024), expect: { max: size } };
    }
    if (r < 580) {
      const { fh, node } = this.fh(false);
      const data = rng.bytes(rng.chance(0.9) ? rng.int(4096) : rng.int(65536));
      const writeFlags = rng.chance(0.7) ? rng.pick([0, 1, 4, 5]) : rng.u32();
      const args = [this.s(WriteIn, { fh, offset: this.off(), size: data.length, writeFlags, flags: rng.chance(0.8) ? 0 : this.openFlags() }), data];
      this.fields.push(`data=${data.length}`);
      return { op: Op.WRITE, nodeid: node, args, bulkFrom: WriteIn.size, replyBody: 8, expect: { exact: 8 } };
    }
    if (r < 595) {
      const { fh, node } = this.fh(false);
      return none(Op.FLUSH, node, [this.s(FlushIn, { fh, lockOwner: rng.u64() })]);
    }
    if (r < 630) return this.release(false);
    if (r < 642) {
      const { fh, node } = this.fh(false);
      return none(Op.FSYNC, node, [this.s(FsyncIn, { fh, fsyncFlags: rng.int(4) })]);
    }
    if (r < 665) {
      const nodeid = this.node(rng.chance(0.85) ? 'dir' : 'any');
      return { op: Op.OPENDIR, nodeid, args: [this.s(OpenIn, { flags: rng.chance(0.8) ? 0o200000 : this.openFlags() })], replyBody: 16, expect: { exact: 16 }, onOk: (b) => this.addFh(b, 0, nodeid, true) };
    }
    if (r < 700) {
      const { fh, node } = this.fh(true);
      const size = rng.chance(0.8) ? rng.pick([4096, 8192, 65536, 200]) : this.size();
      const op = rng.chance(0.5) ? Op.READDIR : Op.READDIRPLUS;
      const offset = rng.chance(0.7) ? BigInt(rng.int(12)) : this.off();
      return { op, nodeid: node, args: [this.s(ReadIn, { fh, offset, size })], replyBody: Math.min(size, 256 * 1024), expect: { max: size }, onOk: op === Op.READDIRPLUS ? (b) => this.direntsPlus(b) : undefined };
    }
    if (r < 715) return this.release(true);
    if (r < 722) {
      const { fh, node } = this.fh(true);
      return none(Op.FSYNCDIR, node, [this.s(FsyncIn, { fh, fsyncFlags: rng.int(2) })]);
    }
    if (r < 732) return { op: Op.STATFS, nodeid: this.node('any'), args: [], replyBody: 80, expect: { exact: 80 } };
    if (r < 747) return none(Op.ACCESS, this.node('any'), [this.s(AccessIn, { mask: rng.chance(0.9) ? rng.int(8) : rng.u32() })]);
    if (r < 800) return this.xattrOp();
    if (r < 820) {
      const { fh, node } = this.fh(false);
      const mode = rng.chance(0.85) ? rng.pick([0, 1, 3, 0x10, 0x11, 0x08, 0x20, 0x02, 0x40]) : rng.u32();
      const length = rng.chance(0.7) ? BigInt(1 + rng.int(65536)) : this.off();
      return none(Op.FALLOCATE, node, [this.s(FallocateIn, { fh, offset: rng.chance(0.7) ? BigInt(rng.int(65536)) : this.off(), length, mode })]);
    }
    if (r < 840) {
      const { fh, node } = this.fh(false);
      const whence = rng.chance(0.9) ? rng.int(5) : rng.u32();
      return { op: Op.LSEEK, nodeid: node, args: [this.s(LseekIn, { fh, offset: rng.chance(0.7) ? BigInt(rng.int(70000)) : this.off(), whence })], replyBody: 8, expect: { exact: 8 } };
    }
    if (r < 860) {
      const a = this.fh(false);
      const b = this.fh(false);
      const len = rng.chance(0.7) ? BigInt(rng.int(100000)) : rng.pick([U64_MAX, 1n << 40n, 0n]);
      return {
        op: Op.COPY_FILE_RANGE, nodeid: a.node, replyBody: 8, expect: { exact: 8 },
        args: [this.s(CopyFileRangeIn, { fhIn: a.fh, offIn: rng.chance(0.7) ? BigInt(rng.int(70000)) : this.off(), nodeidOut: b.node, fhOut: b.fh, offOut: rng.chance(0.7) ? BigInt(rng.int(70000)) : this.off(), len, flags: rng.chance(0.9) ? 0n : rng.u64() })],
      };
    }
    if (r < 866) return none(Op.SYNCFS, this.node('any'), [this.s(SyncfsIn, {})]);
    if (r < 880) return { op: Op.INTERRUPT, nodeid: 0n, args: [this.s(InterruptIn, { unique: rng.chance(0.5) ? this.unique - 1n : rng.u64() })], replyBody: 0, expect: {} };
    if (r < 900) {
      // Locks: GETLK (replies a lock), SETLK, SETLKW; ENOSYS today, but the daemon must say so.
      const op = rng.pick([Op.GETLK, Op.SETLK, Op.SETLKW]);
      const { fh, node } = this.fh(false);
      const lk = rng.bytes(LK_IN_SIZE);
      lk.writeBigUInt64LE(fh, 0);
      this.fields.push(`lk_in{fh=${fmt(fh)} random}`);
      return { op, nodeid: node, args: [lk], replyBody: 24, expect: { exact: 24 } };
    }
    if (r < 935) {
      const op = rng.pick([Op.BMAP, Op.IOCTL, Op.POLL, Op.SETUPMAPPING, Op.REMOVEMAPPING, Op.NOTIFY_REPLY, 0, 7, 19, 52, 53, 54, 99, 4096, 0xffffffff]);
      const len = rng.int(160);
      this.fields.push(`random ${len} bytes`);
      return { op, nodeid: this.node('any'), args: [rng.bytes(len)], replyBody: 256, expect: { max: 256 } };
    }
    if (r < 936) return this.init();
    return entry(Op.LOOKUP, this.node('dir'), [this.nameArg()]);
  }

  /** fuse_open_in/fuse_create_in open_flags: mostly none, FUSE_OPEN_KILL_SUIDGID (HANDLE_KILLPRIV_V2) often, random bits now and then. */
  private openInFlags(): number {
    const r = this.rng.int(100);
    return r < 70 ? 0 : r < 93 ? FUSE_OPEN_KILL_SUIDGID : this.rng.u32();
  }

  private init(): Body {
    if (!this.destroyed && this.rng.chance(0.3)) return { op: Op.DESTROY, nodeid: 0n, args: [], replyBody: 0, expect: { exact: 0 } };
    const flags = this.rng.chance(0.5) ? 0xffffffff : this.rng.u32();
    const minor = this.rng.pick([38, 38, 38, 31, 36, 40]);
    const init = this.s(InitIn, { major: 7, minor, maxReadahead: 131072, flags, flags2: this.parity.initFlags2() });
    // 7.36+ with INIT_EXT sends the 64-byte struct; older ones (and sometimes a liar) the first 16 bytes.
    const short = minor < 36 || (flags & InitFlag.INIT_EXT) === 0 ? this.rng.chance(0.8) : this.rng.chance(0.05);
    return { op: Op.INIT, nodeid: 0n, args: [short ? init.subarray(0, 16) : init], replyBody: 64, expect: { max: 64 } };
  }

  private setattr(): Body {
    const rng = this.rng;
    let valid = 0;
    if (rng.chance(0.05)) valid = rng.u32();
    else for (const bit of SETATTR_BITS) if (rng.chance(bit === FATTR.FH ? 0.5 : bit === FATTR.MODE || bit === FATTR.SIZE ? 0.4 : 0.25)) valid |= bit;
    const withFh = (valid & FATTR.FH) !== 0;
    const { fh, node } = withFh ? this.fh(false) : { fh: rng.chance(0.5) ? 0n : rng.u64(), node: this.node(rng.chance(0.7) ? 'file' : 'any') };
    const time = (): bigint => (rng.chance(0.8) ? BigInt(rng.int(2_000_000_000)) : rng.u64());
    const nsec = (): number => (rng.chance(0.85) ? rng.int(1_000_000_000) : rng.pick([0x3fffffff, 0x3ffffffe, rng.u32()]));
    const size = rng.chance(0.75) ? BigInt(rng.int(70000)) : this.off();
    const v = struct(SetattrIn, {
      valid, fh, size, lockOwner: rng.u64(), atime: time(), mtime: time(), ctime: time(), atimensec: nsec(), mtimensec: nsec(),
      ctimensec: nsec(), mode: rng.chance(0.9) ? (rng.chance(0.5) ? S_IFREG : 0) | this.mode() : rng.u32(), uid: this.id(), gid: this.id(),
    });
    const vv = SetattrIn.decode(v, 0);
    const shown = ['valid', 'fh', 'size', 'mode', 'uid', 'gid', 'atime', 'atimensec', 'mtime', 'mtimensec'] as const;
    this.fields.push(`setattr_in{${shown.map((k) => `${k}=${k === 'mode' ? `0${vv.mode.toString(8)}` : fmt(vv[k])}`).join(' ')}}`);
    return { op: Op.SETATTR, nodeid: node, args: [v], replyBody: 104, expect: { exact: 104 } };
  }

  private create(op: number): Body {
    const rng = this.rng;
    const parent = this.node('dir');
    const mode = (rng.chance(0.9) ? S_IFREG : rng.pick([S_IFIFO, S_IFCHR, S_IFDIR, 0])) | this.mode();
    const args = [this.s(CreateIn, { flags: (this.openFlags() | (rng.chance(0.6) ? 0o100 : 0)) >>> 0, mode, umask: rng.pick([0o022, 0, 0o077]), openFlags: this.openInFlags() })];
    args.push(op === Op.TMPFILE && rng.chance(0.6) ? cstr('/') : this.nameArg());
    return {
      op, nodeid: parent, args, replyBody: ENTRY_OUT_SIZE + 16, expect: { exact: ENTRY_OUT_SIZE + 16 }, ext: this.parity.creating(this.agreedFlags2),
      onOk: (b) => {
        this.addEntry(b);
        this.addFh(b, ENTRY_OUT_SIZE, EntryOutHead.decode(b, 0).nodeid, false);
      },
    };
  }

  private release(dir: boolean): Body {
    const { fh, node } = this.fh(dir);
    return {
      op: dir ? Op.RELEASEDIR : Op.RELEASE, nodeid: node, replyBody: 0, expect: { exact: 0 },
      args: [this.s(ReleaseIn, { fh, flags: this.openFlags(), releaseFlags: this.rng.int(4), lockOwner: this.rng.u64() })],
      onOk: () => this.dropFh(fh),
    };
  }

  private xattrOp(): Body {
    const rng = this.rng;
    const nodeid = this.node(rng.pick(['file', 'dir', 'other', 'any'] as const));
    switch (rng.int(4)) {
      case 0: {
        const acl = rng.chance(0.35);
        let value: Buffer;
        let name: Buffer;
        if (acl) {
          const a = this.parity.aclValue();
          value = a.value;
          this.fields.push(a.desc);
          const n = rng.chance(0.7) ? 'system.posix_acl_access' : 'system.posix_acl_default';
          this.fields.push(`xattr=${n}`);
          name = cstr(n);
        } else {
          value = rng.chance(0.15) ? Buffer.from([2, 0, 0, 0, 1, 0, 7, 0, 0xff, 0xff, 0xff, 0xff]) : rng.bytes(rng.chance(0.9) ? rng.int(100) : rng.int(66000));
          name = this.xname();
        }
        // SETXATTR_EXT agreed: the 16-byte struct with setxattr_flags; else the 8-byte one (and now and then the other).
        const ext = ((this.agreedFlags & InitFlag.SETXATTR_EXT) !== 0) !== rng.chance(0.05);
        const setxattrFlags = rng.chance(0.6) ? 0 : rng.chance(0.8) ? FUSE_SETXATTR_ACL_KILL_SGID : rng.u32();
        const head = this.s(SetxattrIn, { size: rng.chance(0.97) ? value.length : rng.u32(), flags: rng.chance(0.8) ? rng.int(3) : rng.u32(), ...(ext ? { setxattrFlags } : {}) });
        const args = [ext ? head : head.subarray(0, SETXATTR_IN_COMPAT_SIZE), name, value];
        this.fields.push(`value=${value.length}${ext ? ' ext' : ''}`);
        return { op: Op.SETXATTR, nodeid, args, bulkFrom: args[0].length + args[1].length, replyBody: 0, expect: { exact: 0 } };
      }
      case 1: {
        const size = rng.chance(0.3) ? 0 : this.size();
        return { op: Op.GETXATTR, nodeid, args: [this.s(GetxattrIn, { size }), this.xname()], replyBody: Math.min(Math.max(size, 8), 256 * 1024), expect: { max: Math.max(size, 8) } };
      }
      case 2: {
        const size = rng.chance(0.3) ? 0 : this.size();
        return { op: Op.LISTXATTR, nodeid, args: [this.s(GetxattrIn, { size })], replyBody: Math.min(Math.max(size, 8), 256 * 1024), expect: { max: Math.max(size, 8) } };
      }
      default:
        return { op: Op.REMOVEXATTR, nodeid, args: [this.xname()], replyBody: 0, expect: { exact: 0 } };
    }
  }

  /** READDIRPLUS entries with a node id are lookups the guest now holds. */
  private direntsPlus(b: Buffer): void {
    let p = 0;
    while (p + ENTRY_OUT_SIZE + 24 <= b.length) {
      const namelen = b.readUInt32LE(p + ENTRY_OUT_SIZE + 16);
      if (EntryOutHead.decode(b, p).nodeid !== 0n) this.addEntry(b, p);
      p += (ENTRY_OUT_SIZE + 24 + namelen + 7) & ~7;
    }
  }
}

