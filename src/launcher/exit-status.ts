// Turning how the daemon ended into the launcher's exit code and one line for the operator.
// In namespace mode the status arrives through the pid-1 sh as 128+N for a signal; the
// daemon itself never exits with a code above 128, so those codes mean "killed by signal N".
import { constants as osConstants } from 'node:os';

const signalNames = new Map<number, string>();
for (const [name, num] of Object.entries(osConstants.signals)) {
  if (!signalNames.has(num)) signalNames.set(num, name);
}

export function signalName(num: number): string {
  return signalNames.get(num) ?? `signal ${num}`;
}

export function signalNumber(name: string): number | undefined {
  return (osConstants.signals as Record<string, number | undefined>)[name];
}

export interface DaemonEnd {
  /** The launcher's own exit code. */
  exitCode: number;
  /** Signal that killed the daemon, when it was killed. */
  signal?: string;
  /** One line describing the end, or undefined for a clean exit 0. */
  message?: string;
}

function why(signal: string, seccompMode: string, syscall?: string): string {
  if (signal === 'SIGSYS' && syscall !== undefined) return ` (seccomp: system call ${syscall} is outside the policy)`;
  if (signal === 'SIGSYS') return seccompMode === 'none' ? ' (bad system call)' : ' (seccomp: a system call outside the policy)';
  if (signal === 'SIGKILL') return ' (killed from outside, or by the kernel: OOM)';
  return '';
}

/**
 * Describe the end of the daemon. `signal` is the name execa reports when the direct
 * child died by a signal; `code` its exit code otherwise. `viaInit` says whether codes
 * above 128 come from the pid-1 sh (namespace mode); `syscall` names the call a seccomp
 * kill was for, when the kernel's audit record told us.
 */
export function describeDaemonEnd(code: number | undefined, signal: string | undefined, viaInit: boolean, seccompMode: string, syscall?: string): DaemonEnd {
  let sig = signal;
  if (sig === undefined && viaInit && code !== undefined && code > 128 && code < 128 + 65) sig = signalName(code - 128);
  if (sig !== undefined) {
    const num = signalNumber(sig) ?? 0;
    return { exitCode: 128 + num, signal: sig, message: `daemon killed by ${sig}${why(sig, seccompMode, syscall)}` };
  }
  const exitCode = code ?? 1;
  if (exitCode === 0) return { exitCode };
  return { exitCode, message: `daemon exited with status ${exitCode}` };
}
