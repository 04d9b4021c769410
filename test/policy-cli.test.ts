// The audit commands as a user runs them (child processes of the test CLI entry): check,
// compile (loaded by bubblewrap, which must kill the forbidden mkdir), dump, explain, diff,
// and record's strace parsing.
import test from 'ava';
import { execa } from 'execa';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { decodeProgram } from '../src/sandbox/seccomp/bpf.js';
import { parseStrace, recordingToPolicy } from '../src/sandbox/seccomp/record.js';
import { parsePolicy } from '../src/sandbox/seccomp/policy.js';

const CLI = fileURLToPath(new URL('./policy-cli.ts', import.meta.url));
const ROOT = fileURLToPath(new URL('..', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'vfs-policy-cli-'));
test.after.always(() => rmSync(dir, { recursive: true, force: true }));

const run = (...args: string[]) => execa(process.execPath, ['--import', 'tsx', CLI, 'policy', ...args], { reject: false, cwd: ROOT });

const NO_MKDIR = JSON.stringify({
  defaultAction: 'SCMP_ACT_ALLOW',
  syscalls: [{ names: ['mkdir', 'mkdirat'], action: 'SCMP_ACT_KILL_PROCESS', comment: 'the forbidden call of this test' }],
}, null, 2);

test('check: the project policies pass; a broken file fails with its position, exit 1', async (t) => {
  const ok = await run('check');
  t.is(ok.exitCode, 0, ok.stderr);
  t.regex(ok.stdout, /^OK .*node-runtime\.json, .*file-server\.json: \d+ rules; x86_64 \d+ instructions, \d+ syscalls with rules; aarch64 \d+ instructions/);
  const bad = join(dir, 'bad.json');
  writeFileSync(bad, '{\n  "defaultAction": "SCMP_ACT_KILL_PROCESS",\n  "syscalls": [\n    { "names": ["opneat"], "action": "SCMP_ACT_ALLOW" },\n' +
    '    { "names": ["read"], "action": "SCMP_ACT_ALLOW", "args": [{ "index": 7, "value": 0, "op": "SCMP_CMP_EQ" }] }\n  ]\n}\n');
  const r = await run('check', bad);
  t.is(r.exitCode, 1);
  t.is(r.stderr.trim(), `${bad}:4: syscalls[0]: unknown syscall "opneat" (not in the x86_64 or aarch64 table)\n` +
    `${bad}:5: syscalls[1]: args[0]: index 7 out of range 0..5 (syscalls have six arguments)`);
});

test('compile writes struct sock_filter records that bwrap --seccomp loads and enforces', async (t) => {
  const pol = join(dir, 'no-mkdir.json');
  writeFileSync(pol, NO_MKDIR);
  const out = join(dir, 'no-mkdir.bpf');
  const c = await run('compile', pol, '--arch', 'x86_64', '-o', out);
  t.is(c.exitCode, 0, c.stderr);
  const bytes = readFileSync(out);
  t.regex(c.stderr, new RegExp(`no-mkdir\\.bpf: ${bytes.length / 8} instructions \\(${bytes.length} bytes\\) for x86_64`));
  t.is(decodeProgram(bytes)[0]!.k, 4, 'starts by loading seccomp_data.arch');
  if (process.arch !== 'x64') return;
  if (!existsSync('/usr/bin/bwrap')) execFileSync('apt-get', ['install', '-y', 'bubblewrap'], { stdio: 'ignore' });
  const target = join(dir, 'made-by-bwrap');
  const bw = (cmd: string[]) => execa('bash', ['-c', 'exec bwrap --bind / / --seccomp 3 "$@" 3<"$0"', out, ...cmd], { reject: false });
  const killed = await bw(['mkdir', target]);
  t.is(killed.exitCode, 128 + 31, 'mkdir killed by SIGSYS inside bwrap');
  t.false(existsSync(target));
  const fine = await bw(['touch', `${target}-file`]);
  t.is(fine.exitCode, 0, fine.stderr);
  t.true(existsSync(`${target}-file`));
});

test('dump disassembles a profile and a raw BPF file, naming syscalls', async (t) => {
  const d = await run('dump', 'policies/file-server.json', '--arch', 'aarch64', '--mode', 'kill');
  t.is(d.exitCode, 0, d.stderr);
  t.regex(d.stdout, /; policies\/file-server\.json for aarch64: \d+ instructions/);
  t.regex(d.stdout, /arch == AUDIT_ARCH_AARCH64/);
  t.notRegex(d.stdout, /x32 ABI/);
  t.regex(d.stdout, /ret +#0x80000000 +; KILL_PROCESS: default \(--seccomp kill\)/);
  const both = await run('dump', 'policies/node-runtime.json,policies/file-server.json', '--arch', 'x86_64', '--mode', 'log');
  t.regex(both.stdout, /; policies\/node-runtime\.json \+ policies\/file-server\.json for x86_64: \d+ instructions/);
  t.regex(both.stdout, /ret +#0x7ffc0000 +; LOG: default \(--seccomp log\)/);
  const out = join(dir, 'rt.bpf');
  t.is((await run('compile', 'policies/node-runtime.json', '--arch', 'x86_64', '-o', out)).exitCode, 0);
  const raw = await run('dump', out);
  t.is(raw.exitCode, 0, raw.stderr);
  t.regex(raw.stdout, /nr >= \d+ \((read|write|mmap|futex|exit|brk|madvise)\w*\)/);
  t.regex(raw.stdout, /ret +#0x50026 +; ERRNO\(38\)/);
});

test('explain names the deciding rule and the emulated verdict', async (t) => {
  const e = await run('explain', 'policies/node-runtime.json', 'io_uring_setup', '--arch', 'x86_64');
  t.is(e.exitCode, 0, e.stderr);
  t.regex(e.stdout, /^io_uring_setup \(x86_64 nr 425\)/);
  t.regex(e.stdout, /rule: +policies\/node-runtime\.json:\d+ syscalls\[\d+\] -> ERRNO\(38\)/);
  t.regex(e.stdout, /bpf: +ERRNO\(38\) from ret at \d{4}/);
  t.regex(e.stdout, /policy and compiled filter agree/);
  const pol = join(dir, 'ioctl.json');
  writeFileSync(pol, JSON.stringify({ defaultAction: 'SCMP_ACT_ERRNO', syscalls: [{ names: ['ioctl'], action: 'SCMP_ACT_ALLOW',
    comment: 'TCGETS only', args: [{ index: 1, value: 0x5401, op: 'SCMP_CMP_EQ' }] }] }));
  const yes = await run('explain', pol, 'ioctl', '--arch', 'aarch64', '--args', '1,0x5401');
  t.regex(yes.stdout, /-> ALLOW\n +when arg1 == 0x5401\n +"TCGETS only"/);
  const no = await run('explain', pol, 'ioctl', '--arch', 'aarch64', '--args', '1,0x5402');
  t.regex(no.stdout, /none matches -> default ERRNO\(1\)/);
  t.regex(no.stdout, /bpf: +ERRNO\(1\) from ret at \d{4} \(ioctl: no rule matched, default \(SCMP_ACT_ERRNO\(1\)\)\)/);
  const unknown = await run('explain', pol, 'mkdir', '--arch', 'aarch64');
  t.is(unknown.exitCode, 1);
  t.regex(unknown.stderr, /unknown syscall "mkdir" on aarch64/);
});

test('diff reports effective changes only', async (t) => {
  const a = join(dir, 'a.json');
  const b = join(dir, 'b.json');
  writeFileSync(a, JSON.stringify({ defaultAction: 'SCMP_ACT_KILL_PROCESS', syscalls: [
    { names: ['read', 'write'], action: 'SCMP_ACT_ALLOW' }, { names: ['ioctl'], action: 'SCMP_ACT_ALLOW' }] }));
  writeFileSync(b, JSON.stringify({ defaultAction: 'SCMP_ACT_KILL_PROCESS', syscalls: [
    { names: ['write'], action: 'SCMP_ACT_ALLOW' }, { names: ['read'], action: 'SCMP_ACT_ALLOW' },
    { names: ['ioctl'], action: 'SCMP_ACT_ALLOW', args: [{ index: 1, value: 21505, op: 'SCMP_CMP_EQ' }] },
    { names: ['openat'], action: 'SCMP_ACT_ERRNO', errnoRet: 'EACCES' }] }));
  const d = await run('diff', a, b);
  t.is(d.exitCode, 1);
  t.deepEqual(d.stdout.trim().split('\n').map((l) => l.replace(/ +/g, ' ')), [
    '~ ioctl [x86_64,aarch64] SCMP_ACT_ALLOW -> SCMP_ACT_ALLOW if arg1 == 0x5401; else default',
    '+ openat [x86_64,aarch64] default -> SCMP_ACT_ERRNO(13)',
  ]);
  const same = await run('diff', a, a);
  t.is(same.exitCode, 0);
  t.is(same.stdout.trim(), 'no difference in effective decisions');
});

test('record: strace output counts from each process\'s own filter install, threads included', (t) => {
  const trace = [
    '100 execve("/usr/bin/node", ["node"], 0x0 /* 1 var */) = 0',
    '100 openat(AT_FDCWD, "/etc/ld.so.cache", O_RDONLY|O_CLOEXEC) = 3',
    '100 clone3({flags=CLONE_VM|CLONE_FS|CLONE_FILES|CLONE_SIGHAND|CLONE_THREAD|CLONE_SYSVSEM, child_tid=0x1} <unfinished ...>',
    '101 futex(0x1, FUTEX_WAIT, 0, NULL <unfinished ...>',
    '100 <... clone3 resumed> => {parent_tid=[101]}, 88) = 101',
    '200 read(0, "", 1) = 0',
    '100 seccomp(SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, {len=81, filter=0x1}) = 0',
    '101 <... futex resumed>) = 0',
    '101 mmap(NULL, 4096, PROT_READ, MAP_PRIVATE, 3, 0) = 0x7f0000000000',
    '200 write(1, "x", 1) = 1',
    '100 epoll_wait(5, [], 64, 10) = 0',
    '100 epoll_wait(5, [], 64, 10) = 0',
    '100 +++ exited with 0 +++',
  ].join('\n');
  const r = parseStrace(trace, 'x86_64', true);
  t.true(r.sawSeccomp);
  t.deepEqual([...r.counts].sort(), [['epoll_wait', 2], ['mmap', 1]]);
  const frag = parsePolicy(recordingToPolicy(r, 'x86_64', 'a test'), 'frag.json');
  t.deepEqual(frag.rules.map((x) => x.names[0]), ['epoll_wait', 'mmap']);
  t.regex(frag.rules[0]!.comment!, /recorded: 2 calls during a test/);
  t.deepEqual([...parseStrace(trace, 'x86_64', false).counts.keys()].sort(),
    ['clone3', 'epoll_wait', 'execve', 'futex', 'mmap', 'openat', 'read', 'seccomp', 'write']);
});
