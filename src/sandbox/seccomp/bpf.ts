// Classic BPF as seccomp uses it: the instruction encoding (struct sock_filter, 8 bytes:
// u16 code, u8 jt, u8 jf, u32 k, little-endian on our targets), the opcode fields from
// linux/bpf_common.h and linux/filter.h, the seccomp return values from linux/seccomp.h
// and the seccomp_data layout. Compiler, emulator and disassembler all use these names.

export interface Insn {
  code: number;
  jt: number;
  jf: number;
  k: number;
}

export const SOCK_FILTER_SIZE = 8;
/** BPF_MAXINSNS: the kernel refuses longer programs. */
export const BPF_MAXINSNS = 4096;
/** BPF_MEMWORDS: scratch memory slots M[0..15]. */
export const BPF_MEMWORDS = 16;

// Instruction classes.
export const BPF_LD = 0x00;
export const BPF_LDX = 0x01;
export const BPF_ST = 0x02;
export const BPF_STX = 0x03;
export const BPF_ALU = 0x04;
export const BPF_JMP = 0x05;
export const BPF_RET = 0x06;
export const BPF_MISC = 0x07;
export const classOf = (code: number): number => code & 0x07;

// ld/ldx fields.
export const BPF_W = 0x00;
export const BPF_H = 0x08;
export const BPF_B = 0x10;
export const sizeOf = (code: number): number => code & 0x18;
export const BPF_IMM = 0x00;
export const BPF_ABS = 0x20;
export const BPF_IND = 0x40;
export const BPF_MEM = 0x60;
export const BPF_LEN = 0x80;
export const BPF_MSH = 0xa0;
export const modeOf = (code: number): number => code & 0xe0;

// alu/jmp fields.
export const BPF_ADD = 0x00;
export const BPF_SUB = 0x10;
export const BPF_MUL = 0x20;
export const BPF_DIV = 0x30;
export const BPF_OR = 0x40;
export const BPF_AND = 0x50;
export const BPF_LSH = 0x60;
export const BPF_RSH = 0x70;
export const BPF_NEG = 0x80;
export const BPF_MOD = 0x90;
export const BPF_XOR = 0xa0;
export const BPF_JA = 0x00;
export const BPF_JEQ = 0x10;
export const BPF_JGT = 0x20;
export const BPF_JGE = 0x30;
export const BPF_JSET = 0x40;
export const opOf = (code: number): number => code & 0xf0;
export const BPF_K = 0x00;
export const BPF_X = 0x08;
export const srcOf = (code: number): number => code & 0x08;
// ret fields.
export const BPF_A = 0x10;
export const rvalOf = (code: number): number => code & 0x18;
// misc fields.
export const BPF_TAX = 0x00;
export const BPF_TXA = 0x80;
export const miscOpOf = (code: number): number => code & 0xf8;

// seccomp return values (linux/seccomp.h). The top 16 bits select the action; the low
// 16 bits are data (the errno for ERRNO, a message for TRACE).
export const SECCOMP_RET_KILL_PROCESS = 0x80000000;
export const SECCOMP_RET_KILL_THREAD = 0x00000000;
export const SECCOMP_RET_TRAP = 0x00030000;
export const SECCOMP_RET_ERRNO = 0x00050000;
export const SECCOMP_RET_USER_NOTIF = 0x7fc00000;
export const SECCOMP_RET_TRACE = 0x7ff00000;
export const SECCOMP_RET_LOG = 0x7ffc0000;
export const SECCOMP_RET_ALLOW = 0x7fff0000;
export const SECCOMP_RET_ACTION_FULL = 0xffff0000;
export const SECCOMP_RET_DATA = 0x0000ffff;

// struct seccomp_data { int nr; __u32 arch; __u64 instruction_pointer; __u64 args[6]; }
export const SECCOMP_DATA_SIZE = 64;
export const OFF_NR = 0;
export const OFF_ARCH = 4;
export const OFF_IP_LO = 8;
export const OFF_IP_HI = 12;
export const OFF_ARGS = 16;
/** Offset of the low (little-endian) 32-bit word of args[i]; the high word is 4 bytes on. */
export const argLo = (i: number): number => OFF_ARGS + 8 * i;
export const argHi = (i: number): number => OFF_ARGS + 8 * i + 4;

export const stmt = (code: number, k: number): Insn => ({ code, jt: 0, jf: 0, k: k >>> 0 });
export const jump = (code: number, k: number, jt: number, jf: number): Insn => ({ code, jt, jf, k: k >>> 0 });

/** Serialise to the raw struct sock_filter array (what bwrap --seccomp and SECCOMP_SET_MODE_FILTER read). */
export function encodeProgram(prog: readonly Insn[]): Buffer {
  const buf = Buffer.alloc(prog.length * SOCK_FILTER_SIZE);
  prog.forEach((ins, i) => {
    const o = i * SOCK_FILTER_SIZE;
    buf.writeUInt16LE(ins.code, o);
    buf.writeUInt8(ins.jt, o + 2);
    buf.writeUInt8(ins.jf, o + 3);
    buf.writeUInt32LE(ins.k >>> 0, o + 4);
  });
  return buf;
}

export class BpfDecodeError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'BpfDecodeError';
  }
}

export function decodeProgram(buf: Buffer): Insn[] {
  if (buf.length === 0 || buf.length % SOCK_FILTER_SIZE !== 0) {
    throw new BpfDecodeError(`BPF program size ${buf.length} is not a positive multiple of ${SOCK_FILTER_SIZE}`);
  }
  const out: Insn[] = [];
  for (let o = 0; o < buf.length; o += SOCK_FILTER_SIZE) {
    out.push({ code: buf.readUInt16LE(o), jt: buf.readUInt8(o + 2), jf: buf.readUInt8(o + 3), k: buf.readUInt32LE(o + 4) });
  }
  return out;
}

/** Human name of a seccomp return value ("ALLOW", "ERRNO(1)", "KILL_PROCESS"). */
export function retName(v: number): string {
  const action = (v & SECCOMP_RET_ACTION_FULL) >>> 0;
  const data = v & SECCOMP_RET_DATA;
  switch (action) {
    case SECCOMP_RET_KILL_PROCESS: return 'KILL_PROCESS';
    case SECCOMP_RET_KILL_THREAD: return 'KILL_THREAD';
    case SECCOMP_RET_TRAP: return 'TRAP';
    case SECCOMP_RET_ERRNO: return `ERRNO(${data})`;
    case SECCOMP_RET_USER_NOTIF: return 'USER_NOTIF';
    case SECCOMP_RET_TRACE: return `TRACE(${data})`;
    case SECCOMP_RET_LOG: return 'LOG';
    case SECCOMP_RET_ALLOW: return 'ALLOW';
    default: return `0x${(v >>> 0).toString(16)}`;
  }
}
