// The wire format of the daemon's state during live migration (vhost-user DEVICE_STATE):
// what the source's inode and handle tables become, as bytes QEMU carries to the
// destination unread. The destination decodes input that crossed two processes and a
// network: every length is checked against what is left, every count is bounded by the
// bytes it needs, node ids and fhs are unique, a parent is a record that came before (so
// no cycle can be sent), names pass the same rules as a LOOKUP name, and anything else
// fails the whole load with a StateFormatError naming the offset. Nothing here touches
// the file system (see migration.ts for that).
//
// Layout (little-endian): header "VFSSTATE" u32 version u32 inodes u32 handles u32 0;
// session: u32 initialized (0/1), u32 INIT flags, u32 INIT flags2, u32 0;
// per inode: u64 nodeid, u64 lookups, u8 kind, u8 has-verify-handle, u16 name bytes,
// u32 errno, u64 parent, u16 handle bytes, then the handle, then the name; per handle:
// u64 fh, u64 nodeid, u32 open flags; trailer "VFSEND\0\0".

export const STATE_MAGIC = Buffer.from('VFSSTATE', 'latin1');
export const STATE_TRAILER = Buffer.from('VFSEND\0\0', 'latin1');
export const STATE_VERSION = 1;
const HEADER_BYTES = 24 + 16;
const INODE_FIXED = 8 + 8 + 1 + 1 + 2 + 4 + 8 + 2;
const HANDLE_BYTES = 8 + 8 + 4;
/** struct file_handle: u32 handle_bytes, i32 handle_type, then at most MAX_HANDLE_SZ bytes. */
const FILE_HANDLE_HEAD = 8;
export const MAX_HANDLE_SZ = 128;
const NAME_MAX = 255;
/** Longest path a state carries (paths are relative to the share; checked on both sides). */
export const MIGRATION_PATH_MAX = 4096;
/** The root's node id: never sent, always the destination's own shared directory. */
export const ROOT_NODEID = 1;

const Kind = { name: 1, path: 2, handle: 3, failed: 4 } as const;

/** How the destination finds an inode again. */
export type InodeLocation =
  /** `name` (one component) in the inode `parent` (an earlier record, or the root). */
  | { kind: 'name'; parent: number; name: Buffer }
  /** A path of components relative to the shared directory ("a/b/c"). */
  | { kind: 'path'; path: Buffer }
  /** A struct file_handle (--migration-mode=file-handles). */
  | { kind: 'handle'; handle: Buffer }
  /** The source could not say where it is: the guest gets this errno for it. */
  | { kind: 'failed'; errno: number };

export interface MigratedInode {
  nodeid: number;
  /** The guest's lookup count. */
  refs: number;
  location: InodeLocation;
  /** --migration-verify-handles: the file handle the destination's inode must have. */
  verifyHandle: Buffer | null;
}

export interface MigratedHandle {
  fh: number;
  nodeid: number;
  /** The host open flags the handle was opened with. */
  flags: number;
}

/** What INIT agreed with the guest (the destination sees no INIT of its own). */
export interface MigratedSession {
  flags: number;
  flags2: number;
}

export interface MigrationState {
  /** null: the guest had not sent INIT yet. */
  session: MigratedSession | null;
  inodes: MigratedInode[];
  handles: MigratedHandle[];
}

export class StateFormatError extends Error {
  constructor(message: string, readonly offset: number) {
    super(`migration state at byte ${offset}: ${message}`);
    this.name = 'StateFormatError';
  }
}

/** Why `name` cannot be one path component as LOOKUP would take it, or undefined. */
export function badComponent(name: Buffer): string | undefined {
  if (name.length === 0) return 'empty name';
  if (name.length > NAME_MAX) return `name of ${name.length} bytes (at most ${NAME_MAX})`;
  if (name.includes(0x2f)) return 'name contains "/"';
  if (name.includes(0)) return 'name contains NUL';
  if ((name.length === 1 && name[0] === 0x2e) || (name.length === 2 && name[0] === 0x2e && name[1] === 0x2e)) return `name "${name.toString('latin1')}"`;
  return undefined;
}

/** The components of a relative path, each checked as a name; a string when it is not one. */
export function splitPath(path: Buffer): Buffer[] | string {
  if (path.length === 0 || path.length > MIGRATION_PATH_MAX) return `path of ${path.length} bytes (1 to ${MIGRATION_PATH_MAX})`;
  const parts: Buffer[] = [];
  let start = 0;
  for (let i = 0; i <= path.length; i++) {
    if (i === path.length || path[i] === 0x2f) {
      const part = path.subarray(start, i);
      const bad = badComponent(part);
      if (bad !== undefined) return `path component ${parts.length}: ${bad}`;
      parts.push(part);
      start = i + 1;
    }
  }
  return parts;
}

function badHandle(h: Buffer): string | undefined {
  if (h.length < FILE_HANDLE_HEAD) return `file handle of ${h.length} bytes`;
  const n = h.readUInt32LE(0);
  if (n === 0 || n > MAX_HANDLE_SZ || h.length !== FILE_HANDLE_HEAD + n) return `file handle says ${n} bytes in ${h.length}`;
  return undefined;
}

function writeU64(b: Buffer, off: number, v: number): void {
  b.writeBigUInt64LE(BigInt(v), off);
}

/** Encode a state; the caller built it from its own tables (ordered, parents first). */
export function encodeState(s: MigrationState): Buffer {
  let size = HEADER_BYTES + STATE_TRAILER.length + s.handles.length * HANDLE_BYTES;
  for (const i of s.inodes) {
    const loc = i.location;
    const name = loc.kind === 'name' ? loc.name : loc.kind === 'path' ? loc.path : null;
    const handle = loc.kind === 'handle' ? loc.handle : i.verifyHandle;
    size += INODE_FIXED + (name?.length ?? 0) + (handle?.length ?? 0);
  }
  const b = Buffer.alloc(size);
  STATE_MAGIC.copy(b, 0);
  b.writeUInt32LE(STATE_VERSION, 8);
  b.writeUInt32LE(s.inodes.length, 12);
  b.writeUInt32LE(s.handles.length, 16);
  if (s.session !== null) {
    b.writeUInt32LE(1, 24);
    b.writeUInt32LE(s.session.flags >>> 0, 28);
    b.writeUInt32LE(s.session.flags2 >>> 0, 32);
  }
  let o = HEADER_BYTES;
  for (const i of s.inodes) {
    const loc = i.location;
    const name = loc.kind === 'name' ? loc.name : loc.kind === 'path' ? loc.path : null;
    const handle = loc.kind === 'handle' ? loc.handle : i.verifyHandle;
    writeU64(b, o, i.nodeid);
    writeU64(b, o + 8, i.refs);
    b.writeUInt8(Kind[loc.kind], o + 16);
    b.writeUInt8(loc.kind !== 'handle' && i.verifyHandle !== null ? 1 : 0, o + 17);
    b.writeUInt16LE(name?.length ?? 0, o + 18);
    b.writeUInt32LE(loc.kind === 'failed' ? loc.errno : 0, o + 20);
    writeU64(b, o + 24, loc.kind === 'name' ? loc.parent : 0);
    b.writeUInt16LE(handle?.length ?? 0, o + 32);
    o += INODE_FIXED;
    if (handle !== null) o += handle.copy(b, o);
    if (name !== null) o += name.copy(b, o);
  }
  for (const h of s.handles) {
    writeU64(b, o, h.fh);
    writeU64(b, o + 8, h.nodeid);
    b.writeUInt32LE(h.flags >>> 0, o + 16);
    o += HANDLE_BYTES;
  }
  STATE_TRAILER.copy(b, o);
  return b;
}

/** Decode and check a state (see the header for the rules); throws StateFormatError. */
export function decodeState(b: Buffer): MigrationState {
  const fail = (why: string, at: number): never => {
    throw new StateFormatError(why, at);
  };
  if (b.length < HEADER_BYTES + STATE_TRAILER.length) fail(`only ${b.length} bytes`, 0);
  if (!b.subarray(0, 8).equals(STATE_MAGIC)) fail('not a vfs state (bad magic)', 0);
  const version = b.readUInt32LE(8);
  if (version !== STATE_VERSION) fail(`version ${version}, this daemon reads version ${STATE_VERSION}`, 8);
  const nInodes = b.readUInt32LE(12);
  const nHandles = b.readUInt32LE(16);
  if (b.readUInt32LE(20) !== 0) fail('reserved header word is not 0', 20);
  const initialized = b.readUInt32LE(24);
  if (initialized > 1) fail(`session flag ${initialized}`, 24);
  if (b.readUInt32LE(36) !== 0) fail('reserved session word is not 0', 36);
  if (initialized === 0 && (b.readUInt32LE(28) !== 0 || b.readUInt32LE(32) !== 0)) fail('INIT flags without a session', 28);
  const session = initialized === 1 ? { flags: b.readUInt32LE(28), flags2: b.readUInt32LE(32) } : null;
  const body = b.length - HEADER_BYTES - STATE_TRAILER.length;
  if (nInodes > body / INODE_FIXED || nHandles > body / HANDLE_BYTES || nInodes * INODE_FIXED + nHandles * HANDLE_BYTES > body) {
    fail(`${nInodes} inodes and ${nHandles} handles cannot fit in ${body} bytes`, 12);
  }
  const u64 = (at: number): number => {
    const v = b.readBigUInt64LE(at);
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) fail('a 64-bit value beyond 2^53', at);
    return Number(v);
  };
  const seen = new Set<number>([ROOT_NODEID]);
  const inodes: MigratedInode[] = [];
  let o = HEADER_BYTES;
  const end = b.length - STATE_TRAILER.length;
  for (let k = 0; k < nInodes; k++) {
    const at = o;
    if (o + INODE_FIXED > end) fail(`inode record ${k} cut short`, o);
    const nodeid = u64(o);
    const refs = u64(o + 8);
    const kind = b.readUInt8(o + 16);
    const hasVerify = b.readUInt8(o + 17);
    const nameLen = b.readUInt16LE(o + 18);
    const errno = b.readUInt32LE(o + 20);
    const parent = u64(o + 24);
    const handleLen = b.readUInt16LE(o + 32);
    o += INODE_FIXED;
    if (nodeid <= ROOT_NODEID) fail(`inode record ${k}: node id ${nodeid}`, at);
    if (seen.has(nodeid)) fail(`inode record ${k}: node id ${nodeid} twice`, at);
    if (refs < 1) fail(`inode record ${k}: lookup count ${refs}`, at + 8);
    if (hasVerify > 1) fail(`inode record ${k}: verify flag ${hasVerify}`, at + 17);
    if (o + handleLen + nameLen > end) fail(`inode record ${k}: ${handleLen + nameLen} bytes of handle and name run past the end`, at);
    const handle = handleLen > 0 ? Buffer.from(b.subarray(o, o + handleLen)) : null;
    o += handleLen;
    const name = Buffer.from(b.subarray(o, o + nameLen));
    o += nameLen;
    let location: InodeLocation;
    let verifyHandle: Buffer | null = null;
    if (kind === Kind.name || kind === Kind.path) {
      if (kind === Kind.name) {
        const bad = badComponent(name);
        if (bad !== undefined) fail(`inode ${nodeid}: ${bad}`, at);
        if (!seen.has(parent)) fail(`inode ${nodeid}: parent ${parent} is not an earlier record`, at + 24);
        location = { kind: 'name', parent, name };
      } else {
        const parts = splitPath(name);
        if (typeof parts === 'string') fail(`inode ${nodeid}: ${parts}`, at);
        if (parent !== 0) fail(`inode ${nodeid}: a path record with a parent`, at + 24);
        location = { kind: 'path', path: name };
      }
      if (errno !== 0) fail(`inode ${nodeid}: errno on a located inode`, at + 20);
      if ((hasVerify === 1) !== (handle !== null)) fail(`inode ${nodeid}: verify flag and handle disagree`, at + 17);
      if (handle !== null) {
        const bad = badHandle(handle);
        if (bad !== undefined) fail(`inode ${nodeid}: ${bad}`, at + INODE_FIXED);
        verifyHandle = handle;
      }
    } else if (kind === Kind.handle) {
      if (handle === null) fail(`inode ${nodeid}: handle record without a handle`, at);
      const bad = badHandle(handle as Buffer);
      if (bad !== undefined) fail(`inode ${nodeid}: ${bad}`, at + INODE_FIXED);
      if (nameLen !== 0 || parent !== 0 || errno !== 0 || hasVerify !== 0) fail(`inode ${nodeid}: stray fields in a handle record`, at);
      location = { kind: 'handle', handle: handle as Buffer };
    } else if (kind === Kind.failed) {
      if (errno === 0 || errno > 4095) fail(`inode ${nodeid}: errno ${errno}`, at + 20);
      if (nameLen !== 0 || handleLen !== 0 || parent !== 0 || hasVerify !== 0) fail(`inode ${nodeid}: stray fields in a failed record`, at);
      location = { kind: 'failed', errno };
    } else {
      return fail(`inode ${nodeid}: unknown kind ${kind}`, at + 16);
    }
    seen.add(nodeid);
    inodes.push({ nodeid, refs, location, verifyHandle });
  }
  const fhs = new Set<number>();
  const handles: MigratedHandle[] = [];
  for (let k = 0; k < nHandles; k++) {
    if (o + HANDLE_BYTES > end) fail(`handle record ${k} cut short`, o);
    const fh = u64(o);
    const nodeid = u64(o + 8);
    const flags = b.readUInt32LE(o + 16);
    if (fh === 0 || fhs.has(fh)) fail(`handle record ${k}: fh ${fh} is 0 or repeated`, o);
    if (!seen.has(nodeid)) fail(`handle ${fh}: node ${nodeid} is not in the state`, o + 8);
    fhs.add(fh);
    handles.push({ fh, nodeid, flags });
    o += HANDLE_BYTES;
  }
  if (o !== end) fail(`${end - o} bytes after the last record`, o);
  if (!b.subarray(end).equals(STATE_TRAILER)) fail('bad trailer (state cut short or padded)', end);
  return { session, inodes, handles };
}
