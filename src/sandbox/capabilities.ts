// Capability names and the set the file server keeps. The default set is virtiofsd's: what a
// passthrough needs to create files as any owner, chown, set modes and times on files it does
// not own, and make device nodes. `--modcaps` (virtiofsd syntax, "+sys_admin:-mknod") edits it.
// Parsing is pure so the launcher can refuse a bad --modcaps before anything is spawned.
import fs from 'node:fs';

/** Kernel capability numbers (linux/capability.h), lower-case without the CAP_ prefix. */
export const CAPABILITY_NAMES: readonly string[] = [
  'chown', 'dac_override', 'dac_read_search', 'fowner', 'fsetid', 'kill', 'setgid', 'setuid',
  'setpcap', 'linux_immutable', 'net_bind_service', 'net_broadcast', 'net_admin', 'net_raw',
  'ipc_lock', 'ipc_owner', 'sys_module', 'sys_rawio', 'sys_chroot', 'sys_ptrace', 'sys_pacct',
  'sys_admin', 'sys_boot', 'sys_nice', 'sys_resource', 'sys_time', 'sys_tty_config', 'mknod',
  'lease', 'audit_write', 'audit_control', 'setfcap', 'mac_override', 'mac_admin', 'syslog',
  'wake_alarm', 'block_suspend', 'audit_read', 'perfmon', 'bpf', 'checkpoint_restore',
];

export const DEFAULT_CAPABILITIES: readonly string[] = [
  'chown', 'dac_override', 'fowner', 'fsetid', 'setgid', 'setuid', 'mknod', 'setfcap',
];

export class CapabilityError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'CapabilityError';
  }
}

/** Highest capability number the running kernel knows. */
export function lastCapability(): number {
  try {
    const n = Number(fs.readFileSync('/proc/sys/kernel/cap_last_cap', 'utf8').trim());
    if (Number.isInteger(n) && n > 0 && n < 64) return n;
  } catch {
    // fall through: /proc may be missing in odd environments
  }
  return CAPABILITY_NAMES.length - 1;
}

/** "CAP_CHOWN", "cap_chown" or "chown" -> capability number. */
export function capabilityNumber(name: string): number | undefined {
  const bare = name.trim().toLowerCase().replace(/^cap_/, '');
  const n = CAPABILITY_NAMES.indexOf(bare);
  return n < 0 ? undefined : n;
}

export function capabilityName(n: number): string {
  return CAPABILITY_NAMES[n] ?? `cap_${n}`;
}

/**
 * Apply a virtiofsd-style modification list to the default set: items separated by ':'
 * (',' accepted too), each '+name' or '-name'. Throws CapabilityError naming the bad item.
 */
export function resolveCapabilities(modcaps?: string): string[] {
  const keep = new Set(DEFAULT_CAPABILITIES);
  if (modcaps === undefined || modcaps === '') return [...keep];
  for (const raw of modcaps.split(/[:,]/)) {
    const item = raw.trim();
    if (item === '') continue;
    const sign = item[0];
    if (sign !== '+' && sign !== '-') {
      throw new CapabilityError(`--modcaps: '${item}' must start with + or - (e.g. +sys_admin:-mknod)`);
    }
    const n = capabilityNumber(item.slice(1));
    if (n === undefined) {
      throw new CapabilityError(`--modcaps: '${item.slice(1)}' is not a capability name (e.g. chown or CAP_CHOWN; see capabilities(7))`);
    }
    const name = capabilityName(n);
    if (sign === '+') keep.add(name);
    else keep.delete(name);
  }
  return CAPABILITY_NAMES.filter((c) => keep.has(c));
}

/** Bit mask of a list of capability names (names must be valid). */
export function capabilityMask(names: readonly string[]): bigint {
  let mask = 0n;
  for (const name of names) {
    const n = capabilityNumber(name);
    if (n === undefined) throw new CapabilityError(`unknown capability '${name}'`);
    mask |= 1n << BigInt(n);
  }
  return mask;
}

/** Names of the capabilities in a mask, for log lines and test messages. */
export function capabilityNames(mask: bigint): string[] {
  const out: string[] = [];
  for (let n = 0; n < 64; n++) if ((mask >> BigInt(n)) & 1n) out.push(capabilityName(n));
  return out;
}
