// FUSE operations over a VirtioFsFrontend, shaped like the requests the Linux virtiofs
// driver sends: the in header and op struct in one readable descriptor, bulk data in its
// own, the out header in its own writable descriptor and the reply body after it.
import { VirtioFsFrontend, HIPRIO, type FuseReply } from './virtio-fs.js';
import * as F from './fuse-requests.js';
import { constants as osConstants } from 'node:os';

export class FuseError extends Error {
  constructor(
    readonly op: string,
    readonly errno: number,
  ) {
    super(`${op}: error ${errno}`);
    this.name = 'FuseError';
  }
}

/** Reply body of a request, throwing FuseError when the reply carries an error. */
export function expectOk(op: string, r: FuseReply | undefined): Buffer {
  if (r === undefined) throw new Error(`${op}: no reply`);
  if (r.header.len !== r.usedLen) throw new Error(`${op}: out header len ${r.header.len} but used.len ${r.usedLen}`);
  if (r.header.error !== 0) throw new FuseError(op, -r.header.error);
  return r.body;
}

export const O_RDONLY = 0;
export const O_WRONLY = 1;
export const O_RDWR = 2;
export const O_CREAT = 0o100;
export const O_EXCL = 0o200;
export const O_DIRECTORY = 0o200000;
export const S_IFREG = 0o100000;
export const S_IFDIR = 0o040000;
export const ENOENT = osConstants.errno.ENOENT;

export class FuseClient {
  init: F.InitOut | undefined;

  constructor(readonly fe: VirtioFsFrontend) {}

  /** Request parts: header+args in one buffer, optional bulk data in a second. */
  private req(op: number, node: bigint, args: Buffer[], data?: Buffer): Buffer[] {
    const dataLen = data?.length ?? 0;
    const head = F.request(op, node, args, { len: F.IN_HEADER + args.reduce((n, a) => n + a.length, 0) + dataLen });
    return data === undefined ? [head] : [head, data];
  }

  private call(name: string, op: number, node: bigint, args: Buffer[], replyBody: number, data?: Buffer): Buffer {
    const lens = replyBody > 0 ? [F.OUT_HEADER, replyBody] : [F.OUT_HEADER];
    return expectOk(name, this.fe.call(this.req(op, node, args, data), lens));
  }

  doInit(flags?: number, flags2 = 0): F.InitOut {
    const b = this.call('INIT', F.Op.INIT, 0n, [F.initIn(flags, flags2)], F.INIT_OUT);
    this.init = F.parseInitOut(b);
    return this.init;
  }

  lookup(parent: bigint, name: string): F.Entry {
    return F.parseEntry(this.call('LOOKUP', F.Op.LOOKUP, parent, [F.cstr(name)], F.ENTRY_OUT));
  }

  getattr(node: bigint): F.Attr {
    return F.parseAttr(this.call('GETATTR', F.Op.GETATTR, node, [F.getattrIn()], F.ATTR_OUT), 16);
  }

  open(node: bigint, flags = O_RDONLY): bigint {
    return this.call('OPEN', F.Op.OPEN, node, [F.openIn(flags)], F.OPEN_OUT).readBigUInt64LE(0);
  }

  opendir(node: bigint): bigint {
    return this.call('OPENDIR', F.Op.OPENDIR, node, [F.openIn(O_RDONLY | O_DIRECTORY)], F.OPEN_OUT).readBigUInt64LE(0);
  }

  create(parent: bigint, name: string, mode = 0o644, flags = O_RDWR | O_CREAT | O_EXCL): { entry: F.Entry; fh: bigint } {
    const b = this.call('CREATE', F.Op.CREATE, parent, [F.createIn(name, flags, S_IFREG | mode)], F.ENTRY_OUT + F.OPEN_OUT);
    return { entry: F.parseEntry(b), fh: b.readBigUInt64LE(F.ENTRY_OUT) };
  }

  mkdir(parent: bigint, name: string, mode = 0o755): F.Entry {
    return F.parseEntry(this.call('MKDIR', F.Op.MKDIR, parent, [F.mkdirIn(name, S_IFDIR | mode)], F.ENTRY_OUT));
  }

  read(node: bigint, fh: bigint, offset: number, size: number): Buffer {
    return this.call('READ', F.Op.READ, node, [F.rwIn(fh, offset, size)], size);
  }

  write(node: bigint, fh: bigint, offset: number, data: Buffer): number {
    return this.call('WRITE', F.Op.WRITE, node, [F.rwIn(fh, offset, data.length)], F.WRITE_OUT, data).readUInt32LE(0);
  }

  release(node: bigint, fh: bigint): void {
    this.call('RELEASE', F.Op.RELEASE, node, [F.releaseIn(fh)], 0);
  }

  releasedir(node: bigint, fh: bigint): void {
    this.call('RELEASEDIR', F.Op.RELEASEDIR, node, [F.releaseIn(fh)], 0);
  }

  unlink(parent: bigint, name: string): void {
    this.call('UNLINK', F.Op.UNLINK, parent, [F.cstr(name)], 0);
  }

  rmdir(parent: bigint, name: string): void {
    this.call('RMDIR', F.Op.RMDIR, parent, [F.cstr(name)], 0);
  }

  /** One READDIRPLUS call from `offset` with a reply buffer of `size` bytes. */
  readdirplusOnce(node: bigint, fh: bigint, offset: bigint, size = 64 * 1024): F.DirentPlus[] {
    return F.parseDirentPlus(this.call('READDIRPLUS', F.Op.READDIRPLUS, node, [F.rwIn(fh, offset, size)], size));
  }

  /** The whole directory through READDIRPLUS (opendir ... releasedir), with the call count. */
  readdirplusAll(node: bigint, size = 64 * 1024): { entries: F.DirentPlus[]; calls: number } {
    const fh = this.opendir(node);
    const entries: F.DirentPlus[] = [];
    let off = 0n;
    let calls = 0;
    for (;;) {
      const got = this.readdirplusOnce(node, fh, off, size);
      calls++;
      if (got.length === 0) break;
      entries.push(...got);
      off = got[got.length - 1].off;
    }
    this.releasedir(node, fh);
    return { entries, calls };
  }

  /** FORGET on the hiprio queue (no reply: the device just returns the chain). */
  forget(node: bigint, nlookup: bigint | number): void {
    const r = this.fe.call([F.request(F.Op.FORGET, node, [F.forgetIn(nlookup)])], [], HIPRIO);
    if (r !== undefined) throw new Error('FORGET got a reply');
  }

  batchForget(items: { nodeid: bigint; nlookup: bigint | number }[]): void {
    this.fe.call([F.request(F.Op.BATCH_FORGET, 0n, [F.batchForgetIn(items)])], [], HIPRIO);
  }
}
