// The seccomp stage of the daemon, in two halves because of pivot_root: prepareSeccomp()
// (or loadPolicy + compilePolicy) reads policies/*.json and compiles them while the host
// file system is still visible; installSeccomp() then loads the filter, after the rest of
// the sandbox, with no_new_privs first and TSYNC so every thread (libuv pool, V8, the device
// worker) is filtered — without TSYNC the pool threads would escape (DESIGN.md).
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { logger } from '../../log.js';
import { SECCOMP_FILTER_FLAG_TSYNC, seccompSetModeFilter, setNoNewPrivs } from '../../sys/seccomp-calls.js';
import type { Arch } from './arch.js';
import { archInfo, hostArch } from './arch.js';
import type { CompiledFilter, FilterMode } from './bpf-compiler.js';
import { compilePolicy } from './bpf-compiler.js';
import type { ParseOptions } from './policy.js';
import { readPolicyFile } from './policy.js';
import { mergePolicies } from './policy-merge.js';
import type { Policy } from './policy-types.js';

export type { Arch } from './arch.js';
export type { CompiledFilter, FilterMode } from './bpf-compiler.js';
export { compilePolicy } from './bpf-compiler.js';
export { PolicyError, formatIssue } from './policy.js';
export type { Policy } from './policy-types.js';
export { SeccompTsyncError } from '../../sys/seccomp-calls.js';

export type SeccompMode = FilterMode | 'none';

const log = logger('seccomp');

/** The project's policies, in the order they are merged. */
export const POLICY_FILE_NAMES = ['node-runtime.json', 'file-server.json'] as const;

/** policies/ of this package, from src/sandbox/seccomp (tsx) or dist/sandbox/seccomp (built). */
export function policiesDir(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 5; i++) {
    dir = dirname(dir);
    if (existsSync(join(dir, 'policies', POLICY_FILE_NAMES[0]))) return join(dir, 'policies');
  }
  throw new Error(`seccomp: cannot find the policies/ directory above ${fileURLToPath(import.meta.url)}`);
}

export function defaultPolicyFiles(): string[] {
  const dir = policiesDir();
  return POLICY_FILE_NAMES.map((n) => join(dir, n));
}

/** Read, validate and merge policy files (default: the project's). Throws PolicyError. */
export function loadPolicy(files?: readonly string[], opts: ParseOptions = {}): Policy {
  const list = files !== undefined && files.length > 0 ? [...files] : defaultPolicyFiles();
  const parseOpts = { requireComments: files === undefined || files.length === 0, ...opts };
  return mergePolicies(list.map((f) => readPolicyFile(f, parseOpts)));
}

/** What the daemon carries from before the sandbox to after it. */
export interface PreparedSeccomp {
  mode: SeccompMode;
  /** Absent for mode 'none'. */
  filter?: CompiledFilter;
  files: string[];
}

/** Load and compile for the running arch; for 'none' the policy is still checked (fail early). */
export function prepareSeccomp(mode: SeccompMode, policyFiles?: readonly string[]): PreparedSeccomp {
  const arch = hostArch();
  const policy = loadPolicy(policyFiles);
  if (arch === undefined) {
    if (mode === 'none') return { mode, files: policy.files };
    throw new Error(`seccomp: no syscall table for this CPU (${process.arch}); use --seccomp none`);
  }
  if (mode === 'none') return { mode, files: policy.files };
  return { mode, files: policy.files, filter: compilePolicy(policy, { arch, mode }) };
}

export interface InstallReport {
  installed: boolean;
  mode: SeccompMode;
  arch?: Arch;
  /** Program length in instructions. */
  length?: number;
}

/**
 * Install the filter on every thread of the process (TSYNC) after PR_SET_NO_NEW_PRIVS.
 * `installSeccomp(mode, files?)` loads and compiles first (only possible while the policy
 * files are reachable); `installSeccomp(prepared)` installs what prepareSeccomp() compiled.
 * Throws SeccompTsyncError naming the thread that could not be synchronised.
 */
export function installSeccomp(mode: SeccompMode, policyFiles?: readonly string[]): InstallReport;
export function installSeccomp(prepared: PreparedSeccomp): InstallReport;
export function installSeccomp(arg: SeccompMode | PreparedSeccomp, policyFiles?: readonly string[]): InstallReport {
  const prepared = typeof arg === 'string' ? prepareSeccomp(arg, policyFiles) : arg;
  if (prepared.mode === 'none' || prepared.filter === undefined) {
    log.info('--seccomp none: no seccomp filter installed');
    return { installed: false, mode: 'none' };
  }
  const f = prepared.filter;
  if (f.arch !== hostArch()) throw new Error(`seccomp: filter compiled for ${f.arch}, this process runs on ${process.arch}`);
  setNoNewPrivs();
  seccompSetModeFilter(f.bytes, SECCOMP_FILTER_FLAG_TSYNC);
  log.debug(`seccomp filter installed on all threads: mode ${prepared.mode}, ${f.arch}, ${f.length} instructions, ` +
    `policies ${prepared.files.join(', ')}`);
  return { installed: true, mode: prepared.mode, arch: f.arch, length: f.length };
}

/** Name of syscall `nr` on `arch` (default: this machine's), for messages about a killed daemon. */
export function syscallName(nr: number, arch: Arch | undefined = hostArch()): string | undefined {
  return arch === undefined ? undefined : archInfo(arch).byNumber.get(nr);
}

export { describeSeccompKill, seccompAuditRecords } from './audit.js';
export type { AuditFilter, SeccompAuditRecord } from './audit.js';
