// A label-based BPF assembler: the compiler emits instructions whose jump targets are
// labels, and layout() turns them into the kernel's encoding. Classic BPF only jumps
// forward, conditional jumps reach at most 255 instructions, so a conditional jump to a
// far label gets a `ja` trampoline (32-bit offset) right after it; positions are
// recomputed until no jump needs a new trampoline (sizes only grow, so this converges).
import type { Insn } from './bpf.js';
import { BPF_JA, BPF_JMP, classOf, opOf } from './bpf.js';

export type Label = number & { readonly __label: unique symbol };

/** What a return instruction stands for, kept per pc so `explain` and `dump` can say it. */
export interface Origin {
  what: string;
}

interface Item {
  code: number;
  k: number;
  /** Conditional jumps: targets; `ja`: jt only. */
  jt?: Label;
  jf?: Label;
  origin?: Origin;
  farT: boolean;
  farF: boolean;
}

export class Assembler {
  private items: (Item | Label)[] = [];
  private nextLabel = 0;

  label(): Label {
    return this.nextLabel++ as Label;
  }

  place(l: Label): void {
    this.items.push(l);
  }

  stmt(code: number, k: number, origin?: Origin): void {
    this.items.push({ code, k: k >>> 0, origin, farT: false, farF: false });
  }

  jump(code: number, k: number, jt: Label, jf: Label): void {
    this.items.push({ code, k: k >>> 0, jt, jf, farT: false, farF: false });
  }

  ja(target: Label): void {
    this.items.push({ code: BPF_JMP | BPF_JA, k: 0, jt: target, farT: false, farF: false });
  }

  /** Resolve labels; returns the program and the origin of each pc that has one. */
  layout(): { program: Insn[]; origins: Map<number, Origin> } {
    const size = (it: Item): number => 1 + (it.farT ? 1 : 0) + (it.farF ? 1 : 0);
    const isCond = (it: Item): boolean => classOf(it.code) === BPF_JMP && opOf(it.code) !== BPF_JA;
    let pos = new Map<Item | Label, number>();
    for (;;) {
      pos = new Map();
      let pc = 0;
      for (const it of this.items) {
        pos.set(it, pc);
        if (typeof it !== 'number') pc += size(it);
      }
      const at = (l: Label | undefined): number => {
        const p = pos.get(l as Label);
        if (p === undefined) throw new Error(`BPF assembler: label ${String(l)} never placed`);
        return p;
      };
      let grew = false;
      for (const it of this.items) {
        if (typeof it === 'number' || !isCond(it)) continue;
        const p = pos.get(it)!;
        if (!it.farT && at(it.jt) - p - 1 > 255) { it.farT = true; grew = true; }
        if (!it.farF && at(it.jf) - p - 1 > 255) { it.farF = true; grew = true; }
      }
      if (!grew) break;
    }
    const program: Insn[] = [];
    const origins = new Map<number, Origin>();
    const at = (l: Label | undefined): number => pos.get(l as Label)!;
    const rel = (from: number, to: number): number => {
      const d = to - from - 1;
      if (d < 0) throw new Error(`BPF assembler: backward jump from ${from} to ${to}`);
      return d;
    };
    for (const it of this.items) {
      if (typeof it === 'number') continue;
      const p = program.length;
      if (it.origin) origins.set(p, it.origin);
      if (classOf(it.code) !== BPF_JMP) {
        program.push({ code: it.code, jt: 0, jf: 0, k: it.k });
      } else if (!isCond(it)) {
        program.push({ code: it.code, jt: 0, jf: 0, k: rel(p, at(it.jt)) });
      } else {
        const jt = it.farT ? 0 : rel(p, at(it.jt));
        const jf = it.farF ? (it.farT ? 1 : 0) : rel(p, at(it.jf));
        program.push({ code: it.code, jt, jf, k: it.k });
        if (it.farT) program.push({ code: BPF_JMP | BPF_JA, jt: 0, jf: 0, k: rel(program.length, at(it.jt)) });
        if (it.farF) program.push({ code: BPF_JMP | BPF_JA, jt: 0, jf: 0, k: rel(program.length, at(it.jf)) });
      }
    }
    return { program, origins };
  }
}
