// Security labels (--security-label, FUSE_SECURITY_CTX): once agreed at INIT, every
// CREATE, MKDIR, MKNOD, SYMLINK and TMPFILE carries the guest LSM's label for the new
// inode (e.g. security.selinux) as a request extension, and the label is stored as that
// xattr on the new file before the reply, as virtiofsd does: created as the caller, then
// labelled with the daemon's own credentials; when labelling fails the new entry is
// removed again and the request fails. The label's name goes through --xattrmap like any
// other guest name (and is mapped before anything is created, so a refused name creates
// nothing).
//
// The records come from the guest and are parsed strictly: Request.load() checks the
// structure of the extension area (request-ext.ts); here the context block itself (one
// context, sizes that add up, a NUL-terminated security.* name) or, for pre-6.3 kernels,
// the block appended after the names. Anything else fails the request with EINVAL and one
// warn line; nothing outside the request is ever read.
import { ExtHeader, FUSE_MAX_NR_SECCTX, FUSE_REC_ALIGN, InitFlag2, Secctx, SecctxHeader, opName } from './fuse-abi.js';
import { EXT_ABSENT, extensionAreaProblem, findExtension } from './request-ext.js';
import { fdName } from './inodes.js';
import { mapName, mappedName, setXattrOf } from './ops-attr.js';
import { E, type FsState } from './state.js';
import { XATTR_NAME_MAX } from './xattr-map.js';
import { u32 } from '../le-bytes.js';
import { AT_REMOVEDIR, O_CLOEXEC, O_NOFOLLOW, O_PATH, S_IFDIR, close, fsetxattr, openat, unlinkat } from '../sys/file-calls.js';

/** Largest xattr value Linux stores (XATTR_SIZE_MAX). */
const XATTR_SIZE_MAX = 65536;
const SECURITY_PREFIX = Buffer.from('security.');

/** The label of the request being served, once parseCreateExtensions() found one. */
export interface Label {
  /** True when the request carries a label to store. */
  present: boolean;
  /** The host xattr name (after --xattrmap), NUL-terminated; a copy (the map's buffer is reused). */
  name: Buffer;
  /** The value: a view of the request buffer (valid while the request is served). */
  value: Buffer;
}

const labelName = Buffer.alloc(XATTR_NAME_MAX + 1);
export const label: Label = { present: false, name: labelName, value: Buffer.alloc(0) };
const nameCopy = Buffer.alloc(XATTR_NAME_MAX + 1);

function align(n: number): number {
  return Math.ceil(n / FUSE_REC_ALIGN) * FUSE_REC_ALIGN;
}

function bad(s: FsState, why: string): number {
  s.log.warn(`malformed ${opName.get(s.req.opcode) ?? s.req.opcode} request extension: ${why}`);
  return -E.EINVAL;
}

/**
 * Find and parse the security context of a creating request whose names end at absolute
 * offset `afterNames`, into `label`. Without SECURITY_CTX agreed there is nothing to do
 * (the hot path: one bit test). Returns 0 or -errno (EINVAL for a malformed or missing
 * context; EPERM or EOPNOTSUPP when --xattrmap refuses the label's name).
 */
export function parseCreateExtensions(s: FsState, afterNames: number): number {
  label.present = false;
  if ((s.initFlags2 & InitFlag2.SECURITY_CTX) === 0) return 0;
  const req = s.req;
  let at: number;
  if (req.extFrom < req.extEnd) {
    // 6.3+ kernels: the records counted in total_extlen, checked in Request.load().
    if (afterNames !== req.end) return bad(s, `${req.end - afterNames} bytes between the names and the extensions`);
    at = findExtension(req, 0, FUSE_MAX_NR_SECCTX);
    if (at === EXT_ABSENT) return bad(s, 'no security context record although FUSE_SECURITY_CTX was agreed');
  } else {
    // Older kernels append the block after the names without counting it: check it the same way.
    if (afterNames === req.end) return bad(s, 'no security context record although FUSE_SECURITY_CTX was agreed');
    const problem = extensionAreaProblem(req.buf, afterNames, req.end);
    if (problem !== null) return bad(s, problem);
    if (u32(req.buf, afterNames + ExtHeader.off.type) > FUSE_MAX_NR_SECCTX) return bad(s, 'the record after the names is not a security context');
    if (u32(req.buf, afterNames + ExtHeader.off.size) !== req.end - afterNames) return bad(s, 'more than one record after the names');
    at = afterNames + SecctxHeader.size;
  }
  const size = u32(req.buf, at - SecctxHeader.size + SecctxHeader.off.size);
  const nr = u32(req.buf, at - SecctxHeader.size + SecctxHeader.off.nrSecctx);
  return parseSecctx(s, at, at - SecctxHeader.size + size, nr);
}

/** The records of one fuse_secctx_header: [from, to) after the header, `nr` contexts. */
function parseSecctx(s: FsState, from: number, to: number, nr: number): number {
  if (nr === 0) return to === from ? 0 : bad(s, `security context header of ${to - from + SecctxHeader.size} bytes holds no context`);
  if (nr > 1) return bad(s, `${nr} security contexts (the kernel sends at most one)`);
  const b = s.req.buf;
  if (to - from < Secctx.size) return bad(s, 'security context record shorter than fuse_secctx');
  const valueLen = u32(b, from + Secctx.off.size);
  if (valueLen === 0 || valueLen > XATTR_SIZE_MAX) return bad(s, `security context value of ${valueLen} bytes`);
  const nameAt = from + Secctx.size;
  let nul = -1;
  for (let i = nameAt; i < to && i <= nameAt + XATTR_NAME_MAX; i++) {
    if (b[i] === 0) {
      nul = i;
      break;
    }
  }
  if (nul < 0) return bad(s, 'security context name is not NUL-terminated within 256 bytes of the record');
  const nameLen = nul - nameAt;
  if (nameLen <= SECURITY_PREFIX.length || b.compare(SECURITY_PREFIX, 0, SECURITY_PREFIX.length, nameAt, nameAt + SECURITY_PREFIX.length) !== 0) {
    return bad(s, `security context name '${b.toString('latin1', nameAt, nul)}' is not a security.* attribute`);
  }
  const valueAt = nul + 1;
  const expected = SecctxHeader.size + align(Secctx.size + nameLen + 1 + valueLen);
  if (to - from + SecctxHeader.size !== expected) {
    return bad(s, `security context header says ${to - from + SecctxHeader.size} bytes, its name and ${valueLen}-byte value need ${expected}`);
  }
  // The name as written by the guest, then through the map; both copied out of scratch space.
  b.copy(nameCopy, 0, nameAt, valueAt);
  const r = mapName(s, nameCopy, nameLen);
  if (r < 0) return r;
  const host = mappedName();
  host.copy(labelName, 0, 0, host.length);
  label.name = labelName.subarray(0, host.length);
  label.value = b.subarray(valueAt, valueAt + valueLen);
  label.present = true;
  return 0;
}

let warnedStore = false;

/** A failure to store the label: said once at warn level (it is usually the set-up), then at debug. */
function storeFailed(s: FsState, r: number): number {
  const msg = `could not store the security label ${label.name.toString('latin1', 0, label.name.length - 1)} on a new ${opName.get(s.req.opcode) ?? ''} entry (errno ${-r}); ` +
    'the request fails and the entry is removed (security.* and trusted.* names may need CAP_SYS_ADMIN: --modcaps=+sys_admin, or map them to user.* with --xattrmap)';
  if (warnedStore) s.log.debug(msg);
  else s.log.warn(msg);
  warnedStore = true;
  return r;
}

/** Store the label through an fd open on the new file (CREATE, TMPFILE). 0 or -errno; the caller undoes the creation. */
export function labelFd(s: FsState, fd: number): number {
  if (!label.present) return 0;
  const r = fsetxattr(fd, label.name, label.value, label.value.length, 0);
  return r < 0 ? storeFailed(s, r) : 0;
}

/**
 * Store the label on the entry `name` just made in `parentFd` (MKDIR, MKNOD, SYMLINK: not
 * opened for I/O, a fifo or device node must not be), of file type `type`; when that
 * fails the entry is removed. 0 or -errno.
 */
export function labelNewEntry(s: FsState, parentFd: number, name: Buffer, type: number): number {
  if (!label.present) return 0;
  const pfd = openat(parentFd, name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
  let r = pfd;
  if (pfd >= 0) {
    r = setXattrOf(s, type, fdName(pfd), label.name, label.value, label.value.length, 0);
    close(pfd);
  }
  if (r >= 0) return 0;
  unlinkat(parentFd, name, type === S_IFDIR ? AT_REMOVEDIR : 0);
  return storeFailed(s, r);
}
