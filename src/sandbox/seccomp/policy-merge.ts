// Combines several profiles (policies/node-runtime.json + policies/file-server.json) into
// the one filter the kernel gets, and finds rules that can never take effect: a syscall
// listed twice with the same conditions, or a rule hidden behind an earlier unconditional
// one. Inside one file both are errors; across files an identical rule is expected (each
// file lists what its component needs) and merged, but a different action is a conflict.
import type { Arch } from './arch.js';
import { archInfo } from './arch.js';
import type { PolicyIssue } from './policy.js';
import { PolicyError } from './policy.js';
import type { Policy, PolicyRule } from './policy-types.js';
import { actionName, condKey, ruleLabel, sameAction } from './policy-types.js';

export function mergePolicies(policies: readonly Policy[]): Policy {
  if (policies.length === 0) throw new PolicyError([{ file: '(none)', message: 'no policy files given' }]);
  const issues: PolicyIssue[] = [];
  const first = policies[0]!;
  for (const p of policies.slice(1)) {
    if (!sameAction(p.defaultAction, first.defaultAction)) {
      issues.push({ file: p.files[0]!, message: `defaultAction ${actionName(p.defaultAction)} differs from ` +
        `${actionName(first.defaultAction)} in ${first.files[0]}` });
    }
  }
  const architectures = first.architectures.filter((a) => policies.every((p) => p.architectures.includes(a)));
  if (architectures.length === 0) {
    issues.push({ file: policies.map((p) => p.files[0]).join(', '), message: 'the files have no architecture in common' });
  }
  if (issues.length > 0) throw new PolicyError(issues);
  const merged: Policy = {
    files: policies.flatMap((p) => p.files),
    defaultAction: first.defaultAction,
    architectures,
    rules: policies.flatMap((p) => p.rules),
    notes: policies.flatMap((p) => p.notes),
  };
  const conflicts = findConflicts(merged);
  if (conflicts.issues.length > 0) throw new PolicyError(conflicts.issues);
  merged.notes.push(...conflicts.notes);
  return merged;
}

interface Seen {
  rule: PolicyRule;
  key: string;
}

/** Duplicate and conflicting rules, per arch (a name can be unknown on one of them). */
export function findConflicts(p: Policy): { issues: PolicyIssue[]; notes: string[] } {
  const issues = new Map<string, PolicyIssue>();
  const notes = new Set<string>();
  for (const arch of p.architectures) scanArch(p, arch, issues, notes);
  return { issues: [...issues.values()], notes: [...notes] };
}

function scanArch(p: Policy, arch: Arch, issues: Map<string, PolicyIssue>, notes: Set<string>): void {
  const table = archInfo(arch).byName;
  const bySyscall = new Map<string, Seen[]>();
  for (const rule of p.rules) {
    const key = condKey(rule.args);
    for (const name of rule.names) {
      if (!table.has(name)) continue;
      const list = bySyscall.get(name) ?? [];
      for (const prev of list) {
        if (prev.key !== '' && prev.key !== key) continue;
        const sameFile = prev.rule.source.file === rule.source.file;
        const same = sameAction(prev.rule.action, rule.action);
        const hidden = prev.key === '' && key !== '';
        if (!sameFile && same && !hidden) {
          notes.add(`${name}: ${ruleLabel(rule.source)} repeats ${ruleLabel(prev.rule.source)} (merged)`);
          continue;
        }
        const what = hidden
          ? `never reached for ${name}: ${ruleLabel(prev.rule.source)} already decides it unconditionally (${actionName(prev.rule.action)})`
          : same
            ? `duplicate rule for ${name}: same conditions and action as ${ruleLabel(prev.rule.source)}`
            : `conflicting rules for ${name}: ${actionName(rule.action)} here, ${actionName(prev.rule.action)} in ` +
              `${ruleLabel(prev.rule.source)} with the same conditions${key === '' ? '' : ` (${key})`}`;
        const issue = { file: rule.source.file, line: rule.source.line, rule: rule.source.index, message: what };
        issues.set(`${rule.source.file}#${rule.source.index}#${name}`, issue);
      }
      list.push({ rule, key });
      bySyscall.set(name, list);
    }
  }
}
