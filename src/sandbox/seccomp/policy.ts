// Reads OCI seccomp profiles (the JSON that Docker, runc, crun and podman users read) into
// Policy objects, refusing anything we would compile wrongly or that looks like a typo:
// each problem is reported with its file, JSON line and rule position, and all problems
// of a file are reported at once so `policy check` is useful in review.
import { readFileSync } from 'node:fs';
import { constants as osConstants } from 'node:os';
import type { Arch } from './arch.js';
import { ARCHES, OCI_ARCH_NAMES, archInfo } from './arch.js';
import type { LocatedJson, Json } from './json-locate.js';
import { JsonSyntaxError, parseJsonLocated } from './json-locate.js';
import type { Action, ArgCond, CmpOp, Policy, PolicyRule } from './policy-types.js';
import { CMP_OPS, U64_MAX } from './policy-types.js';

export interface PolicyIssue {
  file: string;
  line?: number;
  /** Index in "syscalls", when the issue is about one rule. */
  rule?: number;
  message: string;
}

export class PolicyError extends Error {
  constructor(readonly issues: PolicyIssue[]) {
    super(issues.map(formatIssue).join('\n'));
    this.name = 'PolicyError';
  }
}

export function formatIssue(i: PolicyIssue): string {
  const where = `${i.file}${i.line !== undefined ? `:${i.line}` : ''}`;
  return `${where}: ${i.rule !== undefined ? `syscalls[${i.rule}]: ` : ''}${i.message}`;
}

const ACTIONS: Record<string, Action['kind'] | undefined> = {
  SCMP_ACT_ALLOW: 'allow', SCMP_ACT_ERRNO: 'errno', SCMP_ACT_KILL: 'kill_thread',
  SCMP_ACT_KILL_THREAD: 'kill_thread', SCMP_ACT_KILL_PROCESS: 'kill_process', SCMP_ACT_TRAP: 'trap',
  SCMP_ACT_LOG: 'log', SCMP_ACT_TRACE: 'trace',
};
const TOP_KEYS = new Set(['defaultAction', 'defaultErrnoRet', 'architectures', 'syscalls', 'comment', 'flags']);
const RULE_KEYS = new Set(['names', 'action', 'args', 'comment', 'errnoRet']);
const ARG_KEYS = new Set(['index', 'value', 'valueTwo', 'op']);
const EPERM = 1;
const MAX_ERRNO = 4095;

const isObj = (v: Json | undefined): v is { [k: string]: Json } => typeof v === 'object' && v !== null && !Array.isArray(v);

/** A 64-bit argument value: a non-negative integer, a negative one (two's complement, e.g.
 * AT_FDCWD), or a string "0x..."/decimal for values past 2^53. */
function u64(v: Json | undefined): bigint | string {
  if (typeof v === 'number') {
    if (!Number.isSafeInteger(v)) return `${v} is not an exact integer (write values past 2^53 as a "0x..." string)`;
    return BigInt.asUintN(64, BigInt(v));
  }
  if (typeof v === 'string' && /^(0x[0-9a-fA-F]+|\d+)$/.test(v)) {
    const b = BigInt(v);
    return b > U64_MAX ? `${v} does not fit in 64 bits` : b;
  }
  return `${JSON.stringify(v)} is not a 64-bit integer`;
}

function errnoValue(v: Json | undefined, dflt: number): number | string {
  if (v === undefined) return dflt;
  if (typeof v === 'string') {
    const n = (osConstants.errno as Record<string, number | undefined>)[v];
    return n ?? `unknown errno name ${JSON.stringify(v)}`;
  }
  if (typeof v === 'number' && Number.isInteger(v) && v >= 0 && v <= MAX_ERRNO) return v;
  return `errno ${JSON.stringify(v)} is not an integer in 0..${MAX_ERRNO} or an errno name`;
}

function action(name: Json | undefined, errnoRet: Json | undefined, dflt: number): Action | string {
  if (typeof name !== 'string') return `action must be a string, got ${JSON.stringify(name)}`;
  if (name === 'SCMP_ACT_NOTIFY') return 'SCMP_ACT_NOTIFY is not supported (no user-space listener)';
  const kind = ACTIONS[name];
  if (kind === undefined) return `unknown action ${JSON.stringify(name)} (one of ${Object.keys(ACTIONS).join(', ')})`;
  if (kind !== 'errno' && kind !== 'trace') {
    if (errnoRet !== undefined) return `errnoRet is only meaningful with SCMP_ACT_ERRNO or SCMP_ACT_TRACE, not ${name}`;
    return { kind, data: 0 };
  }
  const e = errnoValue(errnoRet, kind === 'errno' ? dflt : 0);
  return typeof e === 'string' ? e : { kind, data: e };
}

function argCond(a: Json, where: string): ArgCond | string {
  if (!isObj(a)) return `${where} must be an object`;
  for (const k of Object.keys(a)) if (!ARG_KEYS.has(k)) return `${where}: unknown field ${JSON.stringify(k)}`;
  const index = a.index;
  if (typeof index !== 'number' || !Number.isInteger(index) || index < 0 || index > 5) {
    return `${where}: index ${JSON.stringify(index)} out of range 0..5 (syscalls have six arguments)`;
  }
  const op = a.op;
  if (typeof op !== 'string' || !(CMP_OPS as readonly string[]).includes(op)) {
    return `${where}: unknown op ${JSON.stringify(op)} (one of ${CMP_OPS.join(', ')})`;
  }
  const value = u64(a.value);
  if (typeof value === 'string') return `${where}: value ${value}`;
  const valueTwo = a.valueTwo === undefined ? 0n : u64(a.valueTwo);
  if (typeof valueTwo === 'string') return `${where}: valueTwo ${valueTwo}`;
  return { index, op: op as CmpOp, value, valueTwo };
}

export interface ParseOptions {
  /** Refuse SCMP_ACT_ALLOW rules without a "comment" (the project's own policies must say why). */
  requireComments?: boolean;
}

/** Parse one profile's text. `file` is only used in messages. Throws PolicyError. */
export function parsePolicy(text: string, file: string, opts: ParseOptions = {}): Policy {
  let doc: LocatedJson;
  try {
    doc = parseJsonLocated(text);
  } catch (e) {
    if (e instanceof JsonSyntaxError) {
      throw new PolicyError([{ file, line: e.line, message: `invalid JSON at column ${e.column}: ${e.detail}` }]);
    }
    throw e;
  }
  const issues: PolicyIssue[] = [];
  const notes: string[] = [];
  const top = doc.value;
  if (!isObj(top)) throw new PolicyError([{ file, line: 1, message: 'a profile must be a JSON object' }]);
  for (const k of Object.keys(top)) {
    if (!TOP_KEYS.has(k)) issues.push({ file, line: doc.lineOf([k]), message: `unknown field ${JSON.stringify(k)}` });
  }

  const defErr = errnoValue(top.defaultErrnoRet, EPERM);
  let defaultAction: Action = { kind: 'kill_process', data: 0 };
  const da = action(top.defaultAction, undefined, typeof defErr === 'number' ? defErr : EPERM);
  if (typeof defErr === 'string') issues.push({ file, line: doc.lineOf(['defaultErrnoRet']), message: `defaultErrnoRet: ${defErr}` });
  if (typeof da === 'string') issues.push({ file, line: doc.lineOf(['defaultAction']) ?? 1, message: `defaultAction: ${da}` });
  else if (da.kind === 'errno' && typeof defErr === 'number') defaultAction = { kind: 'errno', data: defErr };
  else defaultAction = da;

  let architectures: Arch[] = [...ARCHES];
  if (top.architectures !== undefined) {
    const list = top.architectures;
    if (!Array.isArray(list)) {
      issues.push({ file, line: doc.lineOf(['architectures']), message: 'architectures must be an array of SCMP_ARCH_* names' });
    } else {
      architectures = [];
      list.forEach((a, i) => {
        const arch = typeof a === 'string' ? OCI_ARCH_NAMES.get(a) : undefined;
        if (arch === undefined) {
          issues.push({ file, line: doc.lineOf(['architectures', i]), message: `unknown architecture ${JSON.stringify(a)}` });
        } else if (arch !== null && !architectures.includes(arch)) architectures.push(arch);
      });
      if (architectures.length === 0 && issues.length === 0) {
        issues.push({ file, line: doc.lineOf(['architectures']), message: 'none of the architectures is x86_64 or aarch64' });
      }
    }
  }

  const rules: PolicyRule[] = [];
  const syscalls = top.syscalls ?? [];
  if (!Array.isArray(syscalls)) {
    issues.push({ file, line: doc.lineOf(['syscalls']), message: 'syscalls must be an array of rules' });
  } else {
    syscalls.forEach((r, index) => {
      const line = doc.lineOf(['syscalls', index]);
      const bad = (message: string): void => { issues.push({ file, line, rule: index, message }); };
      if (!isObj(r)) { bad('a rule must be an object'); return; }
      for (const k of Object.keys(r)) if (!RULE_KEYS.has(k)) bad(`unknown field ${JSON.stringify(k)}`);
      const names = r.names;
      if (!Array.isArray(names) || names.length === 0 || !names.every((n) => typeof n === 'string')) {
        bad('names must be a non-empty array of syscall names');
        return;
      }
      const seen = new Set<string>();
      for (const n of names as string[]) {
        if (seen.has(n)) bad(`syscall ${JSON.stringify(n)} listed twice in this rule`);
        seen.add(n);
        const known = architectures.filter((a) => archInfo(a).byName.has(n));
        if (known.length === 0) {
          bad(`unknown syscall ${JSON.stringify(n)} (not in the ${architectures.join(' or ')} table)`);
        } else if (known.length < architectures.length) {
          const missing = architectures.filter((a) => !known.includes(a));
          notes.push(`${file}:${line ?? '?'}: syscalls[${index}]: ${n} does not exist on ${missing.join(', ')}; ignored there`);
        }
      }
      const act = action(r.action, r.errnoRet, EPERM);
      if (typeof act === 'string') { bad(act); return; }
      const args: ArgCond[] = [];
      if (r.args !== undefined && r.args !== null) {
        if (!Array.isArray(r.args)) { bad('args must be an array'); return; }
        r.args.forEach((a, ai) => {
          const c = argCond(a, `args[${ai}]`);
          if (typeof c === 'string') bad(c);
          else args.push(c);
        });
      }
      if (r.comment !== undefined && typeof r.comment !== 'string') bad('comment must be a string');
      const comment = typeof r.comment === 'string' ? r.comment : undefined;
      if (opts.requireComments === true && act.kind === 'allow' && (comment === undefined || comment.trim() === '')) {
        bad(`allowed syscalls need a "comment" saying why (${(names as string[]).join(', ')})`);
      }
      rules.push({ names: names as string[], action: act, args, comment, source: { file, index, line } });
    });
  }
  if (issues.length > 0) throw new PolicyError(issues);
  return { files: [file], defaultAction, architectures, rules, notes };
}

export function readPolicyFile(file: string, opts: ParseOptions = {}): Policy {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    throw new PolicyError([{ file, message: `cannot read: ${(e as Error).message}` }]);
  }
  return parsePolicy(text, file, opts);
}
