// Test-only child for test/seccomp-kernel.test.ts: starts a worker thread (so TSYNC has a
// thread to synchronise), compiles the project's policies for this machine, installs them
// in the given mode, then does one thing and reports on stdout (one JSON line):
//   status    - Seccomp/Seccomp_filters/NoNewPrivs of every thread, from /proc/self/task
//   forbidden - syslog(SYSLOG_ACTION_SIZE_BUFFER), which no policy allows
//   io_uring  - io_uring_setup(1, params), which the policy refuses with ENOSYS
//   none      - nothing (with mode none: checks that nothing was installed)
//   node --import tsx test/seccomp-child.ts MODE ACTION [POLICY...]
import koffi from 'koffi';
import { readFileSync, readdirSync } from 'node:fs';
import { Worker } from 'node:worker_threads';
import type { SeccompMode } from '../src/sandbox/seccomp/index.js';
import { installSeccomp, prepareSeccomp } from '../src/sandbox/seccomp/index.js';
import { libc } from '../src/sys/libc.js';

const [mode, action, ...files] = process.argv.slice(2) as [SeccompMode, string, ...string[]];
const syscall = libc.func('long syscall(long number, long a, long b, long c)');
const NR: Record<string, { syslog: number; io_uring_setup: number }> = {
  x64: { syslog: 103, io_uring_setup: 425 },
  arm64: { syslog: 116, io_uring_setup: 425 },
};

// Everything read after the filter must already be loaded: the status action's fs calls are
// allowed only in log mode, where the test uses it.
const worker = new Worker('setInterval(() => {}, 1000)', { eval: true });
worker.once('online', () => {
  const prepared = prepareSeccomp(mode, files.length > 0 ? files : undefined);
  const report = installSeccomp(prepared);
  const nr = NR[process.arch]!;
  let out: unknown;
  if (action === 'status') {
    out = readdirSync('/proc/self/task').map((tid) => {
      const s = readFileSync(`/proc/self/task/${tid}/status`, 'utf8');
      const field = (n: string): string => new RegExp(`^${n}:\\s*(\\S+)`, 'm').exec(s)?.[1] ?? '';
      return { tid: Number(tid), seccomp: field('Seccomp'), filters: field('Seccomp_filters'), nnp: field('NoNewPrivs') };
    });
  } else if (action === 'forbidden') {
    out = Number(syscall(nr.syslog, 10, 0, 0));
  } else if (action === 'io_uring') {
    const r = Number(syscall(nr.io_uring_setup, 1, 0, 0));
    out = { ret: r, errno: koffi.errno() };
  }
  process.stdout.write(JSON.stringify({ report, out }) + '\n');
  process.exit(0);
});
