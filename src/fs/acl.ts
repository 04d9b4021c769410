// POSIX ACLs as the xattr requests carry them (system.posix_acl_access and _default).
// With --posix-acl agreed they are set and removed with the caller's credentials, so the
// host kernel checks ownership as it would for that user, and setting an access ACL
// updates the mode there; setgid follows what the client decided (SETXATTR_ACL_KILL_SGID).
// Without --posix-acl they do not exist for the guest: EOPNOTSUPP, and left out of
// listings, as virtiofsd does (the client then neither enforces nor shows host ACLs).
import { STX, S_ISGID, fchmod, fchmodat } from '../sys/file-calls.js';
import type { Inode } from './inodes.js';
import type { FsState } from './state.js';
import { u16 } from '../le-bytes.js';

const ACCESS = Buffer.from('system.posix_acl_access\0');
const DEFAULT = Buffer.from('system.posix_acl_default\0');

export const ACL_NONE = 0;
export const ACL_ACCESS = 1;
export const ACL_DEFAULT = 2;

/** Which ACL a NUL-terminated attribute name is (ACL_NONE for every other name). */
export function aclKind(name: Buffer): number {
  if (name.length === ACCESS.length && name.equals(ACCESS)) return ACL_ACCESS;
  if (name.length === DEFAULT.length && name.equals(DEFAULT)) return ACL_DEFAULT;
  return ACL_NONE;
}

/**
 * Remove the ACL names from a listxattr result (NUL-terminated names, `n` bytes, in place).
 * Returns the new length.
 */
export function dropAclNames(list: Buffer, n: number): number {
  let out = 0;
  for (let start = 0; start < n;) {
    let end = start;
    while (end < n && list[end] !== 0) end++;
    const next = Math.min(end + 1, n);
    if (aclKind(list.subarray(start, next)) === ACL_NONE) {
      if (out !== start) list.copy(list, out, start, next);
      out += next - start;
    }
    start = next;
  }
  return out;
}

function chmodInode(s: FsState, ino: Inode, fd: number, mode: number): number {
  return fd >= 0 ? fchmod(fd, mode) : fchmodat(s.procSelfFd, ino.procName, mode, 0);
}

/**
 * Set or remove an ACL of `ino` (`call` does it) as the caller. `fd` is the inode reopened
 * for the f*xattr calls, or negative for the *xattrat path `call` then takes. For the
 * access ACL: with `killSgid` (the client found the caller neither in the file's group nor
 * holding CAP_FSETID) setgid is cleared first, as virtiofsd does; without it, a setgid the
 * host cleared (it judges group membership by the caller's gid alone, not knowing the
 * supplementary groups the client counted) is put back.
 */
export function setAclAsCaller(s: FsState, ino: Inode, fd: number, kind: number, killSgid: boolean, call: () => number): number {
  let before = 0;
  if (kind === ACL_ACCESS) {
    const r = s.statInode(ino);
    if (r < 0) return r;
    before = u16(s.stx, STX.mode) & 0o7777;
    if (killSgid && (before & S_ISGID) !== 0) {
      const c = chmodInode(s, ino, fd, before & ~S_ISGID);
      if (c < 0) return c;
      before &= ~S_ISGID;
    }
  }
  const r = s.asCaller(call);
  if (r < 0 || kind !== ACL_ACCESS || (before & S_ISGID) === 0) return r;
  const e = s.statInode(ino);
  if (e < 0) return e;
  const after = u16(s.stx, STX.mode) & 0o7777;
  if ((after & S_ISGID) !== 0) return r;
  const c = chmodInode(s, ino, fd, after | S_ISGID);
  return c < 0 ? c : r;
}
