// Syscall coverage of the daemon's policy: every FFI binding (src/sys) and node:fs call the
// daemon can make after its seccomp filter is installed must be allowed, on x86_64 and
// aarch64, for the arguments it passes. A gap here is a guest request that kills the daemon
// with SIGSYS (fchmod on a handle was one). Also checked: the binding table is complete
// (every export of src/sys has a row; every src/sys import and fs.*Sync call of a module
// that runs after the filter names a serving-phase row), and the check fails, naming the
// binding, the syscall and the policy file, when a policy lacks a call.
import test from 'ava';
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadPolicy } from '../src/sandbox/seccomp/index.js';
import { formatCoverage, syscallCoverage } from '../src/sandbox/seccomp/coverage.js';
import { SERVING_MODULES, SYSCALL_MAP, bindingEntry } from '../src/sys/syscall-map.js';
import { launcherCommand } from './entry-points.js';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const POLICIES = path.join(REPO, 'policies');

test('every serving binding is allowed by policies/ on x86_64 and aarch64', (t) => {
  const rows = syscallCoverage(loadPolicy());
  t.log(formatCoverage(rows).join('\n'));
  const bad = rows.filter((r) => !r.ok);
  t.deepEqual(bad.map((r) => `${r.arch} ${r.binding} ${r.syscall}: ${r.problem}`), []);
  t.true(rows.some((r) => r.binding === 'file-calls.fchmod' && r.arch === 'x86_64'), 'fchmod on a handle is in the table');
  t.true(rows.some((r) => r.arch === 'aarch64'));
});

test('every function src/sys exports has a row in the binding table', async (t) => {
  const missing: string[] = [];
  for (const file of fs.readdirSync(path.join(REPO, 'src/sys')).filter((f) => f.endsWith('.ts') && f !== 'syscall-map.ts')) {
    const mod = (await import(path.join(REPO, 'src/sys', file))) as Record<string, unknown>;
    const name = file.replace(/\.ts$/, '');
    for (const [key, value] of Object.entries(mod)) {
      if (typeof value !== 'function') continue;
      const proto = (value as { prototype?: unknown }).prototype;
      if (proto instanceof Error) continue; // error classes make no syscalls
      if (bindingEntry(name, key) === undefined) missing.push(`${name}.${key}`);
    }
  }
  t.deepEqual(missing, [], 'add them to src/sys/syscall-map.ts with their syscalls and phase');
});

function servingFiles(): string[] {
  const out: string[] = [];
  for (const pattern of SERVING_MODULES) {
    if (pattern.endsWith('/*')) {
      const dir = path.join(REPO, 'src', pattern.slice(0, -2));
      for (const f of fs.readdirSync(dir).filter((x) => x.endsWith('.ts'))) out.push(path.join(dir, f));
    } else {
      out.push(path.join(REPO, 'src', `${pattern}.ts`));
    }
  }
  return out;
}

test('modules that run after the filter use only serving-phase bindings', (t) => {
  const problems: string[] = [];
  let imports = 0;
  for (const file of servingFiles()) {
    const text = fs.readFileSync(file, 'utf8');
    const rel = path.relative(REPO, file);
    for (const m of text.matchAll(/import\s*(?:type\s*)?\{([^}]*)\}\s*from\s*'(?:\.\.\/)+sys\/([a-z-]+)\.js'/g)) {
      if (/^import\s+type/.test(m[0])) continue;
      for (const raw of m[1].split(',')) {
        const name = raw.trim().split(/\s+as\s+/)[0].trim();
        if (name === '' || name.startsWith('type ') || /^[A-Z][A-Z0-9_]*$/.test(name)) continue; // constants
        const e = bindingEntry(m[2], name);
        if (e === undefined) {
          // Classes and constants that are not functions are fine only if they hold no syscall.
          if (/^[A-Z]/.test(name) && SYSCALL_MAP.every((x) => x.binding !== name)) continue;
          problems.push(`${rel}: ${m[2]}.${name} has no row in src/sys/syscall-map.ts`);
        } else if (e.phase !== 'serving') {
          problems.push(`${rel}: ${m[2]}.${name} is marked '${e.phase}' but this module runs after the filter`);
        }
        imports++;
      }
    }
    for (const m of text.matchAll(/\bfs\.([a-zA-Z]+Sync)\(/g)) {
      const e = bindingEntry('node:fs', m[1]);
      if (e === undefined || e.phase !== 'serving') problems.push(`${rel}: fs.${m[1]} has no serving node:fs row in src/sys/syscall-map.ts`);
    }
  }
  t.true(imports > 20, `found ${imports} imports`);
  t.deepEqual(problems, []);
});

test('the check fails naming the binding, the syscall and the policy when a call is missing', (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vfs-cov-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const server = JSON.parse(fs.readFileSync(path.join(POLICIES, 'file-server.json'), 'utf8')) as { syscalls: { names: string[]; args?: unknown[] }[] };
  server.syscalls = server.syscalls.filter((r) => !r.names.includes('fchmod'));
  // fcntl only for F_GETFL: the /dev/fuse loop's F_SETFL would be killed.
  const runtime = JSON.parse(fs.readFileSync(path.join(POLICIES, 'node-runtime.json'), 'utf8')) as { syscalls: { names: string[]; args?: unknown[] }[] };
  for (const p of [server, runtime]) {
    for (const r of p.syscalls) if (r.names.includes('fcntl')) r.args = [{ index: 1, value: 3, op: 'SCMP_CMP_EQ' }];
  }
  const a = path.join(dir, 'node-runtime.json');
  const b = path.join(dir, 'file-server.json');
  fs.writeFileSync(a, JSON.stringify(runtime, null, 1));
  fs.writeFileSync(b, JSON.stringify(server, null, 1));
  const [cmd, ...pre] = launcherCommand();
  const r = spawnSync(cmd, [...pre, 'policy', 'coverage', `${a},${b}`, '--failures'], { encoding: 'utf8', cwd: REPO });
  t.is(r.status, 1, r.stdout + r.stderr);
  t.regex(r.stdout, /x86_64\s+file-calls\.fchmod\s+fchmod .*KILL_PROCESS.*fchmod is killed by the default action of .*file-server\.json/);
  t.regex(r.stdout, /aarch64\s+file-calls\.fchmod\s+fchmod/);
  t.regex(r.stdout, /fuse-dev-calls\.setNonBlocking\s+fcntl\s+arg1=0x4\s+KILL_PROCESS/);
  t.notRegex(r.stdout, /arg1=0x3\s+KILL/);
  t.regex(r.stderr, /not covered/);
  // An argument filter the binding does not pin down is reported as such, not as allowed.
  runtime.syscalls = runtime.syscalls.map((x) => (x.names.includes('close') ? { ...x, args: [{ index: 0, value: 100, op: 'SCMP_CMP_LT' }] } : x));
  server.syscalls = server.syscalls.filter((x) => !x.names.includes('close'));
  fs.writeFileSync(a, JSON.stringify(runtime, null, 1));
  fs.writeFileSync(b, JSON.stringify(server, null, 1));
  const r2 = spawnSync(cmd, [...pre, 'policy', 'coverage', `${a},${b}`, '--failures', '--arch', 'x86_64'], { encoding: 'utf8', cwd: REPO });
  t.is(r2.status, 1);
  t.regex(r2.stdout, /file-calls\.close\s+close .*allowed only when arg0 < 0x64/);
});

test('vfs-launch policy coverage passes on the shipped policies and prints the table', (t) => {
  const [cmd, ...pre] = launcherCommand();
  const out = execFileSync(cmd, [...pre, 'policy', 'coverage'], { encoding: 'utf8', cwd: REPO, stdio: ['ignore', 'pipe', 'pipe'] });
  t.regex(out, /x86_64\s+file-calls\.openByHandleAt\s+open_by_handle_at\s+ALLOW\s+.*file-server\.json:\d+ syscalls\[\d+\]/);
  t.regex(out, /aarch64\s+socket-calls\.pollIn\s+ppoll\s+ALLOW/);
  t.regex(out, /syslog-calls\.sendSyslog\s+sendto\s+arg4=0x0 arg5=0x0\s+ALLOW/);
});
