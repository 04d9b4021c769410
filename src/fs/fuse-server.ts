// The FUSE server core: createFuseServer() builds a FuseSession over the passthrough
// file system. handle() decodes one request, dispatches it by opcode, and encodes the
// reply in place; it never throws (a malformed request or an unexpected failure is an
// errno reply and one warn line). Transports (/dev/fuse, vhost-user) only move bytes.
import type { SharedHandles } from './shared-handles.js';
import { constants as osConstants } from 'node:os';
import { clearGroupsThread, setUmask } from '../sys/cred-calls.js';
import type { FsOptions } from './options.js';
import { Segments, type FuseSession, type SessionMigration, type TransportKind } from './session.js';
import { applyState, collectState } from './migration.js';
import { decodeState, encodeState, StateFormatError, type MigrationState } from './migration-state.js';
import {
  ENTRY_OUT_SIZE, FUSE_KERNEL_MINOR_VERSION, FUSE_KERNEL_VERSION, FUSE_MIN_MINOR_VERSION, InitFlag, InitFlag2, InitIn, InitOut, Op, OpenOut, opName,
} from './fuse-abi.js';
import { NO_REPLY } from './request.js';
import { FsState } from './state.js';
import { logEnabled } from '../log.js';
import * as entry from './ops-entry.js';
import * as file from './ops-file.js';
import * as dir from './ops-dir.js';
import * as attr from './ops-attr.js';
import { setU16, setU32 } from '../le-bytes.js';

export interface FuseServerConfig {
  rootFd: number;
  procSelfFd: number;
  options: FsOptions;
  transport: TransportKind;
  /** Bytes the transport can carry in one WRITE. */
  maxWrite: number;
  /** Open handles published to queue threads (--queue-threads), if any. */
  sharedHandles?: SharedHandles;
}

const E = osConstants.errno;
type Handler = (s: FsState) => number;

const enosys: Handler = () => -E.ENOSYS;

// Opcode table. Answered with ENOSYS, and why:
//   GETLK, SETLK, SETLKW  POSIX locks are not served, as in virtiofsd; FUSE_POSIX_LOCKS is
//                         not offered, so a Linux client keeps such locks local and
//                         normally never sends these.
//   FLOCK (no opcode)     FUSE_FLOCK_LOCKS is not offered either: the client emulates flock()
//                         locally, as it does under virtiofsd.
//   BMAP                  only for block-device-backed FUSE (fuseblk).
//   IOCTL, POLL           not served by virtiofsd either; ioctl passthrough is a sandbox hole.
//   SETUPMAPPING,         DAX windows need the VMM's cache BAR, which this backend does not
//   REMOVEMAPPING         offer.
//   SETXATTR, GETXATTR,   only without --xattr (the client then stops asking, as virtiofsd's
//   LISTXATTR, REMOVEXATTR  users expect); with --xattr they are served.
//   anything else         unknown opcodes.
// Sent without a reply: FORGET, BATCH_FORGET, INTERRUPT (requests finish synchronously, so
// there is never one to interrupt), NOTIFY_REPLY (we send no notifications).
const noReply: Handler = () => NO_REPLY;

const handlers: Handler[] = [];
const table: [number, Handler][] = [
  [Op.LOOKUP, entry.lookup], [Op.FORGET, entry.forget], [Op.BATCH_FORGET, entry.batchForget],
  [Op.GETATTR, entry.getattr], [Op.SETATTR, attr.setattr], [Op.READLINK, entry.readlink],
  [Op.SYMLINK, entry.symlink], [Op.MKNOD, entry.mknod], [Op.MKDIR, entry.mkdir], [Op.UNLINK, entry.unlink],
  [Op.RMDIR, entry.rmdir], [Op.RENAME, entry.rename], [Op.RENAME2, entry.rename2], [Op.LINK, entry.link],
  [Op.OPEN, file.open], [Op.CREATE, file.create], [Op.TMPFILE, file.tmpfile], [Op.READ, file.read],
  [Op.WRITE, file.write], [Op.FLUSH, file.flush], [Op.RELEASE, file.release], [Op.FSYNC, file.fsync],
  [Op.FALLOCATE, file.fallocate], [Op.LSEEK, file.lseek], [Op.COPY_FILE_RANGE, file.copyFileRangeOp],
  [Op.OPENDIR, dir.opendir], [Op.READDIR, dir.readdir], [Op.READDIRPLUS, dir.readdirplus],
  [Op.RELEASEDIR, dir.releasedir], [Op.FSYNCDIR, dir.fsyncdir], [Op.STATFS, attr.statfs],
  [Op.ACCESS, attr.access], [Op.SYNCFS, attr.syncfsOp], [Op.SETXATTR, attr.setxattr],
  [Op.GETXATTR, attr.getxattr], [Op.LISTXATTR, attr.listxattr], [Op.REMOVEXATTR, attr.removexattr],
  [Op.INTERRUPT, noReply], [Op.NOTIFY_REPLY, noReply],
  [Op.GETLK, enosys], [Op.SETLK, enosys], [Op.SETLKW, enosys], [Op.BMAP, enosys], [Op.IOCTL, enosys],
  [Op.POLL, enosys], [Op.SETUPMAPPING, enosys], [Op.REMOVEMAPPING, enosys],
];
for (const [op, h] of table) handlers[op] = h;

const XATTR_OPS = new Set<number>([Op.SETXATTR, Op.GETXATTR, Op.LISTXATTR, Op.REMOVEXATTR]);
/** Opcodes that change the file system: EROFS under --readonly (OPEN checks its flags itself). */
const MODIFYING = new Set<number>([
  Op.SETATTR, Op.SYMLINK, Op.MKNOD, Op.MKDIR, Op.UNLINK, Op.RMDIR, Op.RENAME, Op.RENAME2, Op.LINK, Op.CREATE,
  Op.TMPFILE, Op.WRITE, Op.FALLOCATE, Op.COPY_FILE_RANGE, Op.SETXATTR, Op.REMOVEXATTR,
]);
const NO_REPLY_OPS = new Set<number>([Op.FORGET, Op.BATCH_FORGET, Op.INTERRUPT, Op.NOTIFY_REPLY]);
/**
 * Reply bodies of the opcodes that take a lookup or open a handle. Their room is checked
 * before anything happens: a reply that cannot be delivered must not leave the guest
 * holding a node id or handle it never learns of (nor create a file it is told failed).
 */
const REPLY_BODY = new Map<number, number>([
  [Op.LOOKUP, ENTRY_OUT_SIZE], [Op.MKNOD, ENTRY_OUT_SIZE], [Op.MKDIR, ENTRY_OUT_SIZE], [Op.SYMLINK, ENTRY_OUT_SIZE],
  [Op.LINK, ENTRY_OUT_SIZE], [Op.CREATE, ENTRY_OUT_SIZE + OpenOut.size], [Op.TMPFILE, ENTRY_OUT_SIZE + OpenOut.size],
  [Op.OPEN, OpenOut.size], [Op.OPENDIR, OpenOut.size],
]);

// The three sets above as one array lookup per request (a Set/Map lookup per request each
// showed in the profile of a GETATTR stream).
const F_XATTR = 1;
const F_MODIFYING = 2;
const F_BODY = 4;
const opFlags: number[] = [];
const replyBody: number[] = [];
for (const op of [...XATTR_OPS, ...MODIFYING, ...REPLY_BODY.keys()]) {
  opFlags[op] = (XATTR_OPS.has(op) ? F_XATTR : 0) | (MODIFYING.has(op) ? F_MODIFYING : 0) | (REPLY_BODY.has(op) ? F_BODY : 0);
  replyBody[op] = REPLY_BODY.get(op) ?? 0;
}
for (let op = 0; op < handlers.length; op++) {
  opFlags[op] ??= 0;
  replyBody[op] ??= 0;
}

/** Flags we implement and offer when the client does (see the comments in initReply). */
function offeredFlags(opts: FsOptions): number {
  // ASYNC_DIO as virtiofsd (always in its supported set): the client may split one direct
  // I/O into concurrent requests; each is served on its own, in any order.
  let f = InitFlag.ASYNC_READ | InitFlag.BIG_WRITES | InitFlag.ATOMIC_O_TRUNC | InitFlag.EXPORT_SUPPORT |
    InitFlag.PARALLEL_DIROPS | InitFlag.MAX_PAGES | InitFlag.AUTO_INVAL_DATA | InitFlag.ASYNC_DIO;
  if (opts.writeback) f |= InitFlag.WRITEBACK_CACHE;
  if (opts.readdirplus) f |= InitFlag.DO_READDIRPLUS | InitFlag.READDIRPLUS_AUTO;
  if (opts.announceSubmounts) f |= InitFlag.SUBMOUNTS;
  if (opts.posixAcl) f |= ACL_FLAGS;
  if (opts.killprivV2) f |= InitFlag.HANDLE_KILLPRIV_V2;
  return f;
}

/**
 * --posix-acl needs all three from the client, as virtiofsd does: the client enforces the
 * ACLs (POSIX_ACL), leaves the umask to us (DONT_MASK, so a default ACL can take its place),
 * and says when setting an access ACL must clear setgid (SETXATTR_EXT's setxattr_flags).
 */
const ACL_FLAGS = InitFlag.POSIX_ACL | InitFlag.DONT_MASK | InitFlag.SETXATTR_EXT;

/** What the agreed INIT flags switch on in the core (at INIT, or restored by a migration). */
function agree(s: FsState, flags: number): void {
  s.writeback = (flags & InitFlag.WRITEBACK_CACHE) !== 0;
  s.submounts = (flags & InitFlag.SUBMOUNTS) !== 0;
  s.posixAcl = (flags & ACL_FLAGS) === ACL_FLAGS;
  s.killprivV2 = (flags & InitFlag.HANDLE_KILLPRIV_V2) !== 0;
}

/**
 * flags2 bits we offer (with INIT_EXT) when the client does. CREATE_SUPP_GROUP always, as
 * virtiofsd: the client then sends the parent's group with a create when the caller is in
 * it only as a supplementary group, and asCaller (state.ts) adds it for that call.
 * DIRECT_IO_ALLOW_MMAP with --allow-mmap: shared mmap of files opened for direct I/O
 * (every file under --cache never, regular files under metadata).
 */
function offeredFlags2(opts: FsOptions): number {
  let f = InitFlag2.CREATE_SUPP_GROUP;
  if (opts.allowMmap) f |= InitFlag2.DIRECT_IO_ALLOW_MMAP;
  // The client then sends the new inode's LSM label with every creating request (security-label.ts).
  if (opts.securityLabel) f |= InitFlag2.SECURITY_CTX;
  return f;
}

class FuseServer implements FuseSession {
  private readonly s: FsState;
  private initialized = false;
  /** The INIT flags agreed with the client (migrated with the tables). */
  private agreedFlags = 0;
  destroyed = false;

  /** Live migration of the tables (migration.ts) and of what INIT agreed. */
  readonly migration: SessionMigration = {
    save: () => {
      const s = this.s;
      const started = Date.now();
      const { state, failed } = collectState(s, s.opts.migration, this.initialized ? { flags: this.agreedFlags, flags2: s.initFlags2 } : null);
      const data = encodeState(state);
      s.log.info(`migration: state of ${state.inodes.length} inodes and ${state.handles.length} handles (${data.length} bytes, mode ${s.opts.migration.mode}` +
        `${failed > 0 ? `, ${failed} inodes not locatable` : ''}) collected in ${Date.now() - started} ms`);
      return data;
    },
    load: (data) => {
      const s = this.s;
      let state: MigrationState;
      try {
        state = decodeState(data);
      } catch (err) {
        if (err instanceof StateFormatError) return err.message;
        throw err;
      }
      // The guest's node ids replace whatever this side had (nothing, normally).
      this.release();
      const r = applyState(s, state, s.opts.migration.onError);
      if (typeof r === 'string') return r;
      if (state.session !== null) {
        const f = state.session.flags;
        const extra = (f & ~offeredFlags(s.opts) & ~InitFlag.INIT_EXT) >>> 0;
        if (extra !== 0) s.log.warn(`migration: the source agreed INIT flags 0x${extra.toString(16)} this daemon does not offer with its options`);
        // flags2 bits this daemon does not offer are dropped: what they switch on here is the
        // daemon writing (SECURITY_CTX: labels stored as xattrs), which only its own options may
        // allow, and ignoring them keeps the protocol (the records are still parsed and skipped).
        const f2 = state.session.flags2 >>> 0;
        const extra2 = (f2 & ~offeredFlags2(s.opts)) >>> 0;
        if (extra2 !== 0) s.log.warn(`migration: the source agreed INIT flags2 0x${extra2.toString(16)} this daemon does not offer with its options; ignored`);
        this.agreedFlags = f;
        s.initFlags2 = (f2 & offeredFlags2(s.opts)) >>> 0;
        agree(s, f);
        this.initialized = true;
        this.destroyed = false;
      }
      s.log.info(`migration: restored ${state.inodes.length - r.lost} of ${state.inodes.length} inodes and the handles` +
        `${r.lost > 0 ? ` (${r.lost} inodes or handles lost: the guest gets errors for them)` : ''}`);
      return undefined;
    },
  };

  constructor(private readonly cfg: FuseServerConfig) {
    // Room for the largest request: a maximal WRITE or a 64 KiB xattr value, plus headers.
    const maxRequest = Math.max(cfg.maxWrite, 65536) + 8192;
    this.s = new FsState(cfg.rootFd, cfg.procSelfFd, cfg.options, maxRequest);
    this.s.handles.shared = cfg.sharedHandles;
  }

  private readonly wrapIn = new Segments();
  private readonly wrapOut = new Segments();

  handle(readable: readonly Buffer[], writable: readonly Buffer[]): number {
    return this.handleSegments(this.wrapIn.setBuffers(readable), this.wrapOut.setBuffers(writable));
  }

  handleSegments(readable: Segments, writable: Segments): number {
    const s = this.s;
    const req = s.req;
    let result: number;
    try {
      s.reply.begin(writable);
      // A new request: inodes the last one used may now give up their fds, and room is
      // made for the (at most two) fds this one may open before it names any inode.
      s.inodes.epoch++;
      s.inodes.makeRoom(2);
      const problem = req.load(readable);
      if (problem !== null) {
        s.log.warn(`malformed ${opName.get(req.opcode) ?? `opcode ${req.opcode}`} request: ${problem}`);
        if (NO_REPLY_OPS.has(req.opcode)) return 0;
        result = -E.EINVAL;
      } else {
        result = this.dispatch();
      }
    } catch (err) {
      s.log.warn(`${opName.get(req.opcode) ?? `opcode ${req.opcode}`} failed: ${err instanceof Error ? err.message : String(err)}`);
      result = -E.EIO;
    }
    if (logEnabled('trace')) {
      s.log.trace(`${opName.get(req.opcode) ?? req.opcode} unique ${req.uniqueLo + req.uniqueHi * 0x100000000} ` +
        `node ${req.nodeid} uid ${req.uid} -> ${result === NO_REPLY ? 'no reply' : result < 0 ? `errno ${-result}` : `${result} bytes`}`);
    }
    if (result === NO_REPLY) return 0;
    try {
      return s.reply.finish(req, result);
    } catch (err) {
      s.log.warn(`could not encode a reply: ${err instanceof Error ? err.message : String(err)}`);
      return 0;
    }
  }

  private dispatch(): number {
    const s = this.s;
    const op = s.req.opcode;
    if (op === Op.INIT) return this.init();
    if (!this.initialized) return NO_REPLY_OPS.has(op) ? NO_REPLY : -E.EIO;
    if (op === Op.DESTROY) return this.destroy();
    const h = handlers[op];
    if (h === undefined) return -E.ENOSYS;
    const f = opFlags[op] as number;
    if (f !== 0) {
      if ((f & F_XATTR) !== 0 && !s.opts.xattr) return -E.ENOSYS;
      if ((f & F_MODIFYING) !== 0 && s.opts.readonly) return -E.EROFS;
      const body = replyBody[op] as number;
      if (body > 0 && !s.reply.reserve(body)) return -E.EIO;
    }
    return h(s);
  }

  private init(): number {
    const s = this.s;
    const req = s.req;
    const major = req.u32(InitIn.off.major);
    const minor = req.u32(InitIn.off.minor);
    const O = InitOut.off;
    if (!s.reply.reserve(InitOut.size)) return -E.EIO;
    if (major > FUSE_KERNEL_VERSION) {
      // A newer major: answer ours only; the client retries INIT with it.
      InitOut.encode(s.reply.out, 16, { major: FUSE_KERNEL_VERSION, minor: FUSE_KERNEL_MINOR_VERSION });
      return InitOut.size;
    }
    if (major < FUSE_KERNEL_VERSION || minor < FUSE_MIN_MINOR_VERSION) {
      s.log.warn(`client speaks FUSE ${major}.${minor}; ${FUSE_KERNEL_VERSION}.${FUSE_MIN_MINOR_VERSION} or later is needed`);
      return -E.EPROTO;
    }
    const clientFlags = req.u32(InitIn.off.flags);
    if (s.opts.posixAcl && (clientFlags & ACL_FLAGS) !== ACL_FLAGS) {
      s.log.error(`--posix-acl: the client does not offer POSIX_ACL, DONT_MASK and SETXATTR_EXT (flags 0x${clientFlags.toString(16)}); refusing INIT`);
      return -E.EPROTO;
    }
    if (this.initialized) {
      // (Only an INIT we accept does this: a malformed one leaves the session as it was.)
      // A rebooted or reset guest starts over with INIT on the same connection: its old
      // node ids mean nothing any more, so release them as DESTROY would (virtiofsd too
      // resets its inode store on INIT). A VM pause/resume keeps the rings' state and
      // sends no INIT, so nothing is lost there.
      s.log.info('INIT on an initialized session: the client restarted; releasing its inodes and handles');
      this.release();
    }
    // POSIX_LOCKS and FLOCK_LOCKS are not offered (see the opcode table). Without
    // --posix-acl, neither is DONT_MASK: the client applies the caller's umask to modes
    // itself, and the process umask is 0 (set in createFuseServer) so the host does not
    // apply a second one. Without --killpriv-v2 (the default, as virtiofsd) the client
    // clears setuid/setgid itself with a SETATTR after a write by a non-owner (a direct
    // write still asks us, with FUSE_WRITE_KILL_SUIDGID). SETXATTR_EXT only with
    // --posix-acl (SETXATTR then has its 16-byte layout). SECURITY_CTX only with
    // --security-label; CREATE_SUPP_GROUP's record is acted on in asCaller.
    // flags2 exists only from 7.36 (a 64-byte fuse_init_in) and only with INIT_EXT set.
    const ext = (clientFlags & InitFlag.INIT_EXT) !== 0 && req.argLen >= InitIn.size;
    const clientFlags2 = ext ? req.u32(InitIn.off.flags2) : 0;
    const flags2 = (clientFlags2 & offeredFlags2(s.opts)) >>> 0;
    if (s.opts.securityLabel && (flags2 & InitFlag2.SECURITY_CTX) === 0) {
      // As virtiofsd: a guest that cannot send labels would create unlabelled files.
      s.log.error('--security-label: the client does not offer FUSE_SECURITY_CTX (needs a 5.17+ guest kernel); refusing INIT');
      return -E.EPROTO;
    }
    const flags = ((clientFlags & offeredFlags(s.opts)) | (ext ? InitFlag.INIT_EXT : 0)) >>> 0;
    s.initFlags2 = flags2;
    this.agreedFlags = flags;
    agree(s, flags);
    const maxWrite = Math.max(4096, this.cfg.maxWrite);
    const out = s.reply.out;
    InitOut.encode(out, 16, {});
    setU32(out, 16 + O.major, FUSE_KERNEL_VERSION);
    setU32(out, 16 + O.minor, Math.min(minor, FUSE_KERNEL_MINOR_VERSION));
    setU32(out, 16 + O.maxReadahead, req.u32(InitIn.off.maxReadahead));
    setU32(out, 16 + O.flags, flags);
    if (ext) setU32(out, 16 + O.flags2, flags2);
    setU32(out, 16 + O.maxWrite, maxWrite);
    setU32(out, 16 + O.timeGran, 1);
    if (flags & InitFlag.MAX_PAGES) setU16(out, 16 + O.maxPages, Math.min(65535, Math.ceil(maxWrite / 4096)));
    this.initialized = true;
    this.destroyed = false;
    s.log.debug(`INIT: client ${major}.${minor} flags 0x${clientFlags.toString(16)}/0x${clientFlags2.toString(16)}, agreed 0x${flags.toString(16)}/0x${flags2.toString(16)}, ` +
      `max_write ${maxWrite}, transport ${this.cfg.transport}`);
    return InitOut.size;
  }

  private destroy(): number {
    this.release();
    this.destroyed = true;
    return 0;
  }

  /** Close every handle and inode fd (not rootFd/procSelfFd); a new INIT starts afresh. */
  release(): void {
    this.s.handles.clear();
    this.s.inodes.clear();
    this.initialized = false;
  }

  inodeStats(): { inodes: number; fds: number; handles: number; evictions: number; reopens: number } {
    const t = this.s.inodes;
    return { inodes: t.size - 1, fds: t.fdCount - 1, handles: this.s.handles.size, evictions: t.evictions, reopens: t.reopens };
  }

  get openFds(): number {
    return this.s.handles.size + this.s.inodes.fdCount - 1;
  }
}

/**
 * Release what a session holds when its peer went away without DESTROY (a vhost-user
 * frontend that disconnected): every inode and handle fd is closed. rootFd and
 * procSelfFd stay open; they belong to the caller. A no-op for other FuseSessions.
 */
export function closeFuseServer(session: FuseSession): void {
  if (session instanceof FuseServer) session.release();
}

/** Inodes a session knows besides the root, and the fds it has given up and reopened (fd budget). */
export function fuseServerInodeStats(session: FuseSession): { inodes: number; fds: number; handles: number; evictions: number; reopens: number } {
  if (!(session instanceof FuseServer)) return { inodes: 0, fds: 0, handles: 0, evictions: 0, reopens: 0 };
  return session.inodeStats();
}

/** Inode and handle fds a session holds (for leak checks in tests); 0 for other sessions. */
export function fuseServerFdCount(session: FuseSession): number {
  return session instanceof FuseServer ? session.openFds : 0;
}

/**
 * Build the FUSE core over the shared directory. Sets the umask to 0: the client has
 * already applied its caller's umask to every mode it sends, and the host must not mask
 * the result again (process.umask() cannot be set from a worker thread, hence the libc
 * call). With --posix-acl the client sends the umask instead and each creation sets it
 * around its call (FsState.asCreator): the daemon gives the serving thread its own umask
 * first (unshareFsThread, in daemon/main.ts), so other threads never see one (also when a
 * migration brings a session that agreed DONT_MASK to a daemon started without --posix-acl). Also drops the calling thread's supplementary groups, so call
 * it on the thread that runs handle().
 */
export function createFuseServer(cfg: FuseServerConfig): FuseSession {
  setUmask(0);
  // Per thread (raw syscall): must be called on the thread that will serve requests.
  // EPERM (an unprivileged daemon) is fine: it cannot switch to callers' ids anyway.
  clearGroupsThread();
  return new FuseServer(cfg);
}
