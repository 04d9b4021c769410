// Measurement workload for policies/node-runtime.json: the Node runtime as the daemon uses it
// after its sandbox stage, with no file serving. A worker thread is started and has imported
// koffi before the filter goes in (as the daemon's device worker does); then a pass-everything
// filter is installed with TSYNC only to mark the point in the strace output from which
// syscalls count; then the main thread runs timers, logging, message passing and garbage
// collection while the worker blocks in epoll_wait on an eventfd; SIGTERM stops both through
// the eventfd and the process exits 0, like the daemon's shutdown path.
//   strace -f -o OUT node --import tsx test/seccomp-runtime-workload.ts
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';
import { EPOLLIN, Epoll, eventfd, eventfdRead, eventfdWrite } from '../src/sys/event-calls.js';
import { SECCOMP_FILTER_FLAG_TSYNC, seccompSetModeFilter, setNoNewPrivs } from '../src/sys/seccomp-calls.js';
import { BPF_K, BPF_RET, SECCOMP_RET_ALLOW, encodeProgram, stmt } from '../src/sandbox/seccomp/bpf.js';

if (isMainThread) {
  const stopFd = eventfd();
  // Node 20 does not carry tsx's loader into workers: register it in the worker first.
  const tsxApi = import.meta.resolve('tsx/esm/api');
  const worker = new Worker(
    `import(${JSON.stringify(tsxApi)}).then((m) => { m.register(); return import(${JSON.stringify(import.meta.url)}); })`,
    { eval: true, workerData: { stopFd } });
  worker.once('message', () => {
    setNoNewPrivs();
    seccompSetModeFilter(encodeProgram([stmt(BPF_RET | BPF_K, SECCOMP_RET_ALLOW)]), SECCOMP_FILTER_FLAG_TSYNC);
    let n = 0;
    const keep: number[][] = [];
    const bufs: Buffer[] = [];
    const timer = setInterval(() => {
      n++;
      keep.push(new Array(200_000).fill(n));
      if (keep.length > 20) keep.splice(0, 10);
      // Buffers of growing sizes come from malloc (brk or mmap depending on size).
      bufs.push(Buffer.alloc((n % 64) * 65536 + 1000, n));
      if (bufs.length > 30) bufs.splice(0, 15);
      JSON.parse(JSON.stringify({ n, s: 'x'.repeat(n % 1000) }));
      worker.postMessage({ tick: n });
      process.stderr.write(`tick ${n}\n`);
    }, 5);
    process.on('SIGTERM', () => {
      clearInterval(timer);
      eventfdWrite(stopFd, 1n);
    });
    worker.once('exit', (code) => process.exit(code));
  });
} else {
  const { stopFd } = workerData as { stopFd: number };
  const ep = new Epoll();
  ep.add(stopFd, 1, EPOLLIN);
  parentPort!.on('message', () => { /* ticks keep the message port busy */ });
  parentPort!.postMessage('ready');
  // Let the main thread's ticks through between waits, as the device loop's stop check does.
  const poll = (): void => {
    if (ep.wait(10) > 0) {
      eventfdRead(stopFd);
      process.exit(0);
    }
    setImmediate(poll);
  };
  poll();
}
