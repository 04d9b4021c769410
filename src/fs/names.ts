// Validation of the names a request carries. Every path operation takes exactly one
// component relative to a parent inode fd: a name with '/', an empty name or a name
// without its NUL terminator is refused, and "." / ".." are refused everywhere except
// LOOKUP, which resolves them itself so that ".." never climbs above the shared root.
import type { Request } from './request.js';
import { E } from './state.js';

const SLASH = 0x2f;
const DOT = 0x2e;

/** Kinds of name a request can carry. */
export const NAME_PLAIN = 0;
export const NAME_DOT = 1;
export const NAME_DOTDOT = 2;

export interface NameRef {
  /** View of the name including its NUL, for the *at calls. */
  buf: Buffer;
  /** Absolute offset just past the NUL in the request buffer. */
  next: number;
  kind: number;
}

/**
 * Parse the NUL-terminated name at absolute offset `pos` of the request. Returns -EINVAL
 * for a missing NUL, an empty name or one containing '/'.
 */
export function parseName(req: Request, pos: number, out: NameRef): number {
  const nul = req.strEnd(pos);
  if (nul < 0 || nul === pos) return -E.EINVAL;
  const b = req.buf;
  const slash = b.indexOf(SLASH, pos);
  if (slash >= 0 && slash < nul) return -E.EINVAL;
  out.buf = b.subarray(pos, nul + 1);
  out.next = nul + 1;
  const n = nul - pos;
  out.kind = n === 1 && b[pos] === DOT ? NAME_DOT : n === 2 && b[pos] === DOT && b[pos + 1] === DOT ? NAME_DOTDOT : NAME_PLAIN;
  if (n > 255) return -E.ENAMETOOLONG;
  return 0;
}

/** parseName for operations that create, remove or rename an entry: "." and ".." too are refused. */
export function parseEntryName(req: Request, pos: number, out: NameRef): number {
  const r = parseName(req, pos, out);
  if (r < 0) return r;
  return out.kind === NAME_PLAIN ? 0 : -E.EINVAL;
}

export function newNameRef(): NameRef {
  return { buf: Buffer.alloc(0), next: 0, kind: NAME_PLAIN };
}
