// The device loop's side of --queue-threads N: N worker threads (queue-worker.ts), each of
// which can be handed one request queue to serve. A queue is owned by exactly one thread
// at a time. The device loop takes every queue back before it handles any vhost-user
// message (so the memory table, ring layout, descriptors and progress change only while
// it owns them all) and hands them out again afterwards, when the ring runs and nothing
// needs the owner's eye: no dirty-page logging (migration) and every memory region sealed
// against shrinking (a SIGBUS absorbed on a queue thread could not be told from one on the
// owner). Chains a thread hands over are served here, on the owner's FUSE session, and
// their lengths returned. Threads are started before the sandbox and the seccomp filter
// (daemon/queue-thread-start.ts: loading code needs the host's file system; no thread is
// created under the filter).
import { eventfdRead, eventfdWrite } from '../sys/event-calls.js';
import type { SharedHandles } from '../fs/shared-handles.js';
import { C, Cmd, LOST_BROKEN, LOST_CALL, LOST_KICK, type QueueChannel, type QueueAssignment } from './queue-channel.js';

export { MAX_QUEUE_THREADS } from './queue-limits.js';
/** How long the owner waits per round for a thread's answer while it serves forwarded chains (ms). */
const ACK_WAIT_MS = 1;

export class QueueThreadError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'QueueThreadError';
  }
}

/** What a pausing thread reports about the ring it gives back. */
export interface GivenBack {
  lastAvail: number;
  usedIdx: number;
  signalledUsed: number;
  sinceSignal: number;
  broken: boolean;
  kickLost: boolean;
  callLost: boolean;
}

export class QueueThread {
  /** Index of the queue the thread serves now, or -1. */
  queue = -1;
  private seq = 0;

  /**
   * `wakeFd`: the owner writes it to wake the thread; `ownerFd`: the thread writes it when
   * it forwarded chains (in the device loop's epoll set). Made at start-up with the worker
   * (daemon/queue-thread-start.ts), before the sandbox.
   */
  constructor(readonly id: number, readonly ch: QueueChannel, readonly wakeFd: number, readonly ownerFd: number) {}

  /**
   * Send a command and wait for its answer; `whileWaiting` runs between looks (the owner
   * serves the chains the thread hands over meanwhile, which a pausing thread waits for).
   */
  command(cmd: number, config: unknown, whileWaiting: () => void = () => undefined): void {
    const ctl = this.ch.ctl;
    if (config !== undefined) this.ch.writeConfig(config);
    Atomics.store(ctl, C.CMD, cmd);
    this.seq = (this.seq + 1) | 0;
    Atomics.store(ctl, C.SEQ, this.seq);
    eventfdWrite(this.wakeFd);
    for (;;) {
      const ack = Atomics.load(ctl, C.ACK);
      if (ack === this.seq) break;
      whileWaiting();
      Atomics.wait(ctl, C.ACK, ack, ACK_WAIT_MS);
    }
    if (Atomics.load(ctl, C.FAILED) !== 0) throw new QueueThreadError(`queue thread ${this.id}: ${String(this.ch.readConfig())}`);
  }

  /** Hand the thread a running ring. */
  serve(a: QueueAssignment): void {
    this.command(Cmd.SERVE, a);
    this.queue = a.index;
  }

  /** Take the ring back; what the thread reports about it. */
  pause(whileWaiting: () => void): GivenBack {
    this.command(Cmd.PAUSE, undefined, whileWaiting);
    this.queue = -1;
    const ctl = this.ch.ctl;
    const lost = Atomics.load(ctl, C.LOST);
    return {
      lastAvail: Atomics.load(ctl, C.LAST_AVAIL), usedIdx: Atomics.load(ctl, C.USED_IDX), signalledUsed: Atomics.load(ctl, C.SIGNALLED),
      sinceSignal: Atomics.load(ctl, C.SINCE_SIGNAL), broken: (lost & LOST_BROKEN) !== 0, kickLost: (lost & LOST_KICK) !== 0, callLost: (lost & LOST_CALL) !== 0,
    };
  }

  /** Clear the owner's wake-up (the device loop then reads the forward ring). */
  drainOwnerFd(): void {
    eventfdRead(this.ownerFd);
  }

  /** Chains served by the thread itself, and handed to the owner, so far. */
  counts(): { served: number; forwarded: number } {
    return { served: Atomics.load(this.ch.ctl, C.SERVED), forwarded: Atomics.load(this.ch.ctl, C.FORWARDED) };
  }
}

export class QueueThreads {
  constructor(readonly threads: readonly QueueThread[], readonly handles: SharedHandles) {}

  /**
   * End every thread. Needed before the process exits: a thread blocked in epoll_wait (a
   * native call) cannot be terminated by V8, and Node waits for its workers at exit.
   */
  stop(): void {
    for (const th of this.threads) {
      if (th.queue >= 0) continue; // the device loop took its ring back when it closed; never serving here
      th.command(Cmd.EXIT, undefined);
    }
  }

  /** Drop every thread's capabilities to `capabilities` (each thread has its own sets). */
  dropPrivileges(capabilities: readonly string[]): void {
    for (const th of this.threads) th.command(Cmd.DROP_PRIVILEGES, [...capabilities]);
  }
}

