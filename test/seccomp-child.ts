// Test-only child for test/seccomp-kernel.test.ts: starts a worker thread (so TSYNC has a
// thread to synchronise), compiles the project's policies for this machine, installs them
// in the given mode, then does one thing and reports on stdout (one JSON line):
//   status    - Seccomp/Seccomp_filters/NoNewPrivs of every thread, from /proc/self/task
//   forbidden - syslog(SYSLOG_ACTION_SIZE_BUFFER), which no policy allows
//   io_uring  - io_uring_setup(1, params), which the policy refuses with ENOSYS
//   none      - nothing (with mode none: checks that nothing was installed)
//   tsync     - a second worker first installs a filter of its own without TSYNC, so the
//               TSYNC install must fail naming that worker's thread id
//   node --import tsx test/seccomp-child.ts MODE ACTION [POLICY...]
import koffi from 'koffi';
import { readFileSync, readdirSync } from 'node:fs';
import { Worker } from 'node:worker_threads';
import type { SeccompMode } from '../src/sandbox/seccomp/index.js';
import { installSeccomp, prepareSeccomp } from '../src/sandbox/seccomp/index.js';
import { libc } from '../src/sys/libc.js';

const [mode, action, ...files] = process.argv.slice(2) as [SeccompMode, string, ...string[]];
const syscall = libc.func('long syscall(long number, long a, long b, long c)');
const NR: Record<string, { syslog: number; io_uring_setup: number; exit_group: number }> = {
  x64: { syslog: 103, io_uring_setup: 425, exit_group: 231 },
  arm64: { syslog: 116, io_uring_setup: 425, exit_group: 94 },
};

/**
 * End the process at once with exit_group(2), skipping Node's teardown: run through tsx, a
 * cold transform cache leaves an esbuild service child whose exit during that teardown makes
 * libuv call wait4, which the policy kills for (seen in CI as a flaky SIGSYS).
 */
function exitNow(code: number): never {
  syscall(NR[process.arch]!.exit_group, code, 0, 0);
  throw new Error('exit_group returned');
}

// Everything read after the filter must already be loaded: the status action's fs calls are
// allowed only in log mode, where the test uses it.
// The tsync worker: its own one-instruction ALLOW filter (no TSYNC) on its own thread only.
const OWN_FILTER = `
const koffi = require(${JSON.stringify(import.meta.resolve('koffi').replace('file://', ''))});
const { parentPort } = require('node:worker_threads');
const libc = koffi.load('libc.so.6');
const prctl = libc.func('int prctl(int, unsigned long, unsigned long, unsigned long, unsigned long)');
const syscall = libc.func('long syscall(long, ...)');
const gettid = libc.func('int gettid()');
const Fprog = koffi.struct('child_fprog', { len: 'uint16_t', filter: 'void *' });
const insn = Buffer.alloc(8); insn.writeUInt16LE(0x06, 0); insn.writeUInt32LE(0x7fff0000, 4);
prctl(38, 1, 0, 0, 0);
const r = syscall(process.arch === 'x64' ? 317 : 277, 'unsigned int', 1, 'unsigned int', 0, koffi.pointer(Fprog), { len: 1, filter: insn });
parentPort.postMessage({ tid: gettid(), r: Number(r) });
setInterval(() => {}, 1000);
`;

async function tsyncConflict(): Promise<unknown> {
  const w = new Worker(OWN_FILTER, { eval: true });
  const own = await new Promise<{ tid: number; r: number }>((res) => w.once('message', res));
  try {
    installSeccomp(prepareSeccomp(mode, files.length > 0 ? files : undefined));
    return { own, error: null };
  } catch (e) {
    return { own, error: (e as Error).name, tid: (e as { tid?: number }).tid, message: (e as Error).message };
  }
}

const worker = new Worker('setInterval(() => {}, 1000)', { eval: true });
worker.once('online', async () => {
  if (action === 'tsync') {
    process.stdout.write(JSON.stringify({ report: null, out: await tsyncConflict() }) + '\n');
    exitNow(0);
  }
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
  exitNow(0);
});
