// The architectures the seccomp compiler targets: their AUDIT_ARCH_* values (what the
// kernel puts in seccomp_data.arch), their OCI names, and their generated syscall tables.
// A filter compiled for one arch must never be judged with another arch's numbers, so
// every lookup goes through an ArchInfo.
import { AARCH64_SYSCALLS } from './syscalls-aarch64.js';
import { X86_64_SYSCALLS } from './syscalls-x86_64.js';

export type Arch = 'x86_64' | 'aarch64';
export const ARCHES: readonly Arch[] = ['x86_64', 'aarch64'];

export interface ArchInfo {
  readonly name: Arch;
  /** AUDIT_ARCH_* from linux/audit.h: EM_* | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE. */
  readonly auditArch: number;
  /** The OCI / libseccomp spelling, as in a profile's "architectures". */
  readonly ociName: string;
  readonly byName: ReadonlyMap<string, number>;
  readonly byNumber: ReadonlyMap<number, string>;
  /** Syscall numbers with this bit set belong to another ABI sharing the arch value (x32). */
  readonly foreignAbiBit?: number;
}

const AUDIT_ARCH_64BIT = 0x80000000;
const AUDIT_ARCH_LE = 0x40000000;
const EM_X86_64 = 62;
const EM_AARCH64 = 183;
/** __X32_SYSCALL_BIT from asm/unistd.h: x32 processes report AUDIT_ARCH_X86_64 too. */
export const X32_SYSCALL_BIT = 0x40000000;

function info(name: Arch, auditArch: number, ociName: string, table: Readonly<Record<string, number>>,
  foreignAbiBit?: number): ArchInfo {
  const byName = new Map(Object.entries(table));
  const byNumber = new Map<number, string>();
  for (const [n, nr] of byName) byNumber.set(nr, n);
  return { name, auditArch: auditArch >>> 0, ociName, byName, byNumber, foreignAbiBit };
}

const INFOS: Record<Arch, ArchInfo> = {
  x86_64: info('x86_64', EM_X86_64 | AUDIT_ARCH_64BIT | AUDIT_ARCH_LE, 'SCMP_ARCH_X86_64', X86_64_SYSCALLS,
    X32_SYSCALL_BIT),
  aarch64: info('aarch64', EM_AARCH64 | AUDIT_ARCH_64BIT | AUDIT_ARCH_LE, 'SCMP_ARCH_AARCH64', AARCH64_SYSCALLS),
};

/** OCI architecture names we recognise in a profile; only those mapped to an Arch are compiled. */
export const OCI_ARCH_NAMES: ReadonlyMap<string, Arch | null> = new Map<string, Arch | null>([
  ['SCMP_ARCH_X86_64', 'x86_64'], ['SCMP_ARCH_AARCH64', 'aarch64'],
  ['SCMP_ARCH_X86', null], ['SCMP_ARCH_X32', null], ['SCMP_ARCH_ARM', null],
  ['SCMP_ARCH_MIPS', null], ['SCMP_ARCH_MIPS64', null], ['SCMP_ARCH_MIPS64N32', null],
  ['SCMP_ARCH_MIPSEL', null], ['SCMP_ARCH_MIPSEL64', null], ['SCMP_ARCH_MIPSEL64N32', null],
  ['SCMP_ARCH_PPC', null], ['SCMP_ARCH_PPC64', null], ['SCMP_ARCH_PPC64LE', null],
  ['SCMP_ARCH_S390', null], ['SCMP_ARCH_S390X', null], ['SCMP_ARCH_RISCV64', null],
  ['SCMP_ARCH_LOONGARCH64', null],
]);

export function archInfo(arch: Arch): ArchInfo {
  return INFOS[arch];
}

export function isArch(s: string): s is Arch {
  return (ARCHES as readonly string[]).includes(s);
}

/** The arch of the running Node process, or undefined when we have no table for it. */
export function hostArch(): Arch | undefined {
  if (process.arch === 'x64') return 'x86_64';
  if (process.arch === 'arm64') return 'aarch64';
  return undefined;
}

/** Arch whose AUDIT_ARCH value is `value`, if any (used by the disassembler). */
export function archByAudit(value: number): ArchInfo | undefined {
  return Object.values(INFOS).find((a) => a.auditArch === value >>> 0);
}
