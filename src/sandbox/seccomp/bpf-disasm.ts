// Turns a seccomp BPF program back into readable assembly for auditors: one line per
// instruction with its raw encoding, absolute jump targets, and comments naming what the
// accumulator holds (nr, arch, an argument word) and, for syscall-number compares, the
// syscall's name in the arch the program checks for. A forward data-flow pass tracks A
// (classic BPF only jumps forward, so one pass in pc order sees every predecessor first).
import type { ArchInfo } from './arch.js';
import { archByAudit } from './arch.js';
import type { Insn } from './bpf.js';
import {
  BPF_A, BPF_ABS, BPF_ALU, BPF_IMM, BPF_JA, BPF_JEQ, BPF_JGE, BPF_JGT, BPF_JMP, BPF_JSET, BPF_LD, BPF_LDX, BPF_LEN,
  BPF_MEM, BPF_MISC, BPF_RET, BPF_ST, BPF_STX, BPF_TAX, BPF_X, OFF_ARCH, OFF_ARGS, OFF_IP_HI, OFF_IP_LO, OFF_NR,
  classOf, miscOpOf, modeOf, opOf, retName, rvalOf, srcOf,
} from './bpf.js';

const UNKNOWN = '?';
const ALU_NAMES: Record<number, string> = {
  0x00: 'add', 0x10: 'sub', 0x20: 'mul', 0x30: 'div', 0x40: 'or', 0x50: 'and', 0x60: 'lsh', 0x70: 'rsh',
  0x80: 'neg', 0x90: 'mod', 0xa0: 'xor',
};
const JMP_NAMES: Record<number, string> = { [BPF_JEQ]: 'jeq', [BPF_JGT]: 'jgt', [BPF_JGE]: 'jge', [BPF_JSET]: 'jset' };

function fieldName(off: number): string {
  if (off === OFF_NR) return 'nr';
  if (off === OFF_ARCH) return 'arch';
  if (off === OFF_IP_LO) return 'ip.lo';
  if (off === OFF_IP_HI) return 'ip.hi';
  if (off >= OFF_ARGS && off < OFF_ARGS + 48) {
    const i = (off - OFF_ARGS) >> 3;
    return `args[${i}].${(off - OFF_ARGS) % 8 === 0 ? 'lo' : 'hi'}`;
  }
  return `[${off}]`;
}

export interface DisasmOptions {
  /** Arch used for syscall names; by default the one the program's arch check names. */
  arch?: ArchInfo;
  /** Extra comment per pc (the compiler's origins). */
  notes?: ReadonlyMap<number, string>;
}

export function disassemble(prog: readonly Insn[], opts: DisasmOptions = {}): string[] {
  let arch = opts.arch;
  const incoming: (string | undefined)[] = new Array(prog.length).fill(undefined);
  const merge = (pc: number, v: string): void => {
    if (pc >= prog.length) return;
    const cur = incoming[pc];
    incoming[pc] = cur === undefined || cur === v ? v : UNKNOWN;
  };
  const pad = (n: number): string => n.toString().padStart(4, '0');
  const hex = (n: number): string => `0x${(n >>> 0).toString(16)}`;
  const lines: string[] = [];
  let a = UNKNOWN;
  let fallsIn = true;
  for (let pc = 0; pc < prog.length; pc++) {
    const ins = prog[pc]!;
    if (pc === 0) a = UNKNOWN;
    else a = fallsIn ? mergeVal(a, incoming[pc]) : (incoming[pc] ?? UNKNOWN);
    fallsIn = true;
    let text: string;
    let note = '';
    const cls = classOf(ins.code);
    const k = ins.k >>> 0;
    if (cls === BPF_LD || cls === BPF_LDX) {
      const reg = cls === BPF_LD ? 'ld ' : 'ldx';
      const mode = modeOf(ins.code);
      if (mode === BPF_ABS) { text = `${reg}  [${k}]`; note = `A = ${fieldName(k)}`; if (cls === BPF_LD) a = fieldName(k); }
      else if (mode === BPF_IMM) { text = `${reg}  #${hex(k)}`; if (cls === BPF_LD) a = UNKNOWN; }
      else if (mode === BPF_MEM) { text = `${reg}  M[${k}]`; if (cls === BPF_LD) a = UNKNOWN; }
      else if (mode === BPF_LEN) { text = `${reg}  #len`; if (cls === BPF_LD) a = UNKNOWN; }
      else text = `${reg}  ??? mode ${hex(mode)}`;
    } else if (cls === BPF_ST || cls === BPF_STX) {
      text = `${cls === BPF_ST ? 'st ' : 'stx'}  M[${k}]`;
    } else if (cls === BPF_ALU) {
      const name = ALU_NAMES[opOf(ins.code)] ?? '???';
      text = `${name.padEnd(4)} ${srcOf(ins.code) === BPF_X ? 'x' : `#${hex(k)}`}`;
      a = a === UNKNOWN ? UNKNOWN : `${a} ${name} ${srcOf(ins.code) === BPF_X ? 'x' : hex(k)}`;
    } else if (cls === BPF_JMP) {
      const op = opOf(ins.code);
      if (op === BPF_JA) {
        text = `ja   ${pad(pc + 1 + k)}`;
        merge(pc + 1 + k, a);
        fallsIn = false;
      } else {
        const name = JMP_NAMES[op] ?? '???';
        const src = srcOf(ins.code) === BPF_X ? 'x' : `#${hex(k)}`;
        text = `${name.padEnd(4)} ${src}, ${pad(pc + 1 + ins.jt)}, ${pad(pc + 1 + ins.jf)}`;
        merge(pc + 1 + ins.jt, a);
        merge(pc + 1 + ins.jf, a);
        fallsIn = false;
        if (a === 'arch' && op === BPF_JEQ) {
          const found = archByAudit(k);
          arch ??= found;
          note = `arch == ${found ? `AUDIT_ARCH_${found.name.toUpperCase()}` : hex(k)}`;
        } else if (a === 'nr') {
          const sym = op === BPF_JEQ ? '==' : op === BPF_JGT ? '>' : op === BPF_JGE ? '>=' : '&';
          const sc = op === BPF_JSET ? (k === 0x40000000 ? 'x32 ABI bit' : '') : (arch?.byNumber.get(k) ?? '');
          note = `nr ${sym} ${op === BPF_JSET ? hex(k) : k}${sc ? ` (${sc})` : ''}`;
        } else if (a !== UNKNOWN) {
          note = `${a} ${op === BPF_JEQ ? '==' : op === BPF_JGT ? '>' : op === BPF_JGE ? '>=' : '&'} ${hex(k)}`;
        }
      }
    } else if (cls === BPF_RET) {
      text = rvalOf(ins.code) === BPF_A ? 'ret  A' : `ret  #${hex(k)}`;
      if (rvalOf(ins.code) !== BPF_A) note = retName(k);
      fallsIn = false;
    } else if (cls === BPF_MISC) {
      text = miscOpOf(ins.code) === BPF_TAX ? 'tax' : 'txa';
      a = miscOpOf(ins.code) === BPF_TAX ? a : UNKNOWN;
    } else text = '???';
    const extra = opts.notes?.get(pc);
    if (extra !== undefined) note = note ? `${note}: ${extra}` : extra;
    const raw = `${ins.code.toString(16).padStart(4, '0')} ${ins.jt.toString(16).padStart(2, '0')} ` +
      `${ins.jf.toString(16).padStart(2, '0')} ${k.toString(16).padStart(8, '0')}`;
    lines.push(`${pad(pc)}: ${raw}  ${text.padEnd(30)}${note ? ` ; ${note}` : ''}`.trimEnd());
  }
  return lines;
}

function mergeVal(a: string, incoming: string | undefined): string {
  if (incoming === undefined || incoming === a) return a;
  return UNKNOWN;
}
