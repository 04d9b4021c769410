// The vhost-user-fs device loop. One thread (the daemon's device worker) owns everything:
// it blocks in epoll_wait over the stop eventfd, the listening socket, the one frontend
// connection and every queue's kick eventfd, and handles control messages and FUSE
// requests synchronously, in arrival order. No locks, no request ever in flight across a
// control message, so the memory table can change between two requests safely. Lifecycle
// as virtiofsd: wait for one frontend, serve it, return 0 when it disconnects (or when the
// connection had to be closed for a protocol error, logged) or when stopFd is signalled.
// A frontend that shrinks a guarded region's file under us (guest-memory.ts) is noticed
// after each request: the request fails with EIO, the region leaves the memory table and
// every queue stops until the frontend restarts it, and the daemon goes on.
import { constants as osConstants } from 'node:os';
import { Epoll, eventfdRead, eventfdWrite, EPOLLIN, EPOLLHUP, EPOLLERR } from '../sys/event-calls.js';
import { acceptConnection, closeFd } from '../sys/socket-calls.js';
import { logger, type Logger } from '../log.js';
import type { FuseSession } from '../fs/session.js';
import { VhostUserConnection } from './vhost-user-connection.js';
import { VhostUserBackend, type KickWatcher } from './vhost-user-backend.js';
import { DescriptorChain, MAX_QUEUE_SIZE } from './descriptor-chain.js';
import { checkTag, requestName } from './vhost-user-protocol.js';
import { ringSizes, type SplitQueue } from './virtqueue.js';
import { describeRegion } from './guest-memory.js';
import { InHeader, OutHeader } from '../fs/fuse-abi.js';
import { MAX_QUEUE_THREADS, type QueueThread, type QueueThreads } from './queue-threads.js';

export interface VhostDeviceConfig {
  /** Listening AF_UNIX socket (from listenUnix or --fd). Not closed by the device. */
  listenFd: number;
  /** eventfd: a write makes the loop return 0. */
  stopFd: number;
  /** virtio-fs tag served in the config space (enables VHOST_USER_PROTOCOL_F_CONFIG). */
  tag?: string;
  /** Builds the FUSE session for a frontend; maxWrite is the largest WRITE we carry. */
  makeSession: (maxWrite: number) => FuseSession;
  /** Largest queue size accepted (default and maximum 32768). */
  queueSizeMax?: number;
  /** Request queues supported besides the hiprio queue (default 16). */
  requestQueues?: number;
  /** --queue-threads: threads that serve request queues 2.. (see queue-threads.ts). */
  queueThreads?: QueueThreads;
  /** --readonly: queue threads leave every WRITE to the session (which refuses it). */
  readonlyShare?: boolean;
}

/** Largest WRITE payload we announce through the session (as virtiofsd: 1 MiB). */
export const MAX_WRITE = 1 << 20;
export const DEFAULT_REQUEST_QUEUES = 16;

/**
 * Interrupt decisions per this many completions. Each completion is made visible in
 * used->idx at once; the interrupt (a write to the call eventfd: a syscall and a wake-up,
 * ~20% of the daemon's CPU in a GETATTR stream) is decided after every completion, as
 * virtiofsd does. Measured with vufs at QD16 (bench/README.md, "CPU per request"): deciding
 * once per drained batch (16) saved 5-13% CPU per op but cost 25-37% of the throughput of
 * GETATTR, 4 KiB reads and writes (the frontend went to sleep between its own reaps and
 * waited for the batch), and delaying used->idx itself by 32 (an earlier version) made
 * guest and device take turns likewise. EVENT_IDX still keeps interrupts down to the ones
 * the driver asks for.
 */
const SIGNAL_BATCH = 1;
/** Chains served from one queue before looking at the other events again. */
export const PROCESS_BUDGET = 256;
/** Per queue: log the first malformed chains, then one line per this many. */
const BAD_CHAIN_LOG_FIRST = 20;
const BAD_CHAIN_LOG_EVERY = 1000;

const TOKEN_STOP = 0;
const TOKEN_LISTEN = 1;
const TOKEN_CONN = 2;
const TOKEN_THREAD0 = 8; // .. TOKEN_THREAD0 + MAX_QUEUE_THREADS - 1
const TOKEN_KICK0 = 16;
/** The first request queue stays on this thread; thread i serves queue FIRST_THREAD_QUEUE + i. */
const FIRST_THREAD_QUEUE = 2;

class Device implements KickWatcher {
  readonly backend: VhostUserBackend;
  private readonly chain = new DescriptorChain();
  private readonly badChains: number[];
  private readonly leftover: boolean[];

  constructor(
    private readonly ep: Epoll,
    readonly conn: VhostUserConnection,
    private readonly session: FuseSession,
    private readonly log: Logger,
    cfg: VhostDeviceConfig,
    numQueues: number,
  ) {
    this.backend = new VhostUserBackend(
      {
        log, tag: cfg.tag, numQueues, configRequestQueues: 1, queueSizeMax: Math.min(cfg.queueSizeMax ?? MAX_QUEUE_SIZE, MAX_QUEUE_SIZE),
        deviceState: session.migration,
      },
      this,
    );
    this.badChains = new Array<number>(numQueues).fill(0);
    this.leftover = new Array<boolean>(numQueues).fill(false);
    this.threads = cfg.queueThreads?.threads ?? [];
    this.readonlyShare = cfg.readonlyShare === true;
    this.threads.forEach((th, i) => this.ep.add(th.ownerFd, TOKEN_THREAD0 + i, EPOLLIN));
  }

  private readonly threads: readonly QueueThread[];
  private readonly readonlyShare: boolean;

  /**
   * Take every queue back from the queue threads (before any vhost-user message: the
   * message may change what they use), serving what they hand over until they let go.
   */
  reclaimAll(): void {
    for (const th of this.threads) {
      if (th.queue < 0) continue;
      const q = this.backend.queues[th.queue] as SplitQueue;
      const back = th.pause(() => this.serveForwarded(th));
      this.serveForwarded(th);
      const n = th.counts();
      this.log.debug(`queue ${q.index} back from queue thread ${th.id}: ${n.served} served there, ${n.forwarded} handed over (so far)`);
      q.adoptProgress(back);
      if (back.callLost) q.replaceFd('callFd', -1);
      if (back.kickLost) q.replaceFd('kickFd', -1);
      else if (q.kickFd >= 0) this.watch(q.index, q.kickFd);
    }
  }

  /** Hand each queue thread its ring when it runs and nothing needs this thread's eye. */
  handOffAll(): void {
    if (this.threads.length === 0 || this.backend.dirtyLog.enabled) return;
    if (!this.backend.mem.protections().every((p) => p.startsWith('sealed'))) return;
    const env = this.backend.env;
    for (const th of this.threads) {
      if (th.queue >= 0) continue;
      const q = this.backend.queues[FIRST_THREAD_QUEUE + th.id];
      if (q === undefined || !q.ready() || q.kickFd < 0 || q.addrs === undefined || this.leftover[q.index]) continue;
      q.flush();
      this.unwatch(q.index, q.kickFd);
      th.serve({
        index: q.index, size: q.size, addrs: q.addrs, kickFd: q.kickFd, callFd: q.callFd, errFd: q.errFd, eventIdx: env.eventIdx,
        walk: env.walk, regions: this.backend.mem.share(), progress: q.progress(), readonly: this.readonlyShare,
      });
    }
  }

  /** The chains queue thread `i` handed over: served on the FUSE session, lengths returned. */
  onThread(i: number): void {
    const th = this.threads[i];
    if (th === undefined) return;
    th.drainOwnerFd();
    this.serveForwarded(th);
  }

  private serveForwarded(th: QueueThread): void {
    if (th.queue < 0) return;
    const q = this.backend.queues[th.queue] as SplitQueue;
    const chain = this.chain;
    let any = false;
    for (let head = th.ch.popForward(); head >= 0; head = th.ch.popForward()) {
      q.walkHead(head, chain);
      const len = chain.error === undefined ? this.serve(q, chain) : this.reject(q, chain);
      th.ch.pushReturn(head, len);
      any = true;
    }
    chain.reset(0);
    if (any) eventfdWrite(th.wakeFd);
  }

  watch(queue: number, fd: number): void {
    this.ep.add(fd, TOKEN_KICK0 + queue, EPOLLIN);
  }

  unwatch(_queue: number, fd: number): void {
    this.ep.remove(fd);
  }

  /** The connection is readable: handle every message that is there, or say it is over. */
  onReadable(): { done: false } | { done: true; reason: string } {
    try {
      return this.readMessages();
    } catch (err) {
      // A socket error (the frontend vanished mid-reply, a reply it would not read, ...).
      for (const fd of this.conn.msg.fds) closeFd(fd);
      this.conn.msg.fds.length = 0;
      const reason = `connection error: ${(err as Error).message}`;
      this.log.error(reason);
      return { done: true, reason };
    }
  }

  private readMessages(): { done: false } | { done: true; reason: string } {
    for (;;) {
      const r = this.conn.read();
      if (r === 'again') return { done: false };
      if (r === 'eof') return { done: true, reason: 'frontend disconnected' };
      if (r !== 'message') {
        for (const fd of this.conn.msg.fds) closeFd(fd);
        this.conn.msg.fds.length = 0;
        this.log.error(`closing the connection: ${r.error}`);
        return { done: true, reason: r.error };
      }
      const msg = this.conn.msg;
      // The message may change rings or memory the queue threads use: take them back first.
      this.reclaimAll();
      this.log.trace(`${requestName(msg.request)} flags 0x${msg.flags.toString(16)} size ${msg.size} fds ${msg.fds.length}`);
      const out = this.backend.handle(msg, (request, payload) => {
        if (typeof payload === 'bigint') this.conn.replyU64(request, payload);
        else this.conn.reply(request, payload);
      });
      if (out.close) {
        this.log.error(`closing the connection: ${out.reason}`);
        return { done: true, reason: out.reason };
      }
      // A message may have started, enabled or re-mapped a ring with requests waiting.
      for (const q of this.backend.queues) if (q.availableCount() > 0) this.process(q);
      this.memoryFaulted(undefined, undefined);
      this.handOffAll();
    }
  }

  onKick(index: number, events: number): void {
    const q = this.backend.queues[index];
    if (q === undefined || q.kickFd < 0) return;
    try {
      eventfdRead(q.kickFd);
    } catch (err) {
      this.dropKick(q, `cannot be read: ${(err as Error).message}`);
      return;
    }
    if ((events & (EPOLLHUP | EPOLLERR)) !== 0) {
      // Not an eventfd (a pipe whose writer is gone): it would wake us for ever.
      this.dropKick(q, 'hung up');
    }
    this.process(q);
  }

  private dropKick(q: SplitQueue, why: string): void {
    this.log.error(`queue ${q.index}: kick descriptor ${why}; no longer watched`);
    this.unwatch(q.index, q.kickFd);
    q.replaceFd('kickFd', -1);
  }

  /**
   * Serve the available chains of a queue, then re-arm notifications (and recheck). At most
   * PROCESS_BUDGET chains per call: a guest that keeps its queue full must not starve the
   * other queues, control messages or a stop request. A queue left with work is remembered
   * and served again after the next (non-blocking) look at epoll.
   */
  private process(q: SplitQueue): void {
    const chain = this.chain;
    let budget = PROCESS_BUDGET;
    this.leftover[q.index] = false;
    while (q.ready()) {
      q.disableNotify();
      while (budget > 0 && q.pop(chain)) {
        budget--;
        // A fault while reading the ring or the chain: do not serve what was read as zeros.
        if (this.memoryFaulted(q, chain)) break;
        const len = chain.error === undefined ? this.serve(q, chain) : this.reject(q, chain);
        if (this.memoryFaulted(q, chain)) break;
        q.pushUsed(chain.head, len);
        if (this.backend.dirtyLog.enabled) this.backend.dirtyLog.markWritten(this.backend.mem, chain.writeSegs, len);
        q.exposeUsed();
        if (q.undecided >= SIGNAL_BATCH) q.flush();
      }
      q.flush();
      if (budget === 0 && q.availableCount() > 0) {
        this.leftover[q.index] = true;
        break;
      }
      if (!q.enableNotify()) break;
    }
    // Every write to the used ring (entries, idx, avail_event) happened in this turn.
    if (this.backend.dirtyLog.enabled && q.logUsed >= 0) this.backend.dirtyLog.markGuest(q.logUsed, ringSizes(q.size).used);
    chain.reset(0);
    this.memoryFaulted(undefined, undefined);
  }

  /**
   * Did the SIGBUS guard absorb a fault in guest memory (a region's file shrank under us)?
   * If so: log it, fail the chain being served (EIO when its reply room allows a header,
   * length 0 otherwise), take the region out of the table and stop every queue (the
   * frontend sees SET_VRING_ERR's eventfd) until the frontend restarts them.
   */
  memoryFaulted(q: SplitQueue | undefined, chain: DescriptorChain | undefined): boolean {
    const mem = this.backend.mem;
    const f = mem.takeFault();
    if (f === undefined) return false;
    const where = f.region !== undefined ? `region ${describeRegion(f.region)}` : 'no mapped region';
    const req = q !== undefined && chain !== undefined ? `; the request on queue ${q.index} (head ${chain.head}) fails with EIO` : '';
    this.log.error(`guest memory: ${f.count} SIGBUS fault(s), the last at 0x${f.address.toString(16)} in ${where}: the frontend shrank the file behind it after it was mapped${req}; the region leaves the memory table`);
    if (q !== undefined && chain !== undefined) {
      q.pushUsed(chain.head, failWithEio(chain));
      q.flush();
    }
    // Leave the notification state as a finished turn does (avail_event / NO_NOTIFY): the
    // frontend may restart this ring as it is, and would otherwise never kick it again.
    q?.enableNotify();
    mem.quarantine(f.address);
    for (const x of this.backend.queues) if (x.started && !x.broken) x.markBroken('guest memory shrank under the device');
    return true;
  }

  /** True when some queue still has work from a previous turn. */
  hasLeftover(): boolean {
    return this.leftover.includes(true);
  }

  /** Give every queue with leftover work one more budgeted turn. */
  serveLeftover(): void {
    for (const q of this.backend.queues) if (this.leftover[q.index]) this.process(q);
  }

  private serve(q: SplitQueue, chain: DescriptorChain): number {
    let len: number;
    try {
      const session = this.session;
      len = session.handleSegments !== undefined ? session.handleSegments(chain.readSegs, chain.writeSegs) : session.handle(chain.readable, chain.writable);
    } catch (err) {
      this.log.error(`queue ${q.index}: request failed: ${(err as Error).stack ?? String(err)}`);
      return 0;
    }
    if (!Number.isInteger(len) || len < 0 || len > chain.writableBytes) {
      this.log.error(`queue ${q.index}: session returned reply length ${len} for ${chain.writableBytes} writable bytes`);
      return 0;
    }
    return len;
  }

  private reject(q: SplitQueue, chain: DescriptorChain): number {
    const n = ++this.badChains[q.index];
    if (n <= BAD_CHAIN_LOG_FIRST || n % BAD_CHAIN_LOG_EVERY === 0) {
      this.log.warn(`queue ${q.index}: malformed descriptor chain (head ${chain.head}) failed with length 0: ${chain.error}${n > BAD_CHAIN_LOG_FIRST ? ` (${n} so far)` : ''}`);
    }
    return 0;
  }

  close(): void {
    this.reclaimAll();
    for (const th of this.threads) {
      const n = th.counts();
      this.log.info(`queue thread ${th.id} (queue ${FIRST_THREAD_QUEUE + th.id}): ${n.served} requests served there, ${n.forwarded} handed to the main thread`);
    }
    this.backend.close();
    this.ep.remove(this.conn.fd);
    this.conn.close();
  }
}

const EIO_HEADER = Buffer.alloc(OutHeader.size);

/**
 * Write a fuse_out_header with -EIO into the chain's reply room; returns the used length
 * (0 when the room is smaller than a header or the request had no readable header).
 */
function failWithEio(chain: DescriptorChain): number {
  if (chain.error !== undefined || chain.writableBytes < OutHeader.size || chain.readableBytes < InHeader.size) return 0;
  const inHeader = Buffer.alloc(InHeader.size);
  gather(chain.readable, inHeader);
  OutHeader.encode(EIO_HEADER, 0, { len: OutHeader.size, error: -osConstants.errno.EIO, unique: inHeader.readBigUInt64LE(InHeader.off.unique) });
  scatter(EIO_HEADER, chain.writable);
  return OutHeader.size;
}

function gather(segs: readonly Buffer[], out: Buffer): void {
  let pos = 0;
  for (const s of segs) {
    if (pos >= out.length) break;
    pos += s.copy(out, pos, 0, Math.min(s.length, out.length - pos));
  }
}

function scatter(data: Buffer, segs: readonly Buffer[]): void {
  let pos = 0;
  for (const s of segs) {
    if (pos >= data.length) break;
    pos += data.copy(s, 0, pos, Math.min(data.length, pos + s.length));
  }
}

/**
 * Serve one vhost-user frontend on `cfg.listenFd` until it disconnects or `cfg.stopFd` is
 * signalled; returns the exit code (0). Throws only for a bad configuration.
 */
export function runVhostDevice(cfg: VhostDeviceConfig): number {
  const log = logger('vhost');
  if (cfg.tag !== undefined) {
    const bad = checkTag(cfg.tag);
    if (bad !== undefined) throw new Error(`--tag: ${bad}`);
  }
  const requestQueues = cfg.requestQueues ?? DEFAULT_REQUEST_QUEUES;
  if (!Number.isInteger(requestQueues) || requestQueues < 1 || requestQueues > 255) throw new Error(`requestQueues ${requestQueues}: 1 to 255`);
  const ep = new Epoll(64);
  let dev: Device | undefined;
  try {
    ep.add(cfg.stopFd, TOKEN_STOP, EPOLLIN);
    ep.add(cfg.listenFd, TOKEN_LISTEN, EPOLLIN);
    log.info('waiting for a vhost-user frontend');
    for (;;) {
      const n = ep.wait(dev?.hasLeftover() === true ? 0 : -1);
      for (let i = 0; i < n; i++) {
        const token = ep.token(i);
        if (token === TOKEN_STOP) {
          log.info('stop requested');
          return 0;
        }
        if (token === TOKEN_LISTEN) {
          const fd = acceptConnection(cfg.listenFd);
          if (fd < 0) continue;
          if (dev !== undefined) {
            log.warn('a second frontend tried to connect; refused (one frontend at a time)');
            closeFd(fd);
            continue;
          }
          const session = cfg.makeSession(MAX_WRITE);
          dev = new Device(ep, new VhostUserConnection(fd), session, log, cfg, 1 + requestQueues);
          ep.add(fd, TOKEN_CONN, EPOLLIN);
          log.info('frontend connected, serving requests');
        } else if (token === TOKEN_CONN && dev !== undefined) {
          const r = dev.onReadable();
          if (r.done) {
            log.info(`${r.reason}; shutting down`);
            return 0;
          }
        } else if (token >= TOKEN_THREAD0 && token < TOKEN_THREAD0 + MAX_QUEUE_THREADS && dev !== undefined) {
          dev.onThread(token - TOKEN_THREAD0);
        } else if (token >= TOKEN_KICK0 && dev !== undefined) {
          try {
            dev.onKick(token - TOKEN_KICK0, ep.events(i));
          } catch (err) {
            // Guest memory is only touched through bounds-checked views, so this is a
            // failing descriptor (a call eventfd that cannot be written, ...): log, go on.
            log.error(`queue ${token - TOKEN_KICK0}: ${(err as Error).stack ?? String(err)}`);
          }
        }
      }
      if (dev?.hasLeftover() === true) {
        try {
          dev.serveLeftover();
        } catch (err) {
          log.error(`serving queues: ${(err as Error).stack ?? String(err)}`);
        }
      }
    }
  } finally {
    dev?.close();
    ep.close();
  }
}
