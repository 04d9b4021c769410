// The in-memory form of a seccomp policy: an OCI seccomp profile after validation, with
// every rule remembering where it came from (file, index in "syscalls", JSON line) so
// that errors, `policy explain` and the disassembler can point an auditor at the text.
import type { Arch } from './arch.js';

export type ActionKind = 'allow' | 'errno' | 'kill_process' | 'kill_thread' | 'trap' | 'log' | 'trace';

export interface Action {
  kind: ActionKind;
  /** errno for 'errno', message for 'trace'. */
  data: number;
}

export const CMP_OPS = ['SCMP_CMP_EQ', 'SCMP_CMP_NE', 'SCMP_CMP_LT', 'SCMP_CMP_LE', 'SCMP_CMP_GT',
  'SCMP_CMP_GE', 'SCMP_CMP_MASKED_EQ'] as const;
export type CmpOp = (typeof CMP_OPS)[number];

/** One comparison on a 64-bit argument; MASKED_EQ means (arg & value) == valueTwo. */
export interface ArgCond {
  index: number;
  op: CmpOp;
  value: bigint;
  valueTwo: bigint;
}

export interface RuleSource {
  file: string;
  /** Index in the file's "syscalls" array. */
  index: number;
  line?: number;
}

export interface PolicyRule {
  names: string[];
  action: Action;
  /** All must hold (AND), as in OCI/libseccomp. */
  args: ArgCond[];
  comment?: string;
  source: RuleSource;
}

export interface Policy {
  files: string[];
  defaultAction: Action;
  /** Architectures this policy can be compiled for. */
  architectures: Arch[];
  /** In evaluation order: for one syscall the first rule whose conditions all hold decides. */
  rules: PolicyRule[];
  /** Non-fatal remarks (a name that exists on one arch only, merged duplicates). */
  notes: string[];
}

export const U64_MAX = (1n << 64n) - 1n;

export function actionName(a: Action): string {
  switch (a.kind) {
    case 'allow': return 'SCMP_ACT_ALLOW';
    case 'errno': return `SCMP_ACT_ERRNO(${a.data})`;
    case 'kill_process': return 'SCMP_ACT_KILL_PROCESS';
    case 'kill_thread': return 'SCMP_ACT_KILL_THREAD';
    case 'trap': return 'SCMP_ACT_TRAP';
    case 'log': return 'SCMP_ACT_LOG';
    case 'trace': return `SCMP_ACT_TRACE(${a.data})`;
  }
}

export function sameAction(a: Action, b: Action): boolean {
  return a.kind === b.kind && a.data === b.data;
}

export function condText(c: ArgCond): string {
  const hex = (v: bigint): string => `0x${v.toString(16)}`;
  const sym: Record<CmpOp, string> = {
    SCMP_CMP_EQ: '==', SCMP_CMP_NE: '!=', SCMP_CMP_LT: '<', SCMP_CMP_LE: '<=', SCMP_CMP_GT: '>',
    SCMP_CMP_GE: '>=', SCMP_CMP_MASKED_EQ: '&',
  };
  if (c.op === 'SCMP_CMP_MASKED_EQ') return `(arg${c.index} & ${hex(c.value)}) == ${hex(c.valueTwo)}`;
  return `arg${c.index} ${sym[c.op]} ${hex(c.value)}`;
}

export function ruleLabel(r: RuleSource): string {
  return `${r.file}${r.line !== undefined ? `:${r.line}` : ''} syscalls[${r.index}]`;
}

/** Canonical text of a rule's conditions, so identical condition sets compare equal. */
export function condKey(args: readonly ArgCond[]): string {
  return args.map(condText).sort().join(' && ');
}
