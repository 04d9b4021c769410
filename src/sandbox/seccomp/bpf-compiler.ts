// Policy -> classic BPF for one architecture. Layout of the program:
//   1. load seccomp_data.arch; any other arch -> KILL_PROCESS (its numbers mean other calls);
//   2. load nr; on x86_64 a number with the x32 bit set -> KILL_PROCESS (x32 shares the arch value);
//   3. a binary search over the syscall numbers, as ranges: consecutive numbers with the same
//      outcome form one range, each tree node is one `jge`, so any syscall is decided after
//      about log2(ranges) comparisons; leaves jump to a shared `ret` or to a syscall's block;
//   4. per-syscall blocks for rules with argument conditions (64-bit compares on hi/lo words),
//      tried in policy order, falling back to the default action;
//   5. the shared return instructions.
// The default action is the --seccomp mode's (kill/log/trap) or, without a mode, the policy's.
// Rules with their own action (errno, allow, log...) are kept in every mode.
import type { Arch } from './arch.js';
import { archInfo } from './arch.js';
import type { Label, Origin } from './assembler.js';
import { Assembler } from './assembler.js';
import type { Insn } from './bpf.js';
import {
  BPF_ABS, BPF_ALU, BPF_AND, BPF_JEQ, BPF_JGE, BPF_JGT, BPF_JMP, BPF_JSET, BPF_K, BPF_LD, BPF_MAXINSNS, BPF_RET, BPF_W,
  OFF_ARCH, OFF_NR, SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO, SECCOMP_RET_KILL_PROCESS, SECCOMP_RET_KILL_THREAD,
  SECCOMP_RET_LOG, SECCOMP_RET_TRACE, SECCOMP_RET_TRAP, argHi, argLo, encodeProgram,
} from './bpf.js';
import type { Action, ArgCond, Policy, PolicyRule } from './policy-types.js';
import { actionName, condKey, ruleLabel } from './policy-types.js';

/** The --seccomp modes that install a filter. */
export type FilterMode = 'kill' | 'log' | 'trap';

export interface CompileOptions {
  arch: Arch;
  /** Replaces the policy's defaultAction; omitted: use the policy's. */
  mode?: FilterMode;
}

export interface CompiledFilter {
  arch: Arch;
  program: Insn[];
  /** The raw struct sock_filter array. */
  bytes: Buffer;
  length: number;
  /** The return value for syscalls no rule decides. */
  defaultValue: number;
  origins: Map<number, Origin>;
  /** Syscall numbers some rule mentions (on this arch). */
  ruled: Map<number, PolicyRule[]>;
}

export function actionValue(a: Action): number {
  switch (a.kind) {
    case 'allow': return SECCOMP_RET_ALLOW;
    case 'errno': return (SECCOMP_RET_ERRNO | (a.data & 0xffff)) >>> 0;
    case 'kill_process': return SECCOMP_RET_KILL_PROCESS;
    case 'kill_thread': return SECCOMP_RET_KILL_THREAD;
    case 'trap': return SECCOMP_RET_TRAP;
    case 'log': return SECCOMP_RET_LOG;
    case 'trace': return (SECCOMP_RET_TRACE | (a.data & 0xffff)) >>> 0;
  }
}

export function modeValue(mode: FilterMode): number {
  return { kill: SECCOMP_RET_KILL_PROCESS, log: SECCOMP_RET_LOG, trap: SECCOMP_RET_TRAP }[mode];
}

/** The rules that can decide syscall `name` on `arch`, in order, without unreachable ones. */
export function effectiveRules(policy: Policy, name: string): PolicyRule[] {
  const out: PolicyRule[] = [];
  const keys = new Set<string>();
  for (const r of policy.rules) {
    if (!r.names.includes(name)) continue;
    const key = condKey(r.args);
    if (keys.has(key)) continue;
    keys.add(key);
    out.push(r);
    if (key === '') break;
  }
  return out;
}

export class CompileError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'CompileError';
  }
}

export function compilePolicy(policy: Policy, opts: CompileOptions): CompiledFilter {
  const arch = archInfo(opts.arch);
  if (!policy.architectures.includes(opts.arch)) {
    throw new CompileError(`policy ${policy.files.join(', ')} does not list architecture ${opts.arch}`);
  }
  const defaultValue = opts.mode !== undefined ? modeValue(opts.mode) : actionValue(policy.defaultAction);
  const defaultWhat = opts.mode !== undefined ? `default (--seccomp ${opts.mode})` : `default (${actionName(policy.defaultAction)})`;
  const asm = new Assembler();

  const rets = new Map<number, Label>();
  const retLabel = (v: number): Label => {
    let l = rets.get(v >>> 0);
    if (l === undefined) { l = asm.label(); rets.set(v >>> 0, l); }
    return l;
  };
  const kill = asm.label();

  // Per syscall number: where the tree sends it.
  const ruled = new Map<number, PolicyRule[]>();
  for (const [name, nr] of arch.byName) {
    const rules = effectiveRules(policy, name);
    if (rules.length > 0) ruled.set(nr, rules);
  }
  const blocks: { nr: number; label: Label; rules: PolicyRule[] }[] = [];
  const targetOf = new Map<number, Label>();
  for (const [nr, rules] of [...ruled].sort((a, b) => a[0] - b[0])) {
    if (rules.length === 1 && rules[0]!.args.length === 0) {
      targetOf.set(nr, retLabel(actionValue(rules[0]!.action)));
    } else {
      const label = asm.label();
      blocks.push({ nr, label, rules });
      targetOf.set(nr, label);
    }
  }
  const dflt = retLabel(defaultValue);

  // Ranges [lo, next lo) with one target each; everything outside the table -> default.
  const ranges: { lo: number; target: Label }[] = [];
  const maxNr = Math.max(...arch.byNumber.keys());
  for (let nr = 0; nr <= maxNr + 1; nr++) {
    const t = targetOf.get(nr) ?? dflt;
    if (ranges.length === 0 || ranges[ranges.length - 1]!.target !== t) ranges.push({ lo: nr, target: t });
  }

  asm.stmt(BPF_LD | BPF_W | BPF_ABS, OFF_ARCH);
  const archOk = asm.label();
  asm.jump(BPF_JMP | BPF_JEQ | BPF_K, arch.auditArch, archOk, kill);
  asm.place(archOk);
  asm.stmt(BPF_LD | BPF_W | BPF_ABS, OFF_NR);
  if (arch.foreignAbiBit !== undefined) {
    const native = asm.label();
    asm.jump(BPF_JMP | BPF_JSET | BPF_K, arch.foreignAbiBit, kill, native);
    asm.place(native);
  }
  emitTree(asm, ranges, 0, ranges.length - 1, undefined);

  for (const b of blocks) {
    asm.place(b.label);
    emitRules(asm, b.rules, arch.byNumber.get(b.nr) ?? String(b.nr), defaultValue, defaultWhat);
  }
  for (const [v, l] of rets) {
    asm.place(l);
    asm.stmt(BPF_RET | BPF_K, v, { what: v === defaultValue && l === dflt ? defaultWhat : 'rule (shared return)' });
  }
  asm.place(kill);
  asm.stmt(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS, {
    what: arch.foreignAbiBit !== undefined ? `not ${arch.name} (other arch or x32 ABI)` : `not ${arch.name}`,
  });

  const { program, origins } = asm.layout();
  if (program.length > BPF_MAXINSNS) {
    throw new CompileError(`compiled filter has ${program.length} instructions, the kernel takes at most ${BPF_MAXINSNS}`);
  }
  return { arch: opts.arch, program, bytes: encodeProgram(program), length: program.length, defaultValue, origins, ruled };
}

/** Binary search over ranges[i..j]; `self` is the label the parent jumps to (undefined at the root). */
function emitTree(asm: Assembler, ranges: { lo: number; target: Label }[], i: number, j: number,
  self: Label | undefined): void {
  if (i === j) {
    if (self === undefined) asm.ja(ranges[i]!.target);
    return;
  }
  if (self !== undefined) asm.place(self);
  const mid = (i + j + 1) >> 1;
  const child = (a: number, b: number): { label: Label; inner: boolean } =>
    a === b ? { label: ranges[a]!.target, inner: false } : { label: asm.label(), inner: true };
  const left = child(i, mid - 1);
  const right = child(mid, j);
  asm.jump(BPF_JMP | BPF_JGE | BPF_K, ranges[mid]!.lo, right.label, left.label);
  if (left.inner) emitTree(asm, ranges, i, mid - 1, left.label);
  if (right.inner) emitTree(asm, ranges, mid, j, right.label);
}

function emitRules(asm: Assembler, rules: PolicyRule[], name: string, defaultValue: number, defaultWhat: string): void {
  for (const r of rules) {
    const next = asm.label();
    for (const c of r.args) emitCond(asm, c, next);
    asm.stmt(BPF_RET | BPF_K, actionValue(r.action), { what: `${name}: ${ruleLabel(r.source)}` });
    asm.place(next);
  }
  const last = rules[rules.length - 1]!;
  if (last.args.length > 0) asm.stmt(BPF_RET | BPF_K, defaultValue, { what: `${name}: no rule matched, ${defaultWhat}` });
}

const hi = (v: bigint): number => Number((v >> 32n) & 0xffffffffn);
const lo = (v: bigint): number => Number(v & 0xffffffffn);

/** Falls through when the condition holds, jumps to `fail` otherwise. Unsigned 64-bit compares:
 * the high words decide unless they are equal, then the low words do. */
function emitCond(asm: Assembler, c: ArgCond, fail: Label): void {
  const pass = asm.label();
  const FALL = -1 as Label;
  const ldHi = (): void => asm.stmt(BPF_LD | BPF_W | BPF_ABS, argHi(c.index));
  const ldLo = (): void => asm.stmt(BPF_LD | BPF_W | BPF_ABS, argLo(c.index));
  const J = (op: number, k: number, t: Label, f: Label): void => {
    const fall = asm.label();
    asm.jump(BPF_JMP | op | BPF_K, k, t === FALL ? fall : t, f === FALL ? fall : f);
    asm.place(fall);
  };
  const v = c.value;
  switch (c.op) {
    case 'SCMP_CMP_EQ':
      ldHi(); J(BPF_JEQ, hi(v), FALL, fail); ldLo(); J(BPF_JEQ, lo(v), pass, fail); break;
    case 'SCMP_CMP_NE':
      ldHi(); J(BPF_JEQ, hi(v), FALL, pass); ldLo(); J(BPF_JEQ, lo(v), fail, pass); break;
    case 'SCMP_CMP_GT':
      ldHi(); J(BPF_JGT, hi(v), pass, FALL); J(BPF_JEQ, hi(v), FALL, fail); ldLo(); J(BPF_JGT, lo(v), pass, fail); break;
    case 'SCMP_CMP_GE':
      ldHi(); J(BPF_JGT, hi(v), pass, FALL); J(BPF_JEQ, hi(v), FALL, fail); ldLo(); J(BPF_JGE, lo(v), pass, fail); break;
    case 'SCMP_CMP_LT':
      ldHi(); J(BPF_JGT, hi(v), fail, FALL); J(BPF_JEQ, hi(v), FALL, pass); ldLo(); J(BPF_JGE, lo(v), fail, pass); break;
    case 'SCMP_CMP_LE':
      ldHi(); J(BPF_JGT, hi(v), fail, FALL); J(BPF_JEQ, hi(v), FALL, pass); ldLo(); J(BPF_JGT, lo(v), fail, pass); break;
    case 'SCMP_CMP_MASKED_EQ':
      ldHi(); asm.stmt(BPF_ALU | BPF_AND | BPF_K, hi(v)); J(BPF_JEQ, hi(c.valueTwo), FALL, fail);
      ldLo(); asm.stmt(BPF_ALU | BPF_AND | BPF_K, lo(v)); J(BPF_JEQ, lo(c.valueTwo), pass, fail); break;
  }
  asm.place(pass);
}
