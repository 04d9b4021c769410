// A SIGBUS guard for guest memory. A frontend that ftruncates a memory file smaller after
// we mapped it turns our next load or store in the lost pages into SIGBUS, whose default
// action kills the daemon; a file we could seal (memory-calls.ts sealShrink) cannot shrink,
// this guard covers the others (memfds without MFD_ALLOW_SEALING, /dev/shm and hugetlbfs
// files). JS cannot catch a synchronous signal, so the handler is 142 bytes of x86_64
// machine code (source below) in a page of its own, read-only and executable, installed with
// sigaction(SA_SIGINFO). It reads a table in a data mapping that this module keeps up to
// date: one entry per guest mapping. A fault whose si_addr lies in one gets an anonymous
// zero page mapped MAP_FIXED over the faulting page (so the instruction re-executes and
// completes; the bytes are garbage to us and never reach the guest's file), and a counter
// is bumped, which the device loop reads after each request and turns into a failed
// request and stopped queues (vhost/device.ts). A fault anywhere else, or a remap that
// fails, resets SIGBUS to SIG_DFL and returns, so the instruction faults again and the
// process dies exactly as it would have without the guard. Only user-space accesses raise
// SIGBUS: the kernel's own copies into guest buffers (preadv/pwritev) get EFAULT instead.
// Syscalls the handler makes after the seccomp filter: mmap, rt_sigaction, rt_sigreturn
// (all in policies/). Only x86_64 has machine code here (it could be checked on this
// machine); elsewhere guardAvailable() is false and unsealable regions are refused.
import koffi from 'koffi';
import { libc, lastErrno, SysError } from './libc.js';

const mmapRaw = libc.func('void *mmap(void *addr, size_t length, int prot, int flags, int fd, int64_t offset)');
const mprotectRaw = libc.func('int mprotect(void *addr, size_t length, int prot)');
const sigactionRaw = libc.func('int sigaction(int sig, const void *act, void *oldact)');

const PROT_READ = 1;
const PROT_WRITE = 2;
const PROT_EXEC = 4;
const MAP_PRIVATE = 0x02;
const MAP_ANONYMOUS = 0x20;
const SIGBUS = 7;
const SA_SIGINFO = 4;
const MAP_FAILED = (1n << 64n) - 1n;

/** glibc's struct sigaction on x86_64: handler, 128-byte sa_mask, int sa_flags (+pad), sa_restorer. */
const SIGACTION = { bytes: 152, handler: 0, flags: 136 } as const;

/**
 * The data mapping the handler reads (all fields u64, little endian). DFL_ACTION is a
 * zeroed kernel struct sigaction (handler SIG_DFL) for the handler's rt_sigaction.
 */
export const GUARD_DATA = {
  bytes: 32768,
  faults: 0,
  lastAddress: 8,
  count: 16,
  dflAction: 40,
  entries: 128,
  /** Per entry: start, end (exclusive), page size to replace, unused. */
  entryBytes: 32,
  entryStart: 0,
  entryEnd: 8,
  entryPage: 16,
} as const;
export const MAX_GUARDED = (GUARD_DATA.bytes - GUARD_DATA.entries) / GUARD_DATA.entryBytes;

/*
 * The x86_64 handler, void h(int sig, siginfo_t *si, void *uc); only caller-saved registers
 * are used, no stack. DATA is patched in at both movabs immediates.
 *    movabs r8, DATA
 *    mov  rax, [rsi+16]            ; si_addr
 *    mov  rcx, [r8+16]             ; entry count
 *    lea  r9, [r8+128]             ; first entry
 * 1: test rcx, rcx ; jz 3f
 *    cmp  rax, [r9]   ; jb 2f      ; below start
 *    cmp  rax, [r9+8] ; jb 4f      ; below end: a guest mapping
 * 2: add r9, 32 ; dec rcx ; jmp 1b
 * 4: inc  qword [r8] ; mov [r8+8], rax
 *    mov  rsi, [r9+16] ; mov rdi, rsi ; neg rdi ; and rdi, rax     ; page start
 *    mov  edx, 3 ; mov r10d, 0x32 ; mov r8, -1 ; xor r9d, r9d        ; RW, PRIVATE|FIXED|ANON
 *    mov  eax, 9 ; syscall          ; mmap
 *    cmp  rax, -4095 ; jae 5f ; ret
 * 5: movabs r8, DATA
 * 3: mov  edi, 7 ; lea rsi, [r8+40] ; xor edx, edx ; mov r10d, 8
 *    mov  eax, 13 ; syscall ; ret   ; rt_sigaction(SIGBUS, SIG_DFL)
 */
const X86_64_HANDLER =
  '49b88877665544332211488b4610498b48104d8d88800000004885c97457493b017206493b410872094983c12048ffc9ebe7' +
  '49ff0049894008498b71104889f748f7df4821c7ba0300000041ba3200000049c7c0ffffffff4531c9b8090000000f05483d' +
  '01f0ffff7301c349b88877665544332211bf07000000498d702831d241ba08000000b80d0000000f05c3';
const X86_64_DATA_IMMEDIATES = [2, 0x6d];

/** Why the guard could not be installed (logged once by its users). */
export class GuardUnavailable extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'GuardUnavailable';
  }
}

function mapAnon(length: number): bigint {
  const ret: unknown = mmapRaw(null, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  const addr = typeof ret === 'bigint' ? ret : ret === null ? 0n : koffi.address(ret);
  if (addr === MAP_FAILED || addr === 0n) throw new SysError('mmap', lastErrno(), `anonymous ${length} bytes`);
  return addr;
}

class SigbusGuard {
  private readonly data: BigUint64Array;
  private seen = 0n;

  constructor(dataAddr: bigint) {
    this.data = new BigUint64Array(koffi.view(dataAddr, GUARD_DATA.bytes));
  }

  private get count(): number {
    return Number(this.data[GUARD_DATA.count / 8]);
  }

  private entry(i: number, field: number): number {
    return (GUARD_DATA.entries + i * GUARD_DATA.entryBytes + field) / 8;
  }

  /** Cover [start, start + length) of a mapping; a fault there replaces `pageSize`-byte pages. */
  add(start: bigint, length: number, pageSize: number): void {
    const n = this.count;
    if (n >= MAX_GUARDED) throw new GuardUnavailable(`more than ${MAX_GUARDED} guarded mappings`);
    const d = this.data;
    d[this.entry(n, GUARD_DATA.entryStart)] = start;
    d[this.entry(n, GUARD_DATA.entryEnd)] = start + BigInt(length);
    d[this.entry(n, GUARD_DATA.entryPage)] = BigInt(pageSize);
    // The count last: the entry is complete before the handler can look at it.
    d[GUARD_DATA.count / 8] = BigInt(n + 1);
  }

  /** Stop covering the mapping that starts at `start` (before it is unmapped). */
  remove(start: bigint): void {
    const n = this.count;
    const d = this.data;
    for (let i = 0; i < n; i++) {
      if (d[this.entry(i, GUARD_DATA.entryStart)] !== start) continue;
      // Move the last entry into the hole, then shrink the count.
      for (const f of [GUARD_DATA.entryStart, GUARD_DATA.entryEnd, GUARD_DATA.entryPage]) d[this.entry(i, f)] = d[this.entry(n - 1, f)];
      d[GUARD_DATA.count / 8] = BigInt(n - 1);
      return;
    }
  }

  /** Faults absorbed since the last call, and the address of the latest. */
  takeFaults(): { count: number; address: bigint } | undefined {
    const total = this.data[GUARD_DATA.faults / 8];
    if (total === this.seen) return undefined;
    const count = Number(total - this.seen);
    this.seen = total;
    return { count, address: this.data[GUARD_DATA.lastAddress / 8] };
  }

  /** Faults absorbed since the guard was installed (for tests). */
  get totalFaults(): number {
    return Number(this.data[GUARD_DATA.faults / 8]);
  }
}

let guard: SigbusGuard | undefined;
let unavailable: GuardUnavailable | undefined;

function install(): SigbusGuard {
  if (process.arch !== 'x64') throw new GuardUnavailable(`no SIGBUS handler for ${process.arch} (only x86_64 machine code is written and tested)`);
  const old = Buffer.alloc(SIGACTION.bytes);
  if (sigactionRaw(SIGBUS, null, old) < 0) throw new SysError('sigaction', lastErrno(), 'SIGBUS (query)');
  // Someone else (a native addon, a later Node) handles SIGBUS: chaining to it from machine
  // code is more than this needs; leave it alone and refuse unsealable regions instead.
  if (old.readBigUInt64LE(SIGACTION.handler) !== 0n) throw new GuardUnavailable('SIGBUS already has a handler in this process');
  const dataAddr = mapAnon(GUARD_DATA.bytes);
  const code = Buffer.from(X86_64_HANDLER, 'hex');
  const imm = Buffer.alloc(8);
  imm.writeBigUInt64LE(dataAddr);
  for (const at of X86_64_DATA_IMMEDIATES) {
    if (code.readBigUInt64LE(at) !== 0x1122334455667788n) throw new Error('sigbus-guard: handler immediate not where expected');
    imm.copy(code, at);
  }
  const codeAddr = mapAnon(4096);
  code.copy(Buffer.from(koffi.view(codeAddr, 4096)));
  if (mprotectRaw(codeAddr, 4096, PROT_READ | PROT_EXEC) < 0) throw new SysError('mprotect', lastErrno(), 'SIGBUS handler page');
  const act = Buffer.alloc(SIGACTION.bytes);
  act.writeBigUInt64LE(codeAddr, SIGACTION.handler);
  act.writeInt32LE(SA_SIGINFO, SIGACTION.flags);
  if (sigactionRaw(SIGBUS, act, null) < 0) throw new SysError('sigaction', lastErrno(), 'SIGBUS');
  return new SigbusGuard(dataAddr);
}

/**
 * The process's guard, installed on first call (the device thread calls it before the
 * seccomp filter); undefined when it cannot exist here (see lastGuardError()).
 */
export function sigbusGuard(): SigbusGuard | undefined {
  if (guard !== undefined || unavailable !== undefined) return guard;
  try {
    guard = install();
  } catch (err) {
    unavailable = err instanceof GuardUnavailable ? err : new GuardUnavailable(`SIGBUS guard not installed: ${(err as Error).message}`);
  }
  return guard;
}

/** Why sigbusGuard() returned undefined, if it did. */
export function lastGuardError(): GuardUnavailable | undefined {
  return unavailable;
}

export type { SigbusGuard };
