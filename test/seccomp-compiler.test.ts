// The compiled BPF decides exactly what the policy says: for every syscall number of both
// generated tables, in every mode, the emulator's verdict equals the rules' verdict; the
// 64-bit argument compares are exact at the hi/lo word boundaries; arch and x32 checks kill;
// far jumps are bridged; the program is a search tree, not a chain.
import test from 'ava';
import type { Arch } from '../src/sandbox/seccomp/arch.js';
import { ARCHES, X32_SYSCALL_BIT, archInfo } from '../src/sandbox/seccomp/arch.js';
import type { FilterMode } from '../src/sandbox/seccomp/bpf-compiler.js';
import { compilePolicy } from '../src/sandbox/seccomp/bpf-compiler.js';
import {
  BPF_JA, BPF_JMP, SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO, SECCOMP_RET_KILL_PROCESS, SECCOMP_RET_LOG, SECCOMP_RET_TRAP,
  decodeProgram, encodeProgram,
} from '../src/sandbox/seccomp/bpf.js';
import { emulate } from '../src/sandbox/seccomp/bpf-emulator.js';
import { disassemble } from '../src/sandbox/seccomp/bpf-disasm.js';
import { condHolds, decideByRules, explain } from '../src/sandbox/seccomp/explain.js';
import { loadPolicy } from '../src/sandbox/seccomp/index.js';
import { parsePolicy } from '../src/sandbox/seccomp/policy.js';
import type { CmpOp } from '../src/sandbox/seccomp/policy-types.js';
import { CMP_OPS } from '../src/sandbox/seccomp/policy-types.js';

const MODES: (FilterMode | undefined)[] = [undefined, 'kill', 'log', 'trap'];
const EDGES = [0n, 1n, 2n, 0x7fffffffn, 0x80000000n, 0xfffffffen, 0xffffffffn, 0x100000000n, 0x100000001n, 0x1ffffffffn,
  0x7fffffffffffffffn, 0x8000000000000000n, 0xffffffff00000000n, 0xfffffffffffffffen, 0xffffffffffffffffn];

test('every syscall of both tables: the compiled project policy agrees with its rules, in every mode', (t) => {
  const policy = loadPolicy();
  for (const arch of ARCHES) {
    const info = archInfo(arch);
    for (const mode of MODES) {
      const f = compilePolicy(policy, { arch, mode });
      t.is(f.defaultValue, mode === undefined ? SECCOMP_RET_KILL_PROCESS
        : { kill: SECCOMP_RET_KILL_PROCESS, log: SECCOMP_RET_LOG, trap: SECCOMP_RET_TRAP }[mode]);
      let allowed = 0;
      for (const [name, nr] of info.byName) {
        const want = decideByRules(policy, name, [0n, 0n, 0n, 0n, 0n, 0n], f.defaultValue).value;
        const got = emulate(f.program, { nr, arch: info.auditArch }).value;
        if (got !== want) t.fail(`${arch} ${mode ?? 'policy'} ${name} (${nr}): bpf 0x${got.toString(16)}, policy 0x${want.toString(16)}`);
        if (got === SECCOMP_RET_ALLOW) allowed++;
      }
      t.true(allowed > 40, `${arch}: ${allowed} allowed`);
      // io_uring is refused with ENOSYS in every mode, never killed or logged.
      const io = emulate(f.program, { nr: info.byName.get('io_uring_setup')!, arch: info.auditArch });
      t.is(io.value, (SECCOMP_RET_ERRNO | 38) >>> 0);
      // Numbers past the table get the default.
      t.is(emulate(f.program, { nr: 5000, arch: info.auditArch }).value, f.defaultValue);
      // -1 (what a bogus syscall(-1) sends) has the x32 bit set on x86_64.
      t.is(emulate(f.program, { nr: -1, arch: info.auditArch }).value, arch === 'x86_64' ? SECCOMP_RET_KILL_PROCESS : f.defaultValue);
    }
  }
});

test('a wrong arch kills in every mode; on x86_64 so does the x32 ABI', (t) => {
  const policy = loadPolicy();
  for (const arch of ARCHES) {
    const other = archInfo(arch === 'x86_64' ? 'aarch64' : 'x86_64');
    for (const mode of MODES) {
      const f = compilePolicy(policy, { arch, mode });
      const read = archInfo(arch).byName.get('read')!;
      t.is(emulate(f.program, { nr: read, arch: other.auditArch }).value, SECCOMP_RET_KILL_PROCESS);
      t.is(emulate(f.program, { nr: read, arch: 0x40000003 /* i386 */ }).value, SECCOMP_RET_KILL_PROCESS);
      t.is(emulate(f.program, { nr: read, arch: archInfo(arch).auditArch }).value, SECCOMP_RET_ALLOW);
      const x32 = emulate(f.program, { nr: (read | X32_SYSCALL_BIT) >>> 0, arch: archInfo(arch).auditArch }).value;
      t.is(x32, arch === 'x86_64' ? SECCOMP_RET_KILL_PROCESS : f.defaultValue);
    }
  }
});

test('the program is a search tree: short, and any syscall decided in few instructions', (t) => {
  const policy = loadPolicy();
  for (const arch of ARCHES) {
    const f = compilePolicy(policy, { arch, mode: 'kill' });
    const info = archInfo(arch);
    // The tree decides a syscall in at most 14 instructions; a rule with argument
    // conditions adds its compares (two 32-bit halves per 64-bit argument, and a load each).
    let worst = 0;
    let worstArgs = 0;
    for (const [nr, name] of info.byNumber) {
      const steps = emulate(f.program, { nr, arch: info.auditArch }).steps;
      const conds = policy.rules.filter((r) => r.names.includes(name)).reduce((n, r) => n + r.args.length, 0);
      if (conds === 0) worst = Math.max(worst, steps);
      else worstArgs = Math.max(worstArgs, steps - 4 * conds);
    }
    t.log(`${arch}: ${f.length} instructions, at most ${worst} executed (${worstArgs} + 4 per argument compare for argument rules)`);
    t.true(f.length < 200);
    t.true(worst <= 14, `${arch}: worst path ${worst}`);
    t.true(worstArgs <= 14, `${arch}: worst path of an argument rule, less its compares: ${worstArgs}`);
    // Encoding round-trips.
    t.deepEqual(decodeProgram(encodeProgram(f.program)), f.program);
    t.deepEqual(decodeProgram(f.bytes), f.program);
  }
});

const cmpPolicy = (op: CmpOp, value: bigint, valueTwo: bigint): string => JSON.stringify({
  defaultAction: 'SCMP_ACT_ERRNO',
  syscalls: [{ names: ['ioctl'], action: 'SCMP_ACT_ALLOW', args: [{ index: 2, op, value: `0x${value.toString(16)}`, valueTwo: `0x${valueTwo.toString(16)}` }] }],
});

test('64-bit argument compares are exact around the hi/lo word boundaries, for every op', (t) => {
  const masks = [0xffffffffn, 0xffffffff00000000n, 0x8000000000000001n, 0xffffffffffffffffn];
  for (const arch of ARCHES) {
    const info = archInfo(arch);
    const nr = info.byName.get('ioctl')!;
    for (const op of CMP_OPS) {
      const pairs: [bigint, bigint][] = op === 'SCMP_CMP_MASKED_EQ'
        ? masks.flatMap((m) => EDGES.map((v) => [m, v & m] as [bigint, bigint]))
        : EDGES.map((v) => [v, 0n]);
      for (const [value, valueTwo] of pairs) {
        const policy = parsePolicy(cmpPolicy(op, value, valueTwo), 'cmp.json');
        const f = compilePolicy(policy, { arch });
        for (const a of EDGES) {
          const want = condHolds(policy.rules[0]!.args[0]!, [0n, 0n, a]) ? SECCOMP_RET_ALLOW : (SECCOMP_RET_ERRNO | 1) >>> 0;
          const got = emulate(f.program, { nr, arch: info.auditArch, args: [0n, 0n, a] }).value;
          if (got !== want) t.fail(`${arch} ${op} value 0x${value.toString(16)}/0x${valueTwo.toString(16)} arg 0x${a.toString(16)}`);
        }
      }
    }
  }
  // Spot checks against hand-computed truths, so condHolds itself is pinned down.
  const c = (op: CmpOp, value: bigint, valueTwo = 0n) => ({ index: 0, op, value, valueTwo });
  t.true(condHolds(c('SCMP_CMP_GT', 0xffffffffn), [0x100000000n]));
  t.false(condHolds(c('SCMP_CMP_LT', 0x100000000n), [0x100000000n]));
  t.true(condHolds(c('SCMP_CMP_LE', 0x100000000n), [0xffffffffn]));
  t.true(condHolds(c('SCMP_CMP_MASKED_EQ', 0xff00000000n, 0x1200000000n), [0x12ffffffffn]));
  t.false(condHolds(c('SCMP_CMP_NE', 0xffffffffffffff9cn), [BigInt.asUintN(64, -100n)]));
});

test('rules with several conditions and several rules per syscall: first match wins, else default', (t) => {
  const policy = parsePolicy(JSON.stringify({
    defaultAction: 'SCMP_ACT_KILL_PROCESS',
    syscalls: [
      { names: ['openat'], action: 'SCMP_ACT_ERRNO', errnoRet: 13, args: [{ index: 2, op: 'SCMP_CMP_MASKED_EQ', value: 3, valueTwo: 1 }] },
      { names: ['openat'], action: 'SCMP_ACT_ALLOW', args: [{ index: 0, op: 'SCMP_CMP_GE', value: 0 }, { index: 0, op: 'SCMP_CMP_LT', value: 1024 }] },
      { names: ['openat'], action: 'SCMP_ACT_LOG', args: [{ index: 0, op: 'SCMP_CMP_EQ', value: -100 }] },
    ],
  }), 'multi.json');
  for (const arch of ARCHES) {
    const f = compilePolicy(policy, { arch });
    const cases: [bigint[], number][] = [
      [[5n, 0n, 1n], (SECCOMP_RET_ERRNO | 13) >>> 0],
      [[5n, 0n, 2n], SECCOMP_RET_ALLOW],
      [[1024n, 0n, 0n], SECCOMP_RET_KILL_PROCESS],
      [[0xffffffffffffff9cn, 0n, 0n], SECCOMP_RET_LOG],
      [[0xffffff9cn, 0n, 0n], SECCOMP_RET_KILL_PROCESS],
    ];
    for (const [args, want] of cases) {
      const e = explain(policy, f, 'openat', args);
      t.is(e.bpf.value, want, `${arch} ${args}`);
      t.true(e.agree);
    }
  }
});

test('jumps farther than 255 instructions are bridged and still decide correctly', (t) => {
  // 300 syscalls, each with its own argument rule: the tree's jumps to the blocks are long.
  const names = [...archInfo('x86_64').byName.keys()].filter((n) => archInfo('aarch64').byName.has(n)).slice(0, 280);
  const policy = parsePolicy(JSON.stringify({
    defaultAction: 'SCMP_ACT_TRAP',
    syscalls: names.map((n, i) => ({ names: [n], action: 'SCMP_ACT_ALLOW', args: [{ index: i % 6, op: 'SCMP_CMP_EQ', value: i }] })),
  }), 'long.json');
  for (const arch of ARCHES as Arch[]) {
    const f = compilePolicy(policy, { arch });
    t.true(f.length > 2000, `${f.length}`);
    t.true(f.program.some((i) => i.code === (BPF_JMP | BPF_JA)), 'has ja trampolines');
    const info = archInfo(arch);
    names.forEach((n, i) => {
      const args = [0n, 0n, 0n, 0n, 0n, 0n];
      args[i % 6] = BigInt(i);
      const ok = emulate(f.program, { nr: info.byName.get(n)!, arch: info.auditArch, args }).value;
      args[i % 6] = BigInt(i + 1);
      const bad = emulate(f.program, { nr: info.byName.get(n)!, arch: info.auditArch, args }).value;
      if (ok !== SECCOMP_RET_ALLOW || bad !== SECCOMP_RET_TRAP) t.fail(`${arch} ${n}: ${ok} ${bad}`);
    });
  }
});

test('the disassembler names syscalls, fields and return actions', (t) => {
  const f = compilePolicy(loadPolicy(), { arch: 'x86_64', mode: 'kill' });
  const text = disassemble(f.program).join('\n');
  t.regex(text, /^0000: 0020 00 00 00000004 {2}ld +\[4\] +; A = arch$/m);
  t.regex(text, /jeq +#0xc000003e, 0002, \d{4} +; arch == AUDIT_ARCH_X86_64/);
  t.regex(text, /jset +#0x40000000, \d{4}, 0004 +; nr & 0x40000000 \(x32 ABI bit\)/);
  t.regex(text, /jge +#0x[0-9a-f]+, \d{4}, \d{4} +; nr >= \d+ \(\w+\)/);
  t.regex(text, /ret +#0x7fff0000 +; ALLOW/);
  t.regex(text, /ret +#0x50026 +; ERRNO\(38\)/);
  t.is(text.split('\n').length, f.length);
});
