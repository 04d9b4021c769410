// The /dev/fuse request loop: one thread reads whole FUSE requests from the device fd
// (one request per read(2)), hands each to the FUSE core through the FuseSession contract
// and writes the reply back with one write(2). It blocks in epoll_wait over the device and
// a stop eventfd so the daemon's main thread can end it on SIGTERM; it ends by itself when
// the file system is unmounted (ENODEV) or DESTROY was served.
import { constants as osConstants } from 'node:os';
import { Epoll, EPOLLIN } from '../sys/event-calls.js';
import { readInto, writeFrom, setNonBlocking } from '../sys/fuse-dev-calls.js';
import type { FuseSession } from '../fs/session.js';
import { logger } from '../log.js';
import { u32 } from '../le-bytes.js';

const log = logger('fuse-dev');
const { EAGAIN, EINTR, EIO, ENOENT, ENODEV } = osConstants.errno;

/** struct fuse_in_header / fuse_out_header: the only fields the loop looks at. */
const IN_HEADER_LEN_OFF = 0;
const IN_HEADER_OPCODE_OFF = 4;
const IN_HEADER_UNIQUE_OFF = 8;
const IN_HEADER_SIZE = 40;
const OUT_HEADER_LEN_OFF = 0;
const OUT_HEADER_ERROR_OFF = 4;
const OUT_HEADER_UNIQUE_OFF = 8;
const OUT_HEADER_SIZE = 16;

/** The kernel refuses a read buffer smaller than this (FUSE_MIN_READ_BUFFER). */
export const FUSE_MIN_READ_BUFFER = 8192;
/** Room for the headers of a WRITE request in front of its payload. */
const WRITE_OVERHEAD = 4096;

/** Read buffer size the kernel accepts for a given max_write (>= 8 KiB, >= headers + max_write). */
export function fuseBufferSize(maxWrite: number): number {
  return Math.max(FUSE_MIN_READ_BUFFER, maxWrite + WRITE_OVERHEAD);
}

export interface FuseLoopConfig {
  /** The /dev/fuse fd returned by mountFuse (or passed in with --fuse-fd). */
  devFd: number;
  /** Readable when the loop must end (returns 0): an eventfd, or the daemon's signal pipe; never read here. */
  stopFd: number;
  session: FuseSession;
  /** Size of the request and reply buffers: fuseBufferSize(maxWrite) or more. */
  bufferSize: number;
}

const TOKEN_DEV = 1;
const TOKEN_STOP = 2;
/** Requests served per wakeup before looking at the stop eventfd again. */
const BURST = 32;

type Step = 'again' | 'served' | 'gone' | 'failed';

class DeviceLoop {
  private readonly req: Buffer;
  private readonly reply: Buffer;
  private readonly errorReply = Buffer.alloc(OUT_HEADER_SIZE);

  constructor(private readonly cfg: FuseLoopConfig) {
    const size = Math.max(cfg.bufferSize, FUSE_MIN_READ_BUFFER);
    this.req = Buffer.alloc(size);
    this.reply = Buffer.alloc(size);
    this.errorReply.writeUInt32LE(OUT_HEADER_SIZE, OUT_HEADER_LEN_OFF);
    this.errorReply.writeInt32LE(-EIO, OUT_HEADER_ERROR_OFF);
  }

  /** Answer request `unique` with EIO (a FORGET-like request simply ignores it: ENOENT). */
  private sendError(unique: bigint): void {
    this.errorReply.writeBigUInt64LE(unique, OUT_HEADER_UNIQUE_OFF);
    writeFrom(this.cfg.devFd, this.errorReply, OUT_HEADER_SIZE);
  }

  /** Read and answer one request. */
  step(): Step {
    const { devFd, session } = this.cfg;
    const n = readInto(devFd, this.req);
    if (n < 0) {
      const e = -n;
      if (e === EAGAIN) return 'again';
      // EINTR: a signal; ENOENT: the request was interrupted before we got it.
      if (e === EINTR || e === ENOENT) return 'served';
      if (e === ENODEV) return 'gone';
      log.error(`read(/dev/fuse): errno ${e}`);
      return 'failed';
    }
    if (n < IN_HEADER_SIZE) {
      log.warn(`short read of ${n} bytes from /dev/fuse`);
      return 'served';
    }
    let len: number;
    try {
      len = session.handle([this.req.subarray(0, n)], [this.reply]);
    } catch (err) {
      // The session promises not to throw; should it, the caller still gets an answer.
      log.error(`session threw on opcode ${this.req.readUInt32LE(IN_HEADER_OPCODE_OFF)}: ${err instanceof Error ? err.message : String(err)}`);
      this.sendError(this.req.readBigUInt64LE(IN_HEADER_UNIQUE_OFF));
      return 'served';
    }
    if (len > 0) {
      const declared = u32(this.reply, OUT_HEADER_LEN_OFF);
      if (declared !== len) {
        log.warn(`reply length ${len} differs from its header (${declared}) for opcode ${this.req.readUInt32LE(IN_HEADER_OPCODE_OFF)}`);
      }
      const w = writeFrom(devFd, this.reply, len);
      if (w < 0) {
        const e = -w;
        // ENOENT: the request was interrupted and the kernel no longer waits for it.
        if (e === ENODEV) return 'gone';
        if (e !== ENOENT) {
          const unique = this.req.readBigUInt64LE(IN_HEADER_UNIQUE_OFF);
          log.warn(`write(/dev/fuse) of a ${len}-byte reply to request ${unique} (opcode ${this.req.readUInt32LE(IN_HEADER_OPCODE_OFF)}, ${this.req.readUInt32LE(IN_HEADER_LEN_OFF)} bytes): errno ${e}; answering EIO`);
          // The kernel refused the reply (malformed): answer EIO so the caller does not wait forever.
          this.sendError(unique);
        }
      }
    }
    return session.destroyed ? 'gone' : 'served';
  }

  run(): number {
    const { devFd, stopFd } = this.cfg;
    setNonBlocking(devFd, true);
    const ep = new Epoll(4);
    try {
      ep.add(devFd, TOKEN_DEV, EPOLLIN);
      ep.add(stopFd, TOKEN_STOP, EPOLLIN);
      for (;;) {
        const count = ep.wait(-1);
        let devReady = false;
        for (let i = 0; i < count; i++) {
          const tok = ep.token(i);
          if (tok === TOKEN_STOP) {
            // Not drained: it may be libuv's signal pipe (src/daemon/stop-signals.ts), whose messages are libuv's.
            log.debug('stop requested');
            return 0;
          }
          // Readable, or EPOLLERR once unmounted: the read then says ENODEV.
          if (tok === TOKEN_DEV) devReady = true;
        }
        if (!devReady) continue;
        for (let k = 0; k < BURST; k++) {
          const s = this.step();
          if (s === 'again') break;
          if (s === 'gone') {
            log.debug('file system unmounted');
            return 0;
          }
          if (s === 'failed') return 1;
        }
      }
    } finally {
      ep.close();
    }
  }
}

/**
 * Serve FUSE requests from cfg.devFd until the file system is unmounted, DESTROY was
 * served, or cfg.stopFd is signalled (all return 0); an unexpected device error returns 1.
 * Blocks the calling thread: run it on the device worker, never on a thread whose own
 * syscalls might land on this mount.
 */
export function runFuseDeviceLoop(cfg: FuseLoopConfig): number {
  return new DeviceLoop(cfg).run();
}
