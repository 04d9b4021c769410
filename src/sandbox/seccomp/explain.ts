// What a policy decides for one syscall, computed two ways: from the rules (first rule
// whose conditions hold, else the default) and by running the compiled BPF in the emulator.
// `policy explain` prints both so an auditor sees the rule and the kernel's verdict agree;
// the tests use the same pair to check the compiler against the policy for every syscall.
import type { Arch } from './arch.js';
import { archInfo } from './arch.js';
import type { CompiledFilter } from './bpf-compiler.js';
import { actionValue, effectiveRules } from './bpf-compiler.js';
import { retName } from './bpf.js';
import type { EmulationResult } from './bpf-emulator.js';
import { emulate } from './bpf-emulator.js';
import type { ArgCond, Policy, PolicyRule } from './policy-types.js';
import { condText, ruleLabel } from './policy-types.js';

export function condHolds(c: ArgCond, args: readonly bigint[]): boolean {
  const a = BigInt.asUintN(64, args[c.index] ?? 0n);
  switch (c.op) {
    case 'SCMP_CMP_EQ': return a === c.value;
    case 'SCMP_CMP_NE': return a !== c.value;
    case 'SCMP_CMP_LT': return a < c.value;
    case 'SCMP_CMP_LE': return a <= c.value;
    case 'SCMP_CMP_GT': return a > c.value;
    case 'SCMP_CMP_GE': return a >= c.value;
    case 'SCMP_CMP_MASKED_EQ': return (a & c.value) === c.valueTwo;
  }
}

export interface PolicyDecision {
  value: number;
  /** The deciding rule; undefined when the default action applies. */
  rule?: PolicyRule;
}

/** The policy's own verdict; `defaultValue` is the filter's default (mode or policy default). */
export function decideByRules(policy: Policy, name: string, args: readonly bigint[], defaultValue: number): PolicyDecision {
  for (const r of effectiveRules(policy, name)) {
    if (r.args.every((c) => condHolds(c, args))) return { value: actionValue(r.action), rule: r };
  }
  return { value: defaultValue };
}

export interface Explanation {
  arch: Arch;
  syscall: string;
  nr: number;
  args: bigint[];
  policy: PolicyDecision;
  bpf: EmulationResult;
  agree: boolean;
}

export function explain(policy: Policy, filter: CompiledFilter, syscall: string, args: readonly bigint[] = []): Explanation {
  const info = archInfo(filter.arch);
  const nr = /^\d+$/.test(syscall) ? Number(syscall) : info.byName.get(syscall);
  if (nr === undefined) throw new Error(`unknown syscall ${JSON.stringify(syscall)} on ${filter.arch}`);
  const name = info.byNumber.get(nr) ?? String(nr);
  const full = [...args, 0n, 0n, 0n, 0n, 0n, 0n].slice(0, 6);
  const pol = decideByRules(policy, name, full, filter.defaultValue);
  const bpf = emulate(filter.program, { nr, arch: info.auditArch, args: full });
  return { arch: filter.arch, syscall: name, nr, args: full, policy: pol, bpf, agree: pol.value === bpf.value };
}

export function formatExplanation(e: Explanation, filter: CompiledFilter): string[] {
  const out: string[] = [];
  out.push(`${e.syscall} (${e.arch} nr ${e.nr}) args [${e.args.map((a) => `0x${a.toString(16)}`).join(', ')}]`);
  const r = e.policy.rule;
  if (r !== undefined) {
    out.push(`  rule:   ${ruleLabel(r.source)} -> ${retName(e.policy.value)}`);
    if (r.args.length > 0) out.push(`          when ${r.args.map(condText).join(' && ')}`);
    if (r.comment !== undefined) out.push(`          "${r.comment}"`);
  } else {
    out.push(`  rule:   none matches -> default ${retName(e.policy.value)}`);
  }
  const origin = filter.origins.get(e.bpf.pc)?.what;
  out.push(`  bpf:    ${e.bpf.action} from ret at ${String(e.bpf.pc).padStart(4, '0')}${origin ? ` (${origin})` : ''}, ` +
    `${e.bpf.steps} instructions executed of ${filter.length}`);
  out.push(e.agree ? '  verdict: policy and compiled filter agree' : '  verdict: MISMATCH between policy and compiled filter');
  return out;
}
