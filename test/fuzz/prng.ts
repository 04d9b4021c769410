// Seeded randomness for the fuzz tests: mulberry32 (small, fast, reproducible from one
// 32-bit seed, which is all a replay needs) and a set with O(1) random pick for the node
// ids and handles a fuzzer has been handed. Shared by the in-process stateful fuzz and the
// fuzzes of the sandboxed daemon through the vhost-user frontend.

export class Rng {
  private s: number;
  constructor(seed: number) {
    this.s = seed >>> 0;
  }
  u32(): number {
    this.s = (this.s + 0x6d2b79f5) >>> 0;
    let t = this.s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  }
  int(n: number): number {
    return Math.floor((this.u32() / 0x100000000) * n);
  }
  chance(p: number): boolean {
    return this.u32() / 0x100000000 < p;
  }
  pick<T>(a: readonly T[]): T {
    return a[this.int(a.length)] as T;
  }
  u64(): bigint {
    return (BigInt(this.u32()) << 32n) | BigInt(this.u32());
  }
  bytes(n: number): Buffer {
    const b = Buffer.alloc(n);
    for (let i = 0; i < n; i++) b[i] = this.u32() & 0xff;
    return b;
  }
}

/** A set with O(1) add, delete and random pick. */
export class PickSet {
  private readonly items: number[] = [];
  private readonly at = new Map<number, number>();
  get size(): number {
    return this.items.length;
  }
  has(v: number): boolean {
    return this.at.has(v);
  }
  add(v: number): void {
    if (this.at.has(v)) return;
    this.at.set(v, this.items.length);
    this.items.push(v);
  }
  delete(v: number): void {
    const i = this.at.get(v);
    if (i === undefined) return;
    const last = this.items.pop() as number;
    if (last !== v) {
      this.items[i] = last;
      this.at.set(last, i);
    }
    this.at.delete(v);
  }
  pick(rng: Rng): number {
    return this.items[rng.int(this.items.length)] as number;
  }
  values(): number[] {
    return [...this.items];
  }
}

/** A seed from VFS_FUZZ_SEED (a replay), else from the clock and pid. */
export function seedFromEnv(): number | undefined {
  const s = process.env.VFS_FUZZ_SEED;
  return s === undefined || s === '' ? undefined : Number(s) >>> 0;
}
