// No log line of the daemon is lost, whatever its stderr is and however it ends. The real
// daemon is started by vfs-launch with its defaults (namespace sandbox, --seccomp kill) on a
// vhost-user socket; the test frontend connects, sends FUSE requests and either disconnects
// (the daemon then exits 0 by itself) or the daemon is sent SIGTERM while still connected.
// The device thread's "frontend connected" / "frontend disconnected" / "stop requested"
// lines are the ones that used to vanish: a worker thread's process.stderr is forwarded
// through the main thread's event loop, and the part not yet forwarded died with
// process.exit. Each sink is tried 10 times per ending, as the loss came and went:
//   - a socket read by this test (what child_process's 'pipe' is: a socketpair),
//   - a regular file,
//   - a real pipe(2) with its write end O_NONBLOCK (as Node's own stderr leaves a shared
//     pipe) and a 4 KiB capacity, read by a reader that sleeps first, with trace logging
//     so the daemon must wait for the pipe again and again.
import test from 'ava';
import type { ExecutionContext } from 'ava';
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { libc, check } from '../src/sys/libc.js';
import { launcherCommand, REPO } from './entry-points.js';
import { VirtioFsFrontend } from './frontend/virtio-fs.js';
import { FuseClient } from './frontend/fuse-client.js';
import * as F from './frontend/fuse-requests.js';

const LAUNCHER = launcherCommand();
const RUNS = 10;

const pipe2Raw = libc.func('int pipe2(_Out_ int *fds, int flags)');
const fcntlRaw = libc.func('int fcntl(int fd, int cmd, long arg)');
const O_CLOEXEC = 0o2000000;
const O_NONBLOCK = 0o4000;
const F_GETFL = 3;
const F_SETFL = 4;
const F_SETPIPE_SZ = 1031;
const F_GETPIPE_SZ = 1032;
/** The smallest pipe the kernel makes (one page). */
const SMALL_PIPE = 4096;
/** How long the slow reader sleeps before its first read. */
const SLOW_READER_SLEEP_S = 1;

type Sink = 'socket' | 'file' | 'slow-pipe';
type Ending = 'disconnect' | 'sigterm';

/** A close-on-exec pipe of SMALL_PIPE bytes whose write end is non-blocking: [read, write]. */
function smallNonBlockingPipe(): [number, number] {
  const fds = [0, 0];
  check(pipe2Raw(fds, O_CLOEXEC), 'pipe2');
  const [r, w] = [fds[0], fds[1]];
  check(fcntlRaw(w, F_SETPIPE_SZ, SMALL_PIPE), 'fcntl(F_SETPIPE_SZ)');
  const flags = check(fcntlRaw(w, F_GETFL, 0), 'fcntl(F_GETFL)');
  check(fcntlRaw(w, F_SETFL, flags | O_NONBLOCK), 'fcntl(F_SETFL)');
  return [r, w];
}

interface Run {
  output: string;
  code: number | null;
  signal: NodeJS.Signals | null;
  pipeSize?: number;
  /** ms from the slow reader's start to the frontend's last reply (the daemon logs each request before replying). */
  servedAfterMs: number;
}

/** Start vfs-launch with stderr on `sink`, serve `requests` GETATTRs, end as `ending`, and return all it logged. */
async function runOnce(sink: Sink, ending: Ending, requests: number, logLevel: string): Promise<Run> {
  let readerStarted = Date.now();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vfs-loglines-'));
  try {
    const share = path.join(dir, 'share');
    fs.mkdirSync(share);
    const sock = path.join(dir, 'vhost.sock');
    const outPath = path.join(dir, 'stderr');
    const args = [...LAUNCHER.slice(1), '--shared-dir', share, '--', '--socket-path', sock, '--log-level', logLevel];
    // The real daemon, not a stand-in some other test run may have named.
    const env: NodeJS.ProcessEnv = { ...process.env, HOME: os.tmpdir() };
    delete env.VFS_DAEMON_ENTRY;

    let launcher: ChildProcess;
    let sinkDone: Promise<void>;
    let socketText = '';
    let pipeSize: number | undefined;
    if (sink === 'socket') {
      launcher = spawn(LAUNCHER[0], args, { cwd: REPO, env, stdio: ['ignore', 'ignore', 'pipe'] });
      launcher.stderr?.on('data', (c: Buffer) => { socketText += c.toString(); });
      // 'close': every process holding the socket (launcher, unshare, daemon) has let go.
      sinkDone = new Promise((resolve) => launcher.on('close', () => resolve()));
    } else if (sink === 'file') {
      const fd = fs.openSync(outPath, 'w');
      launcher = spawn(LAUNCHER[0], args, { cwd: REPO, env, stdio: ['ignore', 'ignore', fd] });
      fs.closeSync(fd);
      sinkDone = new Promise((resolve) => launcher.on('close', () => resolve()));
    } else {
      const [r, w] = smallNonBlockingPipe();
      pipeSize = check(fcntlRaw(w, F_GETPIPE_SZ, 0), 'fcntl(F_GETPIPE_SZ)');
      const outFd = fs.openSync(outPath, 'w');
      readerStarted = Date.now();
      const reader = spawn('/bin/sh', ['-c', `sleep ${SLOW_READER_SLEEP_S}; exec cat`], { stdio: [r, outFd, 'inherit'] });
      launcher = spawn(LAUNCHER[0], args, { cwd: REPO, env, stdio: ['ignore', 'ignore', w] });
      fs.closeSync(r);
      fs.closeSync(w);
      fs.closeSync(outFd);
      // cat ends at EOF: when the last holder of the write end (the daemon) is gone.
      sinkDone = new Promise((resolve) => reader.on('close', () => resolve()));
    }
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
      launcher.on('exit', (code, signal) => resolve({ code, signal }));
    });
    let running = true;
    void exited.then(() => { running = false; });

    const deadline = Date.now() + 30_000;
    while (!fs.existsSync(sock)) {
      if (!running || Date.now() > deadline) {
        launcher.kill('SIGKILL');
        await sinkDone;
        throw new Error(`the daemon did not listen: ${socketText}${fs.existsSync(outPath) ? fs.readFileSync(outPath, 'utf8') : ''}`);
      }
      await new Promise((res) => setTimeout(res, 20));
    }
    let servedAfterMs = 0;
    const fe = VirtioFsFrontend.open({ socketPath: sock, timeoutMs: 20_000 });
    try {
      const c = new FuseClient(fe);
      c.doInit();
      for (let i = 0; i < requests; i++) c.getattr(F.ROOT_ID);
      servedAfterMs = Date.now() - readerStarted;
      if (ending === 'sigterm') {
        // The launcher forwards it to the daemon, which stops while the frontend is connected.
        launcher.kill('SIGTERM');
        await exited;
      }
    } finally {
      fe.close();
    }
    const timer = setTimeout(() => launcher.kill('SIGKILL'), 30_000);
    const { code, signal } = await exited;
    await sinkDone;
    clearTimeout(timer);
    const output = sink === 'socket' ? socketText : fs.readFileSync(outPath, 'utf8');
    return { output, code, signal, pipeSize, servedAfterMs };
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

/** What must be in the output, in this order, for each ending. */
const EXPECTED: Record<Ending, RegExp[]> = {
  disconnect: [/ INFO daemon: listening on /, / INFO vhost: waiting for a vhost-user frontend/,
    / INFO vhost: frontend connected, serving requests/, / INFO vhost: frontend disconnected; shutting down/],
  sigterm: [/ INFO daemon: listening on /, / INFO vhost: waiting for a vhost-user frontend/,
    // The device loop runs on the main thread and wakes on libuv's signal pipe: it says it
    // stops first, then the event loop runs the handler that names the signal.
    / INFO vhost: frontend connected, serving requests/, / INFO vhost: stop requested/, / INFO daemon: SIGTERM: stopping/],
};

/** Every line whole: a logger line or a launcher line, never two run together or cut. */
const LINE = /^(\[\d{4}-\d\d-\d\dT[\d:.]+Z\] (ERROR|WARN|INFO|DEBUG|TRACE) [\w-]+: .*|vfs-launch: .*)$/;

/** The problems found in one run's output (empty when it is complete and in order). */
function check1(run: Run, ending: Ending, requests: number, traced: boolean): string[] {
  const problems: string[] = [];
  if (run.code !== 0) problems.push(`exit ${run.code ?? run.signal}`);
  const lines = run.output.split('\n');
  if (lines.pop() !== '') problems.push('output does not end with a newline');
  for (const l of lines) if (!LINE.test(l)) problems.push(`malformed line ${JSON.stringify(l)}`);
  let at = -1;
  for (const want of EXPECTED[ending]) {
    const i = lines.findIndex((l, k) => k > at && want.test(l));
    if (i < 0) problems.push(`missing (in order) ${String(want)}`);
    else at = i;
  }
  if (traced) {
    // The device thread's per-request trace lines: all there, in request order.
    const uniques = lines.map((l) => / TRACE fs: GETATTR unique (\d+) /.exec(l)).filter((m) => m !== null).map((m) => Number(m[1]));
    if (uniques.length !== requests) problems.push(`${uniques.length} GETATTR trace lines of ${requests}`);
    if (uniques.some((u, i) => i > 0 && u <= uniques[i - 1])) problems.push('GETATTR trace lines out of order');
  }
  return problems;
}

function sinkTest(sink: Sink, ending: Ending): void {
  test.serial(`every log line reaches stderr as ${sink}, ending by ${ending} (${RUNS} runs)`, async (t: ExecutionContext) => {
    const traced = sink === 'slow-pipe';
    // Enough trace output to fill the small pipe several times over while its reader sleeps.
    const requests = traced ? 300 : 3;
    const failures: string[] = [];
    for (let i = 0; i < RUNS; i++) {
      const run = await runOnce(sink, ending, requests, traced ? 'trace' : 'info');
      const problems = check1(run, ending, requests, traced);
      if (traced) {
        // What makes this case the one it claims to be: a one-page pipe, filled several
        // times over, and a daemon that had to wait for the sleeping reader before it could
        // answer the last request (its fd 2 said EAGAIN and it waited, not dropped or queued).
        if (run.pipeSize !== SMALL_PIPE) problems.push(`pipe of ${run.pipeSize} bytes, not ${SMALL_PIPE}`);
        const bytes = Buffer.byteLength(run.output);
        if (bytes <= 4 * SMALL_PIPE) problems.push(`only ${bytes} bytes arrived: the pipe was not filled several times`);
        if (run.servedAfterMs < SLOW_READER_SLEEP_S * 1000 - 100) problems.push(`served ${run.servedAfterMs} ms after the reader started: the daemon did not wait for the pipe`);
      }
      if (problems.length > 0) failures.push(`run ${i + 1}: ${problems.join('; ')}\n${run.output}`);
    }
    t.deepEqual(failures, [], `${failures.length} of ${RUNS} runs lost or garbled lines`);
  });
}

for (const sink of ['socket', 'file', 'slow-pipe'] as const) {
  for (const ending of ['disconnect', 'sigterm'] as const) sinkTest(sink, ending);
}
