// A queue thread (--queue-threads): the entry of a worker_threads Worker that serves one
// request queue the device loop handed it (queue-threads.ts), so that several request
// queues are served at once. It owns that ring while it has it: pops chains, serves READ
// and WRITE itself (queue-data-path.ts), hands every other chain to the device loop (the
// owner of the FUSE state) through the channel and completes it when its length comes
// back, and decides interrupts. It blocks in its own epoll_wait over the ring's kick
// eventfd and its wake eventfd; it never runs the JS event loop while serving. Started
// before the sandbox (its code cannot be loaded after pivot_root), it drops its own
// capabilities when told (they are per thread) and is under the same seccomp filter (TSYNC).
import { workerData } from 'node:worker_threads';
import { Epoll, eventfdRead, eventfdWrite, EPOLLIN, EPOLLHUP, EPOLLERR } from '../sys/event-calls.js';
import { logger, setLogLevel, type LogLevel } from '../log.js';
import { SharedHandles } from '../fs/shared-handles.js';
import { dropPrivileges } from '../sandbox/privileges.js';
import { C, Cmd, LOST_BROKEN, LOST_CALL, LOST_KICK, QueueChannel, type QueueAssignment } from './queue-channel.js';
import { GuestMemory } from './guest-memory.js';
import { SplitQueue } from './virtqueue.js';
import { DescriptorChain } from './descriptor-chain.js';
import { FORWARD, QueueDataPath } from './queue-data-path.js';

export interface QueueWorkerData {
  channel: SharedArrayBuffer;
  handles: SharedArrayBuffer;
  /** eventfd the owner writes to wake this thread. */
  wakeFd: number;
  /** eventfd this thread writes to wake the owner (chains forwarded). */
  ownerFd: number;
  logLevel: LogLevel;
  maxRequest: number;
  id: number;
}

const TOKEN_WAKE = 0;
const TOKEN_KICK = 1;
/** Chains served before looking at the wake eventfd again (as the device loop's budget). */
const BUDGET = 256;
/** How long a pausing thread waits per round for the owner to return forwarded chains (ms). */
const RETURN_WAIT_MS = 50;

class QueueWorker {
  private readonly ch: QueueChannel;
  private readonly handles: SharedHandles;
  private readonly ep = new Epoll(4);
  private readonly log;
  private readonly chain = new DescriptorChain();
  private readonly pair = new Int32Array(2);
  private seq = 0;
  private q: SplitQueue | undefined;
  private data: QueueDataPath | undefined;
  private outstanding = 0;
  private leftover = false;
  private badChains = 0;

  constructor(private readonly d: QueueWorkerData) {
    this.ch = new QueueChannel(d.channel);
    this.handles = new SharedHandles(d.handles);
    this.log = logger(`queue-thread-${d.id}`);
    this.ep.add(d.wakeFd, TOKEN_WAKE, EPOLLIN);
  }

  run(): void {
    Atomics.store(this.ch.ctl, C.READY, 1);
    Atomics.notify(this.ch.ctl, C.READY);
    for (;;) {
      const n = this.ep.wait(this.leftover ? 0 : -1);
      for (let i = 0; i < n; i++) {
        if (this.ep.token(i) === TOKEN_WAKE) {
          eventfdRead(this.d.wakeFd);
          this.takeReturns();
          if (!this.commands()) return;
        } else {
          this.onKick(this.ep.events(i));
        }
      }
      if (this.leftover && this.q !== undefined) this.process(this.q);
    }
  }

  /** Act on a new command, if any; false when told to exit. */
  private commands(): boolean {
    const ctl = this.ch.ctl;
    const seq = Atomics.load(ctl, C.SEQ);
    if (seq === this.seq) return true;
    this.seq = seq;
    const cmd = Atomics.load(ctl, C.CMD);
    Atomics.store(ctl, C.FAILED, 0);
    try {
      if (cmd === Cmd.SERVE) this.serve(this.ch.readConfig() as QueueAssignment);
      else if (cmd === Cmd.PAUSE) this.pause();
      else if (cmd === Cmd.DROP_PRIVILEGES) dropPrivileges({ setRlimit: false, capabilities: this.ch.readConfig() as string[] });
    } catch (err) {
      this.log.error(`command ${cmd} failed: ${(err as Error).message}`);
      this.ch.writeConfig((err as Error).message);
      Atomics.store(ctl, C.FAILED, 1);
    }
    Atomics.store(ctl, C.ACK, seq);
    Atomics.notify(ctl, C.ACK);
    return cmd !== Cmd.EXIT;
  }

  private serve(a: QueueAssignment): void {
    const mem = GuestMemory.adopt(a.regions, a.regions.length);
    const q = new SplitQueue(a.index, { mem, log: this.log, eventIdx: a.eventIdx, walk: a.walk, protocolFeatures: true });
    q.borrowedFds = true;
    q.setSize(a.size);
    q.setAddresses(a.addrs);
    q.kickFd = a.kickFd;
    q.callFd = a.callFd;
    q.errFd = a.errFd;
    q.explicitEnable = true;
    q.started = true;
    q.adoptProgress(a.progress);
    this.q = q;
    this.data = new QueueDataPath(this.handles, a.readonly, this.d.maxRequest);
    this.outstanding = 0;
    this.ep.add(q.kickFd, TOKEN_KICK, EPOLLIN);
    // Chains may have arrived while the ring was changing hands (their kick went to the owner).
    this.process(q);
  }

  /** Give the ring back: every forwarded chain completed, everything flushed, progress reported. */
  private pause(): void {
    const q = this.q;
    if (q === undefined) return;
    const ctl = this.ch.ctl;
    while (this.outstanding > 0) {
      const seen = Atomics.load(ctl, C.RET_WRITE);
      this.takeReturns();
      if (this.outstanding > 0) Atomics.wait(ctl, C.RET_WRITE, seen, RETURN_WAIT_MS);
    }
    q.flush();
    if (q.kickFd >= 0) this.ep.remove(q.kickFd);
    const p = q.progress();
    Atomics.store(ctl, C.LAST_AVAIL, p.lastAvail);
    Atomics.store(ctl, C.USED_IDX, p.usedIdx);
    Atomics.store(ctl, C.SIGNALLED, p.signalledUsed);
    Atomics.store(ctl, C.SINCE_SIGNAL, p.sinceSignal);
    Atomics.store(ctl, C.LOST, (p.broken ? LOST_BROKEN : 0) | (q.kickFd < 0 ? LOST_KICK : 0) | (q.callFd < 0 ? LOST_CALL : 0));
    this.q = undefined;
    this.data = undefined;
    this.leftover = false;
  }

  private onKick(events: number): void {
    const q = this.q;
    if (q === undefined || q.kickFd < 0) return;
    let hungUp = (events & (EPOLLHUP | EPOLLERR)) !== 0;
    try {
      eventfdRead(q.kickFd);
    } catch (err) {
      this.log.error(`queue ${q.index}: kick descriptor cannot be read: ${(err as Error).message}`);
      hungUp = true;
    }
    if (hungUp) {
      this.log.error(`queue ${q.index}: kick descriptor hung up; no longer watched`);
      this.ep.remove(q.kickFd);
      q.replaceFd('kickFd', -1);
    }
    this.process(q);
  }

  /** Completions of forwarded chains, as the owner returned them. */
  private takeReturns(): void {
    const q = this.q;
    if (q === undefined) return;
    let any = false;
    while (this.ch.popReturn(this.pair)) {
      q.pushUsed(this.pair[0] as number, this.pair[1] as number);
      this.outstanding--;
      any = true;
    }
    if (any) q.flush();
  }

  /** Serve the available chains (as the device loop's process(), with forwarding). */
  private process(q: SplitQueue): void {
    const chain = this.chain;
    const data = this.data as QueueDataPath;
    let budget = BUDGET;
    let forwarded = false;
    this.leftover = false;
    while (q.ready()) {
      q.disableNotify();
      while (budget > 0 && q.pop(chain)) {
        budget--;
        let len = 0;
        if (chain.error !== undefined) {
          if (++this.badChains <= 20) this.log.warn(`queue ${q.index}: malformed descriptor chain (head ${chain.head}) failed with length 0: ${chain.error}`);
        } else {
          len = data.handle(chain.readSegs, chain.writeSegs);
          if (len === FORWARD) {
            this.ch.pushForward(chain.head);
            this.outstanding++;
            forwarded = true;
            Atomics.add(this.ch.ctl, C.FORWARDED, 1);
            continue;
          }
          Atomics.add(this.ch.ctl, C.SERVED, 1);
        }
        q.pushUsed(chain.head, len);
        q.exposeUsed();
        q.flush();
      }
      q.flush();
      if (budget === 0 && q.availableCount() > 0) {
        this.leftover = true;
        break;
      }
      if (!q.enableNotify()) break;
    }
    chain.reset(0);
    if (forwarded) eventfdWrite(this.d.ownerFd);
  }
}

const d = workerData as QueueWorkerData;
setLogLevel(d.logLevel);
new QueueWorker(d).run();
