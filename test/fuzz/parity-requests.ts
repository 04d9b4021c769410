// The request shapes of the drop-in parity features for the random-request fuzzer
// (random-requests.ts): request extension areas (fuse_in_header.total_extlen) with a
// security context block (SECURITY_CTX: fuse_secctx_header, fuse_secctx, a name and a
// value) and a fuse_supp_groups record (CREATE_SUPP_GROUP), well formed as a 6.x kernel
// sends them, in the pre-6.3 layout (the block after the names, not counted), and broken
// in every way the parsers check (sizes, types, counts, names, values, duplicates,
// total_extlen past the request, random bytes); POSIX ACL values for
// system.posix_acl_access/default, valid (as setfacl writes them) and garbage; and the
// flags2 words an INIT may carry. Each builder says what it made, for the failure report.
import { execFileSync } from 'node:child_process';
import { FUSE_EXT_GROUPS, FUSE_MAX_NR_SECCTX, InHeader, InitFlag2 } from '../../src/fs/fuse-abi.js';
import { request } from '../fs-helpers.js';
import type { Rng } from './prng.js';

/** An extension area to append after a request's arguments. */
export interface ExtArea {
  /** Bytes appended after the arguments. */
  bytes: Buffer;
  /** fuse_in_header.total_extlen (8-byte units); may lie. */
  units: number;
  desc: string;
}

const NONE: ExtArea = { bytes: Buffer.alloc(0), units: 0, desc: '' };

const align8 = (n: number): number => (n + 7) & ~7;

/** One extension record: fuse_ext_header (size, type), payload, padded to 8; `size` may lie. */
function record(type: number, payload: Buffer, size?: number): Buffer {
  const len = align8(8 + payload.length);
  const b = Buffer.alloc(len);
  b.writeUInt32LE(size ?? len, 0);
  b.writeUInt32LE(type >>> 0, 4);
  payload.copy(b, 8);
  return b;
}

/** fuse_secctx then the NUL-terminated name and the value; `valueSize` may lie. */
function secctx(name: string, value: Buffer, valueSize = value.length): Buffer {
  const n = Buffer.from(`${name}\0`, 'latin1');
  const b = Buffer.alloc(8 + n.length + value.length);
  b.writeUInt32LE(valueSize >>> 0, 0);
  n.copy(b, 8);
  value.copy(b, 8 + n.length);
  return b;
}

/** A security context block (the record type is nr_secctx). */
function secctxBlock(contexts: Buffer[], nr = contexts.length, size?: number): Buffer {
  return record(nr, Buffer.concat(contexts), size);
}

function groups(gids: readonly number[], nr = gids.length): Buffer {
  const b = Buffer.alloc(4 + 4 * gids.length);
  b.writeUInt32LE(nr >>> 0, 0);
  gids.forEach((g, i) => b.writeUInt32LE(g >>> 0, 4 + 4 * i));
  return b;
}

const LABEL_NAMES = ['security.selinux', 'security.selinux', 'security.smack', 'security.apparmor', 'security.capability', 'security.ima'];
const BAD_LABEL_NAMES = ['user.a', 'security.', 'trusted.t', 'selinux', '', 'security.' + 'x'.repeat(250), 'system.posix_acl_access'];
const GIDS = [0, 1000, 65534, 100, 5, 0xffffffff, 0xfffffffe];

export class ParityShapes {
  constructor(private readonly rng: Rng) {}

  private label(): { name: string; value: Buffer } {
    const rng = this.rng;
    const name = rng.pick(LABEL_NAMES);
    const value = rng.chance(0.8) ? Buffer.from(`system_u:object_r:${rng.pick(['etc_t', 'user_home_t', 'x'])}:s0\0`) : rng.bytes(1 + rng.int(rng.chance(0.9) ? 64 : 5000));
    return { name, value };
  }

  private groupRecord(): { rec: Buffer; desc: string } {
    const rng = this.rng;
    const n = rng.chance(0.9) ? 1 + rng.int(3) : rng.pick([0, 32, 300]);
    const gids = Array.from({ length: n }, () => rng.pick(GIDS));
    return { rec: record(FUSE_EXT_GROUPS, groups(gids)), desc: `groups[${gids.slice(0, 4).join(',')}${n > 4 ? `..(${n})` : ''}]` };
  }

  /** A well-formed security context block: one label, or (an LSM without one) none. */
  private secctxRecord(): { rec: Buffer; desc: string } {
    if (this.rng.chance(0.2)) return { rec: secctxBlock([]), desc: 'secctx[none]' };
    const l = this.label();
    return { rec: secctxBlock([secctx(l.name, l.value)]), desc: `secctx[${l.name}=${l.value.length}B]` };
  }

  /** What a 6.3+ kernel appends to a creating request, given what INIT agreed (flags2). */
  creating(flags2: number): ExtArea {
    const rng = this.rng;
    const label = (flags2 & InitFlag2.SECURITY_CTX) !== 0;
    const supp = (flags2 & InitFlag2.CREATE_SUPP_GROUP) !== 0;
    if (rng.chance(label ? 0.15 : 0.1)) return this.malformed();
    const recs: Buffer[] = [];
    const desc: string[] = [];
    if (label || rng.chance(0.05)) {
      const s = this.secctxRecord();
      recs.push(s.rec);
      desc.push(s.desc);
    }
    if (supp ? rng.chance(0.3) : rng.chance(0.05)) {
      const g = this.groupRecord();
      // The kernel puts the groups after the context; the parser takes any order.
      if (rng.chance(0.8)) recs.push(g.rec);
      else recs.unshift(g.rec);
      desc.push(g.desc);
    }
    if (recs.length === 0) return NONE;
    // Pre-6.3 kernels appended the label block after the names without counting it.
    if (label && recs.length === 1 && rng.chance(0.1)) return { bytes: recs[0] as Buffer, units: 0, desc: `pre-6.3 ${desc.join(' ')}` };
    const bytes = Buffer.concat(recs);
    return { bytes, units: bytes.length / 8, desc: `ext ${desc.join(' ')}` };
  }

  /** Now and then an extension area on any other request (the kernel sends none there). */
  other(): ExtArea {
    if (!this.rng.chance(0.03)) return NONE;
    if (this.rng.chance(0.5)) {
      const g = this.groupRecord();
      return { bytes: g.rec, units: g.rec.length / 8, desc: `ext ${g.desc}` };
    }
    return this.malformed();
  }

  /** An extension area broken in one of the ways the parsers check. */
  malformed(): ExtArea {
    const rng = this.rng;
    const l = this.label();
    const ok = secctxBlock([secctx(l.name, l.value)]);
    const g = record(FUSE_EXT_GROUPS, groups([1000]));
    const forms: [string, () => Buffer, number?][] = [
      ['record size 0', () => record(FUSE_EXT_GROUPS, groups([0]), 0)],
      ['record size 4', () => record(FUSE_EXT_GROUPS, groups([0]), 4)],
      ['record size 12', () => record(FUSE_EXT_GROUPS, groups([0]), 12)],
      ['record past the area', () => record(FUSE_EXT_GROUPS, groups([0]), 4096)],
      ['record size 2^32-8', () => record(1, Buffer.alloc(8), 0xfffffff8)],
      ['unknown type 33', () => record(33, Buffer.alloc(8))],
      ['unknown type 2^32-1', () => record(0xffffffff, Buffer.alloc(8))],
      ['two label blocks', () => Buffer.concat([ok, ok])],
      ['two group records', () => Buffer.concat([g, g])],
      ['nr_secctx 2', () => secctxBlock([secctx(l.name, l.value), secctx(l.name, l.value)])],
      [`nr_secctx ${FUSE_MAX_NR_SECCTX}, one context`, () => secctxBlock([secctx(l.name, l.value)], FUSE_MAX_NR_SECCTX)],
      ['nr_secctx 0 with a context', () => secctxBlock([secctx(l.name, l.value)], 0)],
      ['secctx value size 0', () => secctxBlock([secctx(l.name, l.value, 0)])],
      ['secctx value size larger', () => secctxBlock([secctx(l.name, l.value, l.value.length + 8)])],
      ['secctx value size 2^32-1', () => secctxBlock([secctx(l.name, l.value, 0xffffffff)])],
      ['secctx name without NUL', () => secctxBlock([Buffer.concat([Buffer.from([4, 0, 0, 0, 0, 0, 0, 0]), Buffer.alloc(300, 0x73)])])],
      [`secctx name ${JSON.stringify(rng.pick(BAD_LABEL_NAMES).slice(0, 20))}`, () => secctxBlock([secctx(rng.pick(BAD_LABEL_NAMES), l.value)])],
      ['secctx shorter than fuse_secctx', () => record(1, Buffer.alloc(0))],
      ['secctx block size says less', () => secctxBlock([secctx(l.name, l.value)], 1, 16)],
      ['groups nr larger', () => record(FUSE_EXT_GROUPS, groups([1, 2], 5))],
      ['groups nr smaller', () => record(FUSE_EXT_GROUPS, groups([1, 2, 3, 4, 5], 1))],
      ['groups nr 2^32-1', () => record(FUSE_EXT_GROUPS, groups([1], 0xffffffff))],
      ['65537 groups', () => record(FUSE_EXT_GROUPS, groups(new Array<number>(65537).fill(5)))],
      ['groups payload empty', () => record(FUSE_EXT_GROUPS, Buffer.alloc(0))],
      ['random bytes', () => rng.bytes(8 * (1 + rng.int(8)))],
    ];
    const [what, make, units] = rng.pick(forms);
    const bytes = make();
    // total_extlen: mostly what was appended; sometimes more than the request holds, or less.
    const r = rng.int(100);
    const n = units ?? (r < 80 ? bytes.length / 8 : r < 90 ? bytes.length / 8 + 1 + rng.int(4) : r < 95 ? 0xffff : Math.max(0, bytes.length / 8 - 1));
    return { bytes, units: Math.floor(n), desc: `bad ext: ${what} (total_extlen ${Math.floor(n)})` };
  }

  /** flags2 for an INIT with INIT_EXT. */
  initFlags2(): number {
    const rng = this.rng;
    const r = rng.int(100);
    if (r < 60) return InitFlag2.SECURITY_CTX | InitFlag2.CREATE_SUPP_GROUP;
    if (r < 75) return InitFlag2.CREATE_SUPP_GROUP;
    if (r < 85) return 0;
    return rng.u32();
  }

  /** A value for system.posix_acl_access/default: as setfacl writes it, or broken. */
  aclValue(): { value: Buffer; desc: string } {
    const rng = this.rng;
    // posix_acl_xattr_header (u32 version 2), entries (u16 tag, u16 perm, u32 id).
    const USER_OBJ = 1, USER = 2, GROUP_OBJ = 4, GROUP = 8, MASK = 0x10, OTHER = 0x20;
    const entries: [number, number, number][] = [[USER_OBJ, 6, 0xffffffff]];
    const named = rng.chance(0.6);
    if (named) entries.push([USER, rng.int(8), rng.pick([1000, 65534, 0, 12345])]);
    entries.push([GROUP_OBJ, rng.int(8), 0xffffffff]);
    if (named && rng.chance(0.5)) entries.push([GROUP, rng.int(8), rng.pick([1000, 100])]);
    if (named) entries.push([MASK, rng.int(8), 0xffffffff]);
    entries.push([OTHER, rng.int(8), 0xffffffff]);
    const r = rng.int(100);
    let desc = `acl ${entries.length} entries`;
    if (r < 55) {
      // valid
    } else if (r < 62) {
      entries.reverse();
      desc += ' unsorted';
    } else if (r < 68) {
      entries.push(entries[0] as [number, number, number]);
      desc += ' duplicate';
    } else if (r < 74) {
      entries.splice(entries.findIndex((e) => e[0] === MASK || e[0] === OTHER), 1);
      desc += ' missing an entry';
    } else if (r < 80) {
      (entries[0] as [number, number, number])[0] = rng.pick([0, 3, 0x40, 0xffff]);
      desc += ' bad tag';
    } else if (r < 85) {
      (entries[0] as [number, number, number])[1] = 0xffff;
      desc += ' bad perm';
    }
    const b = Buffer.alloc(4 + 8 * entries.length);
    b.writeUInt32LE(r >= 85 && r < 90 ? rng.pick([1, 3, 0, 0xffffffff]) : 2, 0);
    entries.forEach(([tag, perm, id], i) => {
      b.writeUInt16LE(tag, 4 + 8 * i);
      b.writeUInt16LE(perm, 6 + 8 * i);
      b.writeUInt32LE(id >>> 0, 8 + 8 * i);
    });
    if (r >= 85 && r < 90) return { value: b, desc: `${desc} bad version` };
    if (r >= 90 && r < 95) return { value: b.subarray(0, b.length - 1 - rng.int(7)), desc: `${desc} truncated` };
    if (r >= 95) return { value: rng.bytes(rng.int(40)), desc: 'acl random bytes' };
    return { value: b, desc };
  }
}

/** A 6.3+ security context block: one context named security.selinux, or none (`value` null). */
export function secctxRecord(value: Buffer | null): Buffer {
  const name = Buffer.from('security.selinux\0');
  const body = value === null ? 0 : 8 + name.length + value.length;
  const b = Buffer.alloc(8 + ((body + 7) & ~7));
  b.writeUInt32LE(b.length, 0);
  b.writeUInt32LE(value === null ? 0 : 1, 4);
  if (value !== null) {
    b.writeUInt32LE(value.length, 8);
    name.copy(b, 16);
    value.copy(b, 16 + name.length);
  }
  return b;
}

/** A request with `ext` appended as its extension area (6.3+: counted in total_extlen). */
export function withExt(op: number, args: Buffer[], ext: Buffer): Buffer {
  const req = request(op, [...args, ext]);
  req.writeUInt16LE(ext.length / 8, InHeader.off.totalExtlen);
  return req;
}

/** An xattr of a host file as the host sees it (getfattr), or undefined. */
export function getfattr(file: string, name: string): Buffer | undefined {
  try {
    const out = execFileSync('getfattr', ['--absolute-names', '-e', 'hex', '-n', name, file], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
    const hex = new RegExp(`^${name.replace(/\./g, '\\.')}=0x([0-9a-f]*)$`, 'm').exec(out)?.[1];
    return hex === undefined ? undefined : Buffer.from(hex, 'hex');
  } catch {
    return undefined;
  }
}
