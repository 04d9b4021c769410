// Process-attribute system calls the sandbox stage needs and Node lacks: prctl (no_new_privs,
// bounding set, ambient set, keepcaps), capget/capset on the calling thread, and prlimit.
// capset and the prctl capability calls act on the calling thread only (see DESIGN.md), so
// every thread that must lose privileges calls these itself.
import { libc, check } from './libc.js';

const prctlRaw = libc.func('int prctl(int option, unsigned long a2, unsigned long a3, unsigned long a4, unsigned long a5)');
const capgetRaw = libc.func('int capget(void *hdr, void *data)');
const capsetRaw = libc.func('int capset(void *hdr, const void *data)');
const prlimitRaw = libc.func('int prlimit(int pid, int resource, const void *newLimit, void *oldLimit)');
const gettidRaw = libc.func('int gettid()');

export const PR_SET_KEEPCAPS = 8;
export const PR_CAPBSET_READ = 23;
export const PR_CAPBSET_DROP = 24;
export const PR_SET_NO_NEW_PRIVS = 38;
export const PR_GET_NO_NEW_PRIVS = 39;
export const PR_CAP_AMBIENT = 47;
export const PR_CAP_AMBIENT_CLEAR_ALL = 4;

export const RLIMIT_NOFILE = 7;
/** RLIM_INFINITY as the kernel reports it (all ones, 64 bits). */
export const RLIM_INFINITY = 0xffffffffffffffffn;

/** _LINUX_CAPABILITY_VERSION_3: two 32-bit words per set, 64 capabilities. */
const CAP_VERSION_3 = 0x20080522;
// struct __user_cap_header_struct { u32 version; int pid; }
const CAP_HEADER_SIZE = 8;
// struct __user_cap_data_struct { u32 effective, permitted, inheritable; } x 2
const CAP_DATA_WORD_SIZE = 12;
const CAP_DATA_OFF_EFFECTIVE = 0;
const CAP_DATA_OFF_PERMITTED = 4;
const CAP_DATA_OFF_INHERITABLE = 8;

/** The three capability sets of one thread, as 64-bit masks (bit n = capability n). */
export interface CapabilitySets {
  effective: bigint;
  permitted: bigint;
  inheritable: bigint;
}

export function prctl(option: number, a2 = 0, a3 = 0, a4 = 0, a5 = 0): number {
  return check(prctlRaw(option, a2, a3, a4, a5), 'prctl', `option ${option}`);
}

export function gettid(): number {
  return gettidRaw();
}

function capHeader(): Buffer {
  const hdr = Buffer.alloc(CAP_HEADER_SIZE);
  hdr.writeUInt32LE(CAP_VERSION_3, 0);
  hdr.writeInt32LE(0, 4); // 0: the calling thread
  return hdr;
}

function readMask(data: Buffer, off: number): bigint {
  return BigInt(data.readUInt32LE(off)) | (BigInt(data.readUInt32LE(CAP_DATA_WORD_SIZE + off)) << 32n);
}

function writeMask(data: Buffer, off: number, mask: bigint): void {
  data.writeUInt32LE(Number(mask & 0xffffffffn), off);
  data.writeUInt32LE(Number((mask >> 32n) & 0xffffffffn), CAP_DATA_WORD_SIZE + off);
}

/** Capability sets of the calling thread. */
export function capget(): CapabilitySets {
  const data = Buffer.alloc(2 * CAP_DATA_WORD_SIZE);
  check(capgetRaw(capHeader(), data), 'capget');
  return {
    effective: readMask(data, CAP_DATA_OFF_EFFECTIVE),
    permitted: readMask(data, CAP_DATA_OFF_PERMITTED),
    inheritable: readMask(data, CAP_DATA_OFF_INHERITABLE),
  };
}

/** Replace the capability sets of the calling thread. */
export function capset(sets: CapabilitySets): void {
  const data = Buffer.alloc(2 * CAP_DATA_WORD_SIZE);
  writeMask(data, CAP_DATA_OFF_EFFECTIVE, sets.effective);
  writeMask(data, CAP_DATA_OFF_PERMITTED, sets.permitted);
  writeMask(data, CAP_DATA_OFF_INHERITABLE, sets.inheritable);
  check(capsetRaw(capHeader(), data), 'capset');
}

/** Whether capability `cap` is in the calling thread's bounding set. */
export function capBoundingHas(cap: number): boolean {
  return check(prctlRaw(PR_CAPBSET_READ, cap, 0, 0, 0), 'prctl(PR_CAPBSET_READ)', `cap ${cap}`) === 1;
}

export function capBoundingDrop(cap: number): void {
  check(prctlRaw(PR_CAPBSET_DROP, cap, 0, 0, 0), 'prctl(PR_CAPBSET_DROP)', `cap ${cap}`);
}

export function ambientClearAll(): void {
  check(prctlRaw(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), 'prctl(PR_CAP_AMBIENT_CLEAR_ALL)');
}

export function setNoNewPrivs(): void {
  check(prctlRaw(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 'prctl(PR_SET_NO_NEW_PRIVS)');
}

export function getNoNewPrivs(): boolean {
  return check(prctlRaw(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0), 'prctl(PR_GET_NO_NEW_PRIVS)') === 1;
}

export interface ResourceLimit {
  soft: bigint;
  hard: bigint;
}

// struct rlimit64 { u64 rlim_cur; u64 rlim_max; }
const RLIMIT_SIZE = 16;

/** Read a resource limit of this process. */
export function getrlimit(resource: number): ResourceLimit {
  const old = Buffer.alloc(RLIMIT_SIZE);
  check(prlimitRaw(0, resource, null, old), 'prlimit', `resource ${resource}`);
  return { soft: old.readBigUInt64LE(0), hard: old.readBigUInt64LE(8) };
}

/** Set a resource limit of this process (process-wide, unlike capabilities). */
export function setrlimit(resource: number, limit: ResourceLimit): void {
  const buf = Buffer.alloc(RLIMIT_SIZE);
  buf.writeBigUInt64LE(limit.soft, 0);
  buf.writeBigUInt64LE(limit.hard, 8);
  check(prlimitRaw(0, resource, buf, null), 'prlimit', `resource ${resource}`);
}
