// Installing a compiled seccomp program, and nothing else: what the daemon loads when
// vfs-launch hands it the filter it compiled (an fd), so the daemon carries neither the
// policy parser, the compiler nor the syscall tables. no_new_privs first, then the filter
// on every thread (TSYNC: without it the libuv pool threads would escape, DESIGN.md).
import { logger } from '../../log.js';
import { SECCOMP_FILTER_FLAG_TSYNC, seccompSetModeFilter, setNoNewPrivs } from '../../sys/seccomp-calls.js';
import type { FilterMode } from './bpf-compiler.js';

export type SeccompMode = FilterMode | 'none';

const log = logger('seccomp');

/** struct sock_filter is 8 bytes; the kernel takes at most BPF_MAXINSNS (4096) of them. */
const INSN_SIZE = 8;
const BPF_MAXINSNS = 4096;

/**
 * Install `program` (a struct sock_filter array) on every thread; mode 'none' or no program
 * installs nothing. `from` says where it came from, for the log. Throws on a malformed
 * program or a thread TSYNC could not synchronise (SeccompTsyncError).
 */
export function installFilter(mode: SeccompMode, program: Buffer | undefined, from: string): boolean {
  if (mode === 'none' || program === undefined) {
    log.info('--seccomp none: no seccomp filter installed');
    return false;
  }
  const insns = program.length / INSN_SIZE;
  if (!Number.isInteger(insns) || insns === 0 || insns > BPF_MAXINSNS) {
    throw new Error(`seccomp: the filter ${from} is ${program.length} bytes, not 1 to ${BPF_MAXINSNS} instructions`);
  }
  setNoNewPrivs();
  seccompSetModeFilter(program, SECCOMP_FILTER_FLAG_TSYNC);
  log.debug(`seccomp filter installed on all threads: mode ${mode}, ${process.arch}, ${insns} instructions, ${from}`);
  return true;
}
