// The privilege stage after the file-system sandbox: the open-file limit (process-wide),
// no_new_privs, and the capability sets and bounding set of the calling thread. The kernel
// keeps capabilities per thread, so the daemon runs this on its main thread and again on
// the device worker thread (rlimit only once: it is per process).
import fs from 'node:fs';
import { logger } from '../log.js';
import { SysError } from '../sys/libc.js';
import {
  RLIMIT_NOFILE, ambientClearAll, capBoundingDrop, capBoundingHas, capget, capset, getrlimit,
  setNoNewPrivs, setrlimit,
} from '../sys/process-calls.js';
import { capabilityMask, capabilityName, capabilityNames, lastCapability, resolveCapabilities } from './capabilities.js';
import { sandboxStep as step } from './errors.js';

const log = logger('sandbox');

/** virtiofsd's default RLIMIT_NOFILE ceiling. */
export const DEFAULT_NOFILE = 1_000_000;

export interface PrivilegePlan {
  /** --modcaps as given; ignored when `capabilities` is set. */
  modcaps?: string;
  /** The exact capability names to keep (already resolved, e.g. sent to a worker thread). */
  capabilities?: readonly string[];
  /** --rlimit-nofile; default min(1,000,000, fs.nr_open); 0 leaves the limit unchanged. */
  rlimitNofile?: number;
  /** Set RLIMIT_NOFILE (default true; false on the second thread since it is per process). */
  setRlimit?: boolean;
}

function nrOpen(): number {
  try {
    return Number(fs.readFileSync('/proc/sys/fs/nr_open', 'utf8').trim());
  } catch {
    return DEFAULT_NOFILE;
  }
}

/** Set RLIMIT_NOFILE as virtiofsd does; returns the limit now in force. */
export function setNofileLimit(requested?: number): number {
  const current = getrlimit(RLIMIT_NOFILE);
  // As virtiofsd: 0 leaves the limit as it is.
  if (requested === 0) return Number(current.soft);
  const target = BigInt(requested ?? Math.min(DEFAULT_NOFILE, nrOpen()));
  try {
    setrlimit(RLIMIT_NOFILE, { soft: target, hard: target });
    log.debug(`RLIMIT_NOFILE set to ${target}`);
    return Number(target);
  } catch (err) {
    // Raising the hard limit needs CAP_SYS_RESOURCE; without it, use what we may have.
    if (!(err instanceof SysError) || err.code !== 'EPERM' || target <= current.hard) throw err;
    if (requested !== undefined) {
      throw new SysError('prlimit', err.errno, `RLIMIT_NOFILE ${requested} above the hard limit ${current.hard}`);
    }
    setrlimit(RLIMIT_NOFILE, { soft: current.hard, hard: current.hard });
    log.warn(`RLIMIT_NOFILE: hard limit ${current.hard} is below ${target} and cannot be raised (no CAP_SYS_RESOURCE); using ${current.hard}`);
    return Number(current.hard);
  }
}

/**
 * Drop privileges of the calling thread: (optionally) RLIMIT_NOFILE, PR_SET_NO_NEW_PRIVS,
 * the bounding set emptied, the ambient set
 * cleared, and effective = permitted = kept set, inheritable empty. Throws SandboxError.
 */
export function dropPrivileges(plan: PrivilegePlan = {}): void {
  const keepNames = plan.capabilities !== undefined ? [...plan.capabilities] : resolveCapabilities(plan.modcaps);
  const keep = capabilityMask(keepNames);
  if (plan.setRlimit ?? true) step('rlimit RLIMIT_NOFILE', () => setNofileLimit(plan.rlimitNofile));
  step('prctl PR_SET_NO_NEW_PRIVS', () => setNoNewPrivs());
  const before = step('capget', () => capget());
  // Dropping from the bounding set needs CAP_SETPCAP in the effective set: do it first.
  const last = lastCapability();
  const CAP_SETPCAP = 8;
  if (((before.effective >> BigInt(CAP_SETPCAP)) & 1n) === 0n) {
    // Unprivileged (no user namespace): we cannot touch the bounding set, and need not:
    // with no_new_privs set an exec can gain no capability anyway.
    log.debug('no CAP_SETPCAP: bounding set left as is (no_new_privs already stops any gain at exec)');
  } else step('prctl PR_CAPBSET_DROP', () => {
    // The whole bounding set goes, kept capabilities included (as virtiofsd): it only
    // limits what an exec could gain, the daemon never execs, and the kept set stays in
    // the permitted set, which is what switching back to uid 0 restores from.
    for (let n = 0; n <= last; n++) {
      if (!capBoundingHas(n)) continue;
      try {
        capBoundingDrop(n);
      } catch (err) {
        throw new SysError('prctl(PR_CAPBSET_DROP)', err instanceof SysError ? err.errno : 1, `cap_${capabilityName(n)}`);
      }
    }
  });
  step('prctl PR_CAP_AMBIENT_CLEAR_ALL', () => ambientClearAll());
  // A capability we never had cannot be gained; keep the intersection.
  const kept = keep & before.permitted;
  const missing = keep & ~before.permitted;
  if (missing !== 0n) log.warn(`capabilities not available to keep: ${capabilityNames(missing).join(', ')}`);
  step('capset', () => capset({ effective: kept, permitted: kept, inheritable: 0n }));
  log.debug(`capabilities now ${capabilityNames(kept).join(',') || '(none)'}`);
}
