// The compiled project policy against the real kernel, in child processes: it loads with
// TSYNC on every thread (Seccomp 2, one filter, no_new_privs), a syscall outside the policy
// kills the process with SIGSYS under kill, raises SIGSYS under trap, is let through under
// log, io_uring_setup gets ENOSYS in every mode, and none installs nothing.
import test from 'ava';
import { execa } from 'execa';
import { fileURLToPath } from 'node:url';

const CHILD = fileURLToPath(new URL('./seccomp-child.ts', import.meta.url));

async function child(mode: string, action: string): Promise<{ signal?: string; exitCode?: number; json?: {
  report: { installed: boolean; mode: string; length?: number }; out: unknown; }; stderr: string; }> {
  const r = await execa(process.execPath, ['--import', 'tsx', CHILD, mode, action], { reject: false, timeout: 60000 });
  const line = r.stdout.split('\n').find((l) => l.startsWith('{'));
  return { signal: r.signal, exitCode: r.exitCode, json: line ? JSON.parse(line) : undefined, stderr: r.stderr };
}

test('the filter loads with TSYNC: every thread shows Seccomp 2, one filter, NoNewPrivs', async (t) => {
  const r = await child('log', 'status');
  t.is(r.exitCode, 0, r.stderr);
  t.true(r.json!.report.installed);
  const threads = r.json!.out as { tid: number; seccomp: string; filters: string; nnp: string }[];
  t.true(threads.length >= 5, `${threads.length} threads`);
  for (const th of threads) t.deepEqual([th.seccomp, th.filters, th.nnp], ['2', '1', '1'], `thread ${th.tid}`);
});

test('kill: a syscall outside the policy kills the process with SIGSYS', async (t) => {
  const r = await child('kill', 'forbidden');
  t.is(r.signal, 'SIGSYS');
  t.is(r.json, undefined);
});

test('trap: a syscall outside the policy raises SIGSYS', async (t) => {
  const r = await child('trap', 'forbidden');
  t.is(r.signal, 'SIGSYS');
});

test('log: the process survives a syscall outside the policy and gets its result', async (t) => {
  const r = await child('log', 'forbidden');
  t.is(r.exitCode, 0, r.stderr);
  t.true((r.json!.out as number) > 0, 'syslog(SIZE_BUFFER) returned the buffer size');
});

test('io_uring_setup is refused with ENOSYS under kill, and the process goes on', async (t) => {
  for (const mode of ['kill', 'trap', 'log']) {
    const r = await child(mode, 'io_uring');
    t.is(r.exitCode, 0, `${mode}: ${r.stderr}`);
    t.deepEqual(r.json!.out, { ret: -1, errno: 38 });
  }
});

test('none installs nothing and says so', async (t) => {
  const r = await child('none', 'status');
  t.is(r.exitCode, 0);
  t.false(r.json!.report.installed);
  t.regex(r.stderr, /--seccomp none: no seccomp filter installed/);
  for (const th of r.json!.out as { seccomp: string }[]) t.is(th.seccomp, '0');
});

test('the kernel audit record of the kill names the syscall', async (t) => {
  const { describeSeccompKill, seccompAuditRecords } = await import('../src/sandbox/seccomp/audit.js');
  const started = Date.now() - 1000;
  const r = execa(process.execPath, ['--import', 'tsx', CHILD, 'kill', 'forbidden'], { reject: false, timeout: 60000 });
  const pid = r.pid!;
  const done = await r;
  t.is(done.signal, 'SIGSYS');
  const want = process.arch === 'x64' ? 'syscall 103 (syslog)' : 'syscall 116 (syslog)';
  // The record can reach the log a moment after the process is reaped.
  let got: string | undefined;
  for (let i = 0; i < 50 && got === undefined; i++) {
    got = describeSeccompKill(pid);
    if (got === undefined) await new Promise((res) => setTimeout(res, 100));
  }
  t.is(got, want);
  const rec = seccompAuditRecords(pid)[0];
  t.is(rec?.action, 'KILL_PROCESS');
  t.is(rec?.comm, 'node');
  t.true(rec!.timeMs >= started);
  t.true(seccompAuditRecords({ sinceMs: started }).some((x) => x.pid === pid));
});

test('a thread TSYNC cannot synchronise makes the install fail, naming its thread id', async (t) => {
  const r = await child('kill', 'tsync');
  t.is(r.exitCode, 0, r.stderr);
  const out = r.json!.out as { own: { tid: number; r: number }; error: string; tid: number; message: string };
  t.is(out.own.r, 0, 'the worker installed its own filter');
  t.is(out.error, 'SeccompTsyncError');
  t.is(out.tid, out.own.tid);
  t.regex(out.message, new RegExp(`thread ${out.own.tid} cannot be synchronised`));
});
