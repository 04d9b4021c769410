// Test helpers for the FUSE core: a session over a fresh temp dir, and requests built
// with the codec's own struct encoders, sent through handle() and decoded back.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createFuseServer } from '../src/fs/fuse-server.js';
import { DEFAULT_FS_OPTIONS, type FsOptions } from '../src/fs/options.js';
import type { FuseSession } from '../src/fs/session.js';
import { InHeader, InitIn, InitOut, Op, OutHeader, type Struct, type StructValue, type FieldType } from '../src/fs/fuse-abi.js';
import { AT_FDCWD, O_CLOEXEC, O_DIRECTORY, O_PATH, close, openat } from '../src/sys/file-calls.js';

export interface TestFs {
  dir: string;
  session: FuseSession;
  rootFd: number;
  procSelfFd: number;
  cleanup(): void;
}

export function makeFs(opts: Partial<FsOptions> = {}, maxWrite = 1 << 20): TestFs {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vfs-fs-test-'));
  const rootFd = openat(AT_FDCWD, dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
  const procSelfFd = openat(AT_FDCWD, '/proc/self/fd', O_PATH | O_DIRECTORY | O_CLOEXEC);
  if (rootFd < 0 || procSelfFd < 0) throw new Error('cannot open the test dirs');
  const session = createFuseServer({
    rootFd, procSelfFd, options: { ...DEFAULT_FS_OPTIONS, ...opts }, transport: 'devfuse', maxWrite,
  });
  return {
    dir, session, rootFd, procSelfFd,
    cleanup() {
      close(rootFd);
      close(procSelfFd);
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

let uniqueCounter = 1n;

export interface ReqOpts {
  nodeid?: number | bigint;
  uid?: number;
  gid?: number;
  unique?: bigint;
}

/** A NUL-terminated string. */
export function cstr(s: string | Buffer): Buffer {
  return Buffer.concat([typeof s === 'string' ? Buffer.from(s) : s, Buffer.from([0])]);
}

/** Encode an argument struct with the codec's own encoder. */
export function struct<F extends Record<string, FieldType>>(S: Struct<F>, v: Partial<StructValue<F>>): Buffer {
  const b = Buffer.alloc(S.size);
  S.encode(b, 0, v);
  return b;
}

/** A full request: fuse_in_header then the argument parts. */
export function request(opcode: number, parts: Buffer[], o: ReqOpts = {}): Buffer {
  const body = Buffer.concat(parts);
  const b = Buffer.alloc(InHeader.size + body.length);
  InHeader.encode(b, 0, {
    len: b.length, opcode, unique: o.unique ?? uniqueCounter++, nodeid: BigInt(o.nodeid ?? 1),
    uid: o.uid ?? 0, gid: o.gid ?? 0, pid: 1,
  });
  body.copy(b, InHeader.size);
  return b;
}

export interface Answer {
  len: number;
  error: number;
  unique: bigint;
  body: Buffer;
}

/** Send one request (optionally split into segments) and decode the reply. */
export function send(session: FuseSession, req: Buffer | Buffer[], replySize = 1 << 20, replySegs?: number[]): Answer | null {
  const readable = Array.isArray(req) ? req : [req];
  const writable = replySegs ? replySegs.map((n) => Buffer.alloc(n)) : [Buffer.alloc(replySize)];
  const n = session.handle(readable, writable);
  if (n === 0) return null;
  const flat = Buffer.concat(writable).subarray(0, n);
  const h = OutHeader.decode(flat, 0);
  return { len: h.len, error: h.error, unique: h.unique, body: flat.subarray(OutHeader.size) };
}

export function init(session: FuseSession, flags = 0xffffffff, minor = 38): Answer {
  const a = send(session, request(Op.INIT, [struct(InitIn, { major: 7, minor, maxReadahead: 131072, flags })]));
  if (a === null || a.error !== 0) throw new Error(`INIT failed: ${a?.error}`);
  return a;
}

export function initOut(a: Answer): StructValue<typeof InitOut.fields> {
  return InitOut.decode(a.body, 0);
}

/** Split a buffer into segments at the given cut points. */
export function split(b: Buffer, ...cuts: number[]): Buffer[] {
  const out: Buffer[] = [];
  let prev = 0;
  for (const c of cuts) {
    out.push(Buffer.from(b.subarray(prev, c)));
    prev = c;
  }
  out.push(Buffer.from(b.subarray(prev)));
  return out;
}
