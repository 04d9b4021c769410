// The policy reader refuses broken profiles with messages that point at the text (file,
// JSON line, rule index), and accepts the project's own policies with a comment on every
// allowed syscall.
import test from 'ava';
import { loadPolicy } from '../src/sandbox/seccomp/index.js';
import { PolicyError, formatIssue, parsePolicy } from '../src/sandbox/seccomp/policy.js';
import { mergePolicies } from '../src/sandbox/seccomp/policy-merge.js';

function errors(text: string, file = 'p.json'): string[] {
  try {
    parsePolicy(text, file, { requireComments: true });
  } catch (e) {
    if (e instanceof PolicyError) return e.issues.map(formatIssue);
    throw e;
  }
  return [];
}

function mergeErrors(...texts: string[]): string[] {
  try {
    mergePolicies(texts.map((t, i) => parsePolicy(t, `f${i}.json`)));
  } catch (e) {
    if (e instanceof PolicyError) return e.issues.map(formatIssue);
    throw e;
  }
  return [];
}

const rule = (r: string): string => `{\n  "defaultAction": "SCMP_ACT_KILL_PROCESS",\n  "syscalls": [\n    ${r}\n  ]\n}\n`;

test('the project policies load, merge and carry a comment on every allowed syscall', (t) => {
  const p = loadPolicy();
  t.true(p.rules.length > 20);
  t.deepEqual(p.architectures, ['x86_64', 'aarch64']);
  for (const r of p.rules) if (r.action.kind === 'allow') t.truthy(r.comment?.trim(), `${r.names.join(',')} has no comment`);
  const io = p.rules.find((r) => r.names.includes('io_uring_setup'));
  t.is(io?.action.kind, 'errno');
});

test('broken JSON is reported with its line and column', (t) => {
  t.deepEqual(errors('{\n  "defaultAction": "SCMP_ACT_ALLOW",\n  "syscalls": [\n    { "names": ["read"] "action": "x" }\n  ]\n}'),
    ['p.json:4: invalid JSON at column 25: unexpected "\\"", expected \',\' or \'}\'']);
  t.deepEqual(errors('{ "defaultAction": "SCMP_ACT_ALLOW", }'),
    ['p.json:1: invalid JSON at column 38: unexpected "}", expected a property name in double quotes']);
  t.regex(errors('{\n"defaultAction": "SCMP_ACT_ALLOW"\n')[0]!, /^p\.json:3: invalid JSON .*unexpected end of input/);
});

test('unknown action, errno, op and field are refused at their rule', (t) => {
  t.deepEqual(errors(rule('{ "names": ["read"], "action": "SCMP_ACT_ALOW", "comment": "x" }')),
    [`p.json:4: syscalls[0]: unknown action "SCMP_ACT_ALOW" (one of SCMP_ACT_ALLOW, SCMP_ACT_ERRNO, SCMP_ACT_KILL, ` +
      'SCMP_ACT_KILL_THREAD, SCMP_ACT_KILL_PROCESS, SCMP_ACT_TRAP, SCMP_ACT_LOG, SCMP_ACT_TRACE)']);
  t.deepEqual(errors(rule('{ "names": ["read"], "action": "SCMP_ACT_ERRNO", "errnoRet": "EWHAT" }')),
    ['p.json:4: syscalls[0]: unknown errno name "EWHAT"']);
  t.deepEqual(errors(rule('{ "names": ["read"], "action": "SCMP_ACT_ALLOW", "comment": "x", "args": [{ "index": 0, "value": 1, "op": "SCMP_CMP_EQUAL" }] }')),
    ['p.json:4: syscalls[0]: args[0]: unknown op "SCMP_CMP_EQUAL" (one of SCMP_CMP_EQ, SCMP_CMP_NE, SCMP_CMP_LT, ' +
      'SCMP_CMP_LE, SCMP_CMP_GT, SCMP_CMP_GE, SCMP_CMP_MASKED_EQ)']);
  t.deepEqual(errors(rule('{ "name": ["read"], "names": ["read"], "action": "SCMP_ACT_LOG" }')),
    ['p.json:4: syscalls[0]: unknown field "name"']);
  t.deepEqual(errors('{ "defaultAction": "SCMP_ACT_ALLOW", "sycalls": [] }'), ['p.json:1: unknown field "sycalls"']);
  t.deepEqual(errors('{ "defaultAction": "ALLOW" }')[0]?.startsWith('p.json:1: defaultAction: unknown action "ALLOW"'), true);
});

test('an unknown syscall name is refused; a name missing on one arch only is a note', (t) => {
  t.deepEqual(errors(rule('{ "names": ["read", "mkdri"], "action": "SCMP_ACT_ALLOW", "comment": "x" }')),
    ['p.json:4: syscalls[0]: unknown syscall "mkdri" (not in the x86_64 or aarch64 table)']);
  const p = parsePolicy(rule('{ "names": ["mkdir"], "action": "SCMP_ACT_ALLOW", "comment": "x" }'), 'p.json');
  t.deepEqual(p.notes, ['p.json:4: syscalls[0]: mkdir does not exist on aarch64; ignored there']);
  t.deepEqual(errors(`{ "defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_AARCH64"],
    "syscalls": [{ "names": ["mkdir"], "action": "SCMP_ACT_LOG" }] }`),
  ['p.json:2: syscalls[0]: unknown syscall "mkdir" (not in the aarch64 table)']);
});

test('argument index outside 0..5 and bad values are refused', (t) => {
  t.deepEqual(errors(rule('{ "names": ["ioctl"], "action": "SCMP_ACT_ALLOW", "comment": "x", "args": [{ "index": 6, "value": 1, "op": "SCMP_CMP_EQ" }] }')),
    ['p.json:4: syscalls[0]: args[0]: index 6 out of range 0..5 (syscalls have six arguments)']);
  t.deepEqual(errors(rule('{ "names": ["ioctl"], "action": "SCMP_ACT_ALLOW", "comment": "x", "args": [{ "index": -1, "value": 1, "op": "SCMP_CMP_EQ" }] }')),
    ['p.json:4: syscalls[0]: args[0]: index -1 out of range 0..5 (syscalls have six arguments)']);
  t.deepEqual(errors(rule('{ "names": ["ioctl"], "action": "SCMP_ACT_ALLOW", "comment": "x", "args": [{ "index": 1, "value": 18446744073709551615, "op": "SCMP_CMP_EQ" }] }')),
    ['p.json:4: syscalls[0]: args[0]: value 18446744073709552000 is not an exact integer (write values past 2^53 as a "0x..." string)']);
  const p = parsePolicy(rule('{ "names": ["ioctl"], "action": "SCMP_ACT_ALLOW", "args": [{ "index": 0, "value": -100, "op": "SCMP_CMP_EQ" }, { "index": 1, "value": "0xffffffffffffffff", "op": "SCMP_CMP_LE" }] }'), 'p.json');
  t.is(p.rules[0]!.args[0]!.value, 0xffffffffffffff9cn);
  t.is(p.rules[0]!.args[1]!.value, 0xffffffffffffffffn);
});

test('allowed syscalls without a comment are refused when comments are required', (t) => {
  t.deepEqual(errors(rule('{ "names": ["read", "write"], "action": "SCMP_ACT_ALLOW" }')),
    ['p.json:4: syscalls[0]: allowed syscalls need a "comment" saying why (read, write)']);
});

test('duplicate, conflicting and unreachable rules are refused with both positions', (t) => {
  const two = (a: string, b: string): string =>
    `{\n"defaultAction": "SCMP_ACT_KILL_PROCESS",\n"syscalls": [\n${a},\n${b}\n]\n}`;
  t.deepEqual(mergeErrors(two('{ "names": ["read"], "action": "SCMP_ACT_ALLOW" }', '{ "names": ["write", "read"], "action": "SCMP_ACT_ALLOW" }')),
    ['f0.json:5: syscalls[1]: duplicate rule for read: same conditions and action as f0.json:4 syscalls[0]']);
  t.deepEqual(mergeErrors(two('{ "names": ["read"], "action": "SCMP_ACT_ALLOW" }', '{ "names": ["read"], "action": "SCMP_ACT_ERRNO" }')),
    ['f0.json:5: syscalls[1]: conflicting rules for read: SCMP_ACT_ERRNO(1) here, SCMP_ACT_ALLOW in f0.json:4 syscalls[0] with the same conditions']);
  t.deepEqual(mergeErrors(two('{ "names": ["ioctl"], "action": "SCMP_ACT_ALLOW" }',
    '{ "names": ["ioctl"], "action": "SCMP_ACT_ERRNO", "args": [{ "index": 1, "value": 21505, "op": "SCMP_CMP_EQ" }] }')),
  ['f0.json:5: syscalls[1]: never reached for ioctl: f0.json:4 syscalls[0] already decides it unconditionally (SCMP_ACT_ALLOW)']);
  t.deepEqual(mergeErrors(two('{ "names": ["read"], "action": "SCMP_ACT_ALLOW", "args": [{ "index": 0, "value": 3, "op": "SCMP_CMP_EQ" }] }',
    '{ "names": ["read"], "action": "SCMP_ACT_LOG", "args": [{ "index": 0, "value": 3, "op": "SCMP_CMP_EQ" }] }')),
  ['f0.json:5: syscalls[1]: conflicting rules for read: SCMP_ACT_LOG here, SCMP_ACT_ALLOW in f0.json:4 syscalls[0] with the same conditions (arg0 == 0x3)']);
  // Different conditions on the same syscall are fine: first match wins.
  t.deepEqual(mergeErrors(two('{ "names": ["read"], "action": "SCMP_ACT_ALLOW", "args": [{ "index": 0, "value": 3, "op": "SCMP_CMP_EQ" }] }',
    '{ "names": ["read"], "action": "SCMP_ACT_LOG" }')), []);
});

test('across files an identical rule is merged, a different action conflicts, defaults must agree', (t) => {
  const a = rule('{ "names": ["read"], "action": "SCMP_ACT_ALLOW" }');
  t.deepEqual(mergeErrors(a, a), []);
  t.deepEqual(mergeErrors(a, rule('{ "names": ["read"], "action": "SCMP_ACT_LOG" }')),
    ['f1.json:4: syscalls[0]: conflicting rules for read: SCMP_ACT_LOG here, SCMP_ACT_ALLOW in f0.json:4 syscalls[0] with the same conditions']);
  t.deepEqual(mergeErrors(a, '{ "defaultAction": "SCMP_ACT_LOG" }'),
    ['f1.json: defaultAction SCMP_ACT_LOG differs from SCMP_ACT_KILL_PROCESS in f0.json']);
});
