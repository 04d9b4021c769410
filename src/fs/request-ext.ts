// FUSE request extensions (linux/fuse.h, 7.38+): records the kernel appends after a
// request's arguments when a negotiated feature asks for them: a security context
// (SECURITY_CTX, types 0..FUSE_MAX_NR_SECCTX) or the caller's supplementary group
// (CREATE_SUPP_GROUP, FUSE_EXT_GROUPS), on CREATE, MKDIR, MKNOD, SYMLINK (and TMPFILE).
// Request.load() copies the area into the request buffer and checks its structure once
// (extensionAreaProblem); findExtension() then finds one record by type without
// allocating. Parsing is strict: a record that is not 8-aligned, shorter than its header,
// runs past the request, has an unknown type or occurs twice makes the request EINVAL.
import { ExtHeader, FUSE_EXT_GROUPS, FUSE_REC_ALIGN } from './fuse-abi.js';
import type { Request } from './request.js';
import { u32 } from '../le-bytes.js';

/** findExtension(): the request carries no record of that type. */
export const EXT_ABSENT = 0;
/** Highest record type we know (types above it are refused as malformed). */
const MAX_EXT_TYPE = FUSE_EXT_GROUPS;

/**
 * Why the extension area [from, end) of `buf` is malformed, or null when every record is
 * well formed. Only the structure is checked here; the contents are the consumer's.
 */
export function extensionAreaProblem(buf: Buffer, from: number, end: number): string | null {
  if ((end - from) % FUSE_REC_ALIGN !== 0) return `extension area of ${end - from} bytes is not a multiple of ${FUSE_REC_ALIGN}`;
  let pos = from;
  let secctx = false;
  let groups = false;
  while (pos < end) {
    if (end - pos < ExtHeader.size) return `extension record at ${pos - from} is shorter than fuse_ext_header`;
    const size = u32(buf, pos + ExtHeader.off.size);
    const type = u32(buf, pos + ExtHeader.off.type);
    if (size < ExtHeader.size || size % FUSE_REC_ALIGN !== 0) return `extension record at ${pos - from} has size ${size}`;
    if (size > end - pos) return `extension record at ${pos - from} (size ${size}) runs past the request`;
    if (type > MAX_EXT_TYPE) return `extension record at ${pos - from} has unknown type ${type}`;
    // One record of each kind at most (a security context block, a group list), as virtiofsd.
    if (type === FUSE_EXT_GROUPS ? groups : secctx) return `extension record at ${pos - from}: a second record of type ${type}`;
    if (type === FUSE_EXT_GROUPS) groups = true;
    else secctx = true;
    pos += size;
  }
  return null;
}

/**
 * Absolute offset in `req.buf` of the payload (after fuse_ext_header) of the request's
 * extension record whose type is in [minType, maxType] (a security context: 0 to
 * FUSE_MAX_NR_SECCTX), or EXT_ABSENT. The record's type is at offset-4, its payload length
 * is extensionPayloadLength(). The area passed extensionAreaProblem() in load(), so a
 * record of each kind occurs at most once and none runs past the request.
 */
export function findExtension(req: Request, minType: number, maxType: number = minType): number {
  const buf = req.buf;
  const end = req.extEnd;
  for (let pos = req.extFrom; pos < end;) {
    const type = u32(buf, pos + ExtHeader.off.type);
    if (type >= minType && type <= maxType) return pos + ExtHeader.size;
    pos += u32(buf, pos + ExtHeader.off.size);
  }
  return EXT_ABSENT;
}

/** Payload bytes of the record whose payload starts at `payload` (a findExtension() result). */
export function extensionPayloadLength(req: Request, payload: number): number {
  return u32(req.buf, payload - ExtHeader.size + ExtHeader.off.size) - ExtHeader.size;
}
