// Syscall coverage: does the policy allow every syscall the daemon can make after the
// filter is installed? Walks src/sys/syscall-map.ts (binding -> syscalls per arch),
// decides each syscall by the policy's rules and by running the compiled filter in the
// emulator, and reports, per binding, the rule that allows it or why it would be killed.
// `vfs-launch policy coverage` prints this table; test/policy-coverage.test.ts fails on
// any row that is not covered.
import type { Arch } from './arch.js';
import { ARCHES, archInfo } from './arch.js';
import type { CompiledFilter } from './bpf-compiler.js';
import { compilePolicy, effectiveRules } from './bpf-compiler.js';
import { SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO, retName } from './bpf.js';
import { emulate } from './bpf-emulator.js';
import { decideByRules } from './explain.js';
import type { Policy } from './policy-types.js';
import { condText, ruleLabel } from './policy-types.js';
import type { BindingEntry, SyscallUse } from '../../sys/syscall-map.js';
import { SYSCALL_MAP } from '../../sys/syscall-map.js';

export interface CoverageRow {
  arch: Arch;
  /** "module.binding". */
  binding: string;
  syscall: string;
  /** Fixed arguments the binding passes, as text ("" when none are declared). */
  args: string;
  /** What the policy answers: SCMP_ACT_ALLOW, ERRNO(n), KILL_PROCESS ... */
  verdict: string;
  /** The deciding rule (file:line syscalls[i]) or "default". */
  rule: string;
  ok: boolean;
  /** Why the row fails (empty when ok). */
  problem: string;
}

function argsText(u: SyscallUse): string {
  if (u.args === undefined) return '';
  return u.args.map((a, i) => (a === undefined ? undefined : `arg${i}=0x${a.toString(16)}`)).filter((s) => s !== undefined).join(' ');
}

function rowFor(policy: Policy, filter: CompiledFilter, e: BindingEntry, u: SyscallUse): CoverageRow {
  const arch = filter.arch;
  const info = archInfo(arch);
  const base = { arch, binding: `${e.module}.${e.binding}`, syscall: u.name, args: argsText(u) };
  const nr = info.byName.get(u.name);
  if (nr === undefined) {
    return { ...base, verdict: '-', rule: '-', ok: false, problem: `${u.name} does not exist on ${arch}: fix src/sys/syscall-map.ts` };
  }
  const args = [0, 1, 2, 3, 4, 5].map((i) => BigInt.asUintN(64, u.args?.[i] ?? 0n));
  const dec = decideByRules(policy, u.name, args, filter.defaultValue);
  const bpf = emulate(filter.program, { nr, arch: info.auditArch, args });
  const rule = dec.rule !== undefined ? ruleLabel(dec.rule.source) : 'default';
  const verdict = retName(bpf.value);
  const allowed = bpf.value === SECCOMP_RET_ALLOW;
  if (dec.value !== bpf.value) {
    return { ...base, verdict, rule, ok: false, problem: `the rules say ${retName(dec.value)} but the compiled filter says ${verdict}` };
  }
  if (!allowed) {
    const files = policy.files.join(', ');
    const why = (bpf.value & 0xffff0000) >>> 0 === SECCOMP_RET_ERRNO ? 'refused with an errno' : 'killed';
    return { ...base, verdict, rule, ok: false, problem: `${u.name} is ${why} by ${dec.rule !== undefined ? rule : `the default action of ${files}`}; allow it in policies/ with a reason` };
  }
  // Allowed for the arguments we tried; when the rule depends on arguments the binding
  // does not pin down, other calls of the same binding may still be killed.
  const conds = dec.rule?.args ?? [];
  const loose = conds.filter((c) => u.args?.[c.index] === undefined);
  if (loose.length > 0) {
    return {
      ...base, verdict, rule, ok: false,
      problem: `allowed only when ${loose.map(condText).join(' && ')}, an argument ${e.binding} does not fix; declare the argument in src/sys/syscall-map.ts or widen the rule`,
    };
  }
  // Another rule for the same name with conditions means the outcome depends on arguments.
  const others = effectiveRules(policy, u.name).filter((r) => r !== dec.rule && r.args.some((c) => u.args?.[c.index] === undefined));
  if (others.length > 0 && conds.length > 0) {
    return { ...base, verdict, rule, ok: false, problem: `decided by arguments ${e.binding} does not fix (${others.map((r) => ruleLabel(r.source)).join(', ')})` };
  }
  return { ...base, verdict, rule, ok: true, problem: '' };
}

/** Coverage of every serving-phase binding on each arch the policy supports (or `arches`). */
export function syscallCoverage(policy: Policy, arches: readonly Arch[] = ARCHES): CoverageRow[] {
  const rows: CoverageRow[] = [];
  for (const arch of arches) {
    if (!policy.architectures.includes(arch)) continue;
    const filter = compilePolicy(policy, { arch, mode: 'kill' });
    for (const e of SYSCALL_MAP) {
      if (e.phase !== 'serving') continue;
      for (const u of e[arch]) rows.push(rowFor(policy, filter, e, u));
    }
  }
  return rows;
}

/** Arches a policy must cover but does not list (the daemon runs on both). */
export function missingArches(policy: Policy): Arch[] {
  return ARCHES.filter((a) => !policy.architectures.includes(a));
}

/** The table as text, one row per binding/syscall/arch; failing rows carry their problem. */
export function formatCoverage(rows: readonly CoverageRow[]): string[] {
  const w = (k: keyof CoverageRow): number => Math.max(k.length, ...rows.map((r) => String(r[k]).length));
  const cols: (keyof CoverageRow)[] = ['arch', 'binding', 'syscall', 'args', 'verdict', 'rule'];
  const widths = cols.map(w);
  const line = (vals: string[]): string => vals.map((v, i) => v.padEnd(widths[i])).join('  ').trimEnd();
  const out = [line(cols.map(String)), line(widths.map((n) => '-'.repeat(n)))];
  for (const r of rows) {
    out.push(line(cols.map((c) => String(r[c]))) + (r.ok ? '' : `  <-- ${r.problem}`));
  }
  return out;
}
