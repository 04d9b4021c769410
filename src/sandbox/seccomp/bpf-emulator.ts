// Runs a seccomp classic-BPF program on a seccomp_data, as the kernel would, so tests and
// `policy explain` can see what a compiled filter decides without installing it. It also
// enforces what the kernel's checker enforces (forward in-range jumps, aligned loads inside
// seccomp_data, a terminating ret), so a program the emulator accepts is shaped right.
import type { Insn } from './bpf.js';
import {
  BPF_A, BPF_ABS, BPF_ADD, BPF_ALU, BPF_AND, BPF_DIV, BPF_IMM, BPF_JA, BPF_JEQ, BPF_JGE, BPF_JGT, BPF_JMP, BPF_JSET,
  BPF_LD, BPF_LDX, BPF_LEN, BPF_LSH, BPF_MAXINSNS, BPF_MEM, BPF_MEMWORDS, BPF_MISC, BPF_MOD, BPF_MUL, BPF_NEG, BPF_OR,
  BPF_RET, BPF_RSH, BPF_ST, BPF_STX, BPF_SUB, BPF_TAX, BPF_TXA, BPF_W, BPF_X, BPF_XOR, SECCOMP_DATA_SIZE, classOf,
  miscOpOf, modeOf, opOf, retName, rvalOf, sizeOf, srcOf,
} from './bpf.js';

export interface SeccompData {
  nr: number;
  arch: number;
  instructionPointer?: bigint;
  /** Up to six 64-bit arguments; missing ones are 0. */
  args?: readonly bigint[];
}

export interface EmulationResult {
  /** The 32-bit seccomp return value. */
  value: number;
  /** Readable form ("ALLOW", "ERRNO(38)"...). */
  action: string;
  /** pc of the ret instruction that decided. */
  pc: number;
  /** Instructions executed. */
  steps: number;
}

export class BpfRuntimeError extends Error {
  constructor(readonly pc: number, message: string) {
    super(`BPF pc ${pc}: ${message}`);
    this.name = 'BpfRuntimeError';
  }
}

export function seccompDataBytes(d: SeccompData): Buffer {
  const b = Buffer.alloc(SECCOMP_DATA_SIZE);
  b.writeInt32LE(d.nr | 0, 0);
  b.writeUInt32LE(d.arch >>> 0, 4);
  b.writeBigUInt64LE(BigInt.asUintN(64, d.instructionPointer ?? 0n), 8);
  (d.args ?? []).slice(0, 6).forEach((a, i) => b.writeBigUInt64LE(BigInt.asUintN(64, a), 16 + 8 * i));
  return b;
}

export function emulate(prog: readonly Insn[], data: SeccompData): EmulationResult {
  if (prog.length === 0 || prog.length > BPF_MAXINSNS) throw new BpfRuntimeError(0, `program length ${prog.length} out of 1..${BPF_MAXINSNS}`);
  const mem = seccompDataBytes(data);
  const M = new Uint32Array(BPF_MEMWORDS);
  let A = 0;
  let X = 0;
  let pc = 0;
  let steps = 0;
  const target = (off: number): number => {
    const t = pc + 1 + off;
    if (t >= prog.length) throw new BpfRuntimeError(pc, `jump to ${t} past the end (${prog.length})`);
    return t;
  };
  for (;;) {
    if (pc >= prog.length) throw new BpfRuntimeError(pc, 'fell off the end without ret');
    const ins = prog[pc]!;
    steps++;
    const code = ins.code;
    const k = ins.k >>> 0;
    switch (classOf(code)) {
      case BPF_LD:
      case BPF_LDX: {
        const isX = classOf(code) === BPF_LDX;
        let v: number;
        const mode = modeOf(code);
        if (mode === BPF_IMM) v = k;
        else if (mode === BPF_MEM) {
          if (k >= BPF_MEMWORDS) throw new BpfRuntimeError(pc, `scratch slot ${k} out of range`);
          v = M[k]!;
        } else if (mode === BPF_LEN) v = SECCOMP_DATA_SIZE;
        else if (mode === BPF_ABS && !isX) {
          if (sizeOf(code) !== BPF_W) throw new BpfRuntimeError(pc, 'seccomp allows only 32-bit loads');
          if (k % 4 !== 0 || k + 4 > SECCOMP_DATA_SIZE) throw new BpfRuntimeError(pc, `load at offset ${k} outside seccomp_data`);
          v = mem.readUInt32LE(k);
        } else throw new BpfRuntimeError(pc, `load mode 0x${mode.toString(16)} not allowed in seccomp`);
        if (isX) X = v; else A = v;
        pc++;
        break;
      }
      case BPF_ST:
      case BPF_STX:
        if (k >= BPF_MEMWORDS) throw new BpfRuntimeError(pc, `scratch slot ${k} out of range`);
        M[k] = classOf(code) === BPF_ST ? A : X;
        pc++;
        break;
      case BPF_ALU: {
        const src = srcOf(code) === BPF_X ? X : k;
        switch (opOf(code)) {
          case BPF_ADD: A = (A + src) >>> 0; break;
          case BPF_SUB: A = (A - src) >>> 0; break;
          case BPF_MUL: A = Math.imul(A, src) >>> 0; break;
          case BPF_DIV: if (src === 0) return ret(0, pc, steps); A = Math.floor(A / src) >>> 0; break;
          case BPF_MOD: if (src === 0) return ret(0, pc, steps); A = (A % src) >>> 0; break;
          case BPF_OR: A = (A | src) >>> 0; break;
          case BPF_AND: A = (A & src) >>> 0; break;
          case BPF_XOR: A = (A ^ src) >>> 0; break;
          case BPF_LSH: A = src >= 32 ? 0 : (A << src) >>> 0; break;
          case BPF_RSH: A = src >= 32 ? 0 : A >>> src; break;
          case BPF_NEG: A = -A >>> 0; break;
          default: throw new BpfRuntimeError(pc, `bad ALU op 0x${code.toString(16)}`);
        }
        pc++;
        break;
      }
      case BPF_JMP: {
        const op = opOf(code);
        if (op === BPF_JA) { pc = target(k); break; }
        const src = srcOf(code) === BPF_X ? X : k;
        let cond: boolean;
        if (op === BPF_JEQ) cond = A === src;
        else if (op === BPF_JGT) cond = A > src;
        else if (op === BPF_JGE) cond = A >= src;
        else if (op === BPF_JSET) cond = (A & src) !== 0;
        else throw new BpfRuntimeError(pc, `bad jump op 0x${code.toString(16)}`);
        pc = target(cond ? ins.jt : ins.jf);
        break;
      }
      case BPF_RET:
        return ret(rvalOf(code) === BPF_A ? A : k, pc, steps);
      case BPF_MISC:
        if (miscOpOf(code) === BPF_TAX) X = A;
        else if (miscOpOf(code) === BPF_TXA) A = X;
        else throw new BpfRuntimeError(pc, `bad misc op 0x${code.toString(16)}`);
        pc++;
        break;
      default:
        throw new BpfRuntimeError(pc, `bad instruction class in 0x${code.toString(16)}`);
    }
  }
}

function ret(value: number, pc: number, steps: number): EmulationResult {
  return { value: value >>> 0, action: retName(value), pc, steps };
}
