// `policy diff A B`: what changes for each syscall when policy A is replaced by B, per arch,
// as effective decisions (first matching rule, else default) rather than a text diff, so
// reordering or regrouping rules shows nothing and a narrowed argument filter shows up.
import type { Arch } from './arch.js';
import { archInfo } from './arch.js';
import { effectiveRules } from './bpf-compiler.js';
import type { Policy, PolicyRule } from './policy-types.js';
import { actionName, condText, sameAction } from './policy-types.js';

function describe(rules: readonly PolicyRule[]): string {
  if (rules.length === 0) return 'default';
  return rules.map((r) => (r.args.length === 0 ? actionName(r.action)
    : `${actionName(r.action)} if ${r.args.map(condText).join(' && ')}`)).join('; else ') +
    (rules[rules.length - 1]!.args.length > 0 ? '; else default' : '');
}

export interface DiffLine {
  arch: Arch;
  syscall: string;
  a: string;
  b: string;
}

export function diffPolicies(a: Policy, b: Policy): { header: string[]; lines: DiffLine[] } {
  const header: string[] = [];
  if (!sameAction(a.defaultAction, b.defaultAction)) {
    header.push(`defaultAction: ${actionName(a.defaultAction)} -> ${actionName(b.defaultAction)}`);
  }
  const archesA = a.architectures.join(',');
  const archesB = b.architectures.join(',');
  if (archesA !== archesB) header.push(`architectures: ${archesA} -> ${archesB}`);
  const lines: DiffLine[] = [];
  for (const arch of a.architectures.filter((x) => b.architectures.includes(x))) {
    for (const name of [...archInfo(arch).byName.keys()].sort()) {
      const da = describe(effectiveRules(a, name));
      const db = describe(effectiveRules(b, name));
      if (da !== db) lines.push({ arch, syscall: name, a: da, b: db });
    }
  }
  return { header, lines };
}

/** Lines for the terminal; a syscall that differs the same way on every arch is printed once. */
export function formatDiff(d: { header: string[]; lines: DiffLine[] }): string[] {
  const out = [...d.header];
  const grouped = new Map<string, { arches: Arch[]; line: DiffLine }>();
  for (const l of d.lines) {
    const key = `${l.syscall}\0${l.a}\0${l.b}`;
    const g = grouped.get(key);
    if (g) g.arches.push(l.arch); else grouped.set(key, { arches: [l.arch], line: l });
  }
  for (const { arches, line } of grouped.values()) {
    const sign = line.a === 'default' ? '+' : line.b === 'default' ? '-' : '~';
    out.push(`${sign} ${line.syscall.padEnd(22)} [${arches.join(',')}] ${line.a} -> ${line.b}`);
  }
  if (out.length === 0) out.push('no difference in effective decisions');
  return out;
}
