// The one error type of the sandbox stage: which step failed and with what errno, so the
// daemon can fail closed with a line an operator can act on.
import { SysError, errnoName } from '../sys/libc.js';
import { logger } from '../log.js';

const log = logger('sandbox');

export class SandboxError extends Error {
  readonly step: string;
  /** errno of the failed call, 0 when the failure was not a system call. */
  readonly errno: number;
  readonly code: string;

  constructor(step: string, errno: number, detail: string) {
    super(`sandbox step '${step}' failed: ${detail}`);
    this.name = 'SandboxError';
    this.step = step;
    this.errno = errno;
    this.code = errno === 0 ? 'EUNKNOWN' : errnoName(errno);
  }

  static from(step: string, err: unknown): SandboxError {
    if (err instanceof SandboxError) return err;
    if (err instanceof SysError) return new SandboxError(step, err.errno, err.message);
    if (typeof err === 'object' && err !== null && 'errno' in err && typeof (err as { errno: unknown }).errno === 'number') {
      const e = err as { errno: number; message?: string };
      return new SandboxError(step, Math.abs(e.errno), e.message ?? errnoName(Math.abs(e.errno)));
    }
    return new SandboxError(step, 0, err instanceof Error ? err.message : String(err));
  }
}

/** Run one named step of the sandbox stage: logged at debug, any failure a SandboxError naming it. */
export function sandboxStep<T>(name: string, fn: () => T): T {
  log.debug(name);
  try {
    return fn();
  } catch (err) {
    throw SandboxError.from(name, err);
  }
}
