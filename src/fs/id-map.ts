// --translate-uid / --translate-gid: ids translated by the daemon itself between the
// guest's and the host's numbering, with virtiofsd's rule grammar and meaning:
// `<type>:<source base>:<target base>:<count>` (`forbid-guest:<guest base>:<count>`), the
// separator any character that is not a letter, digit, '-' or '_' (the same one throughout).
//   guest         guest [b, b+n) -> host [t, t+n)
//   host          host  [b, b+n) -> guest [t, t+n)
//   squash-guest  guest [b, b+n) -> host t
//   squash-host   host  [b, b+n) -> guest t
//   forbid-guest  guest [b, b+n) -> refused (EPERM) when the guest creates as or chowns to one
//   map           guest [b, b+n) <-> host [t, t+n), both directions
// Each direction is its own table; ids no rule of a direction covers pass unchanged (as in
// virtiofsd). Rules of one direction must not overlap. An IdMap is compiled once at start
// into sorted typed arrays, so a lookup is a binary search with no allocation; with no
// rules there is no IdMap at all and the request path does not look.

export type IdRuleKind = 'guest' | 'host' | 'squash-guest' | 'squash-host' | 'forbid-guest' | 'map';

export interface IdRule {
  kind: IdRuleKind;
  /** First id of the source range. */
  base: number;
  /** First id of the target range (squash: the one target); unused for forbid-guest. */
  target: number;
  count: number;
  /** The rule as given, for messages. */
  text: string;
}

/** A rule that cannot be used, with why (the option parser names the option). */
export class IdRuleError extends Error {
  constructor(readonly rule: string, readonly reason: string) {
    super(`'${rule}': ${reason}`);
    this.name = 'IdRuleError';
  }
}

const KINDS: readonly IdRuleKind[] = ['guest', 'host', 'squash-guest', 'squash-host', 'forbid-guest', 'map'];
const U32_MAX = 0xffffffff;

/** Parse one rule (virtiofsd's pre-parse: a lower-cased type, then numbers split by one separator). */
export function parseIdRule(text: string): IdRule {
  let i = 0;
  while (i < text.length && /[A-Za-z0-9_-]/.test(text[i] as string)) i++;
  const kind = text.slice(0, i).toLowerCase();
  if (!KINDS.includes(kind as IdRuleKind)) {
    throw new IdRuleError(text, `unknown type '${kind}'; one of ${KINDS.join(', ')}`);
  }
  if (i >= text.length) throw new IdRuleError(text, 'no fields after the type');
  const sep = text[i] as string;
  const fields = text.slice(i + 1).split(sep);
  const want = kind === 'forbid-guest' ? 2 : 3;
  if (fields.length !== want) {
    const form = kind === 'forbid-guest' ? 'forbid-guest:<guest base>:<count>' : `${kind}:<source base>:<target base>:<count>`;
    throw new IdRuleError(text, `expected ${want} numbers (${form}), got ${fields.length}`);
  }
  const nums = fields.map((f) => {
    if (!/^\d+$/.test(f) || Number(f) > U32_MAX) throw new IdRuleError(text, `'${f}' is not an id (0..${U32_MAX})`);
    return Number(f);
  });
  const [base, target, count] = kind === 'forbid-guest' ? [nums[0] as number, 0, nums[1] as number] : (nums as [number, number, number]);
  const rule: IdRule = { kind: kind as IdRuleKind, base, target, count, text };
  if (count === 0) throw new IdRuleError(text, 'count is 0; a rule covers at least one id');
  // The exclusive end must itself be an id: virtiofsd refuses base + count past 2^32-1.
  if (base + count > U32_MAX) throw new IdRuleError(text, `range ${base}+${count} runs past ${U32_MAX}`);
  if ((kind === 'guest' || kind === 'host' || kind === 'map') && target + count > U32_MAX) {
    throw new IdRuleError(text, `target range ${target}+${count} runs past ${U32_MAX}`);
  }
  // (uid_t)-1 means "unchanged" to chown and "no id" everywhere else: never a target.
  if ((kind === 'squash-guest' || kind === 'squash-host') && target === U32_MAX) {
    throw new IdRuleError(text, `target ${U32_MAX} is (uid_t)-1, not an id`);
  }
  return rule;
}

const M_RANGE = 0;
const M_SQUASH = 1;
const M_FORBID = 2;

interface Entry { from: number; end: number; mode: number; target: number; text: string }

/** One direction's table: sorted, non-overlapping [from, end) ranges. */
class Table {
  readonly from: Uint32Array;
  readonly end: Float64Array;
  readonly mode: Uint8Array;
  readonly target: Uint32Array;

  constructor(entries: Entry[], direction: string) {
    entries.sort((a, b) => a.from - b.from);
    for (let k = 1; k < entries.length; k++) {
      const prev = entries[k - 1] as Entry;
      const cur = entries[k] as Entry;
      if (cur.from < prev.end) throw new IdRuleError(cur.text, `its ${direction} range overlaps that of '${prev.text}'`);
    }
    this.from = Uint32Array.from(entries, (e) => e.from);
    this.end = Float64Array.from(entries, (e) => e.end);
    this.mode = Uint8Array.from(entries, (e) => e.mode);
    this.target = Uint32Array.from(entries, (e) => e.target);
  }

  /** The translated id, the id itself when no range covers it, or -1 (forbidden). */
  map(id: number): number {
    const from = this.from;
    let lo = 0;
    let hi = from.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      if ((from[mid] as number) > id) hi = mid - 1;
      else if ((this.end[mid] as number) <= id) lo = mid + 1;
      else {
        const m = this.mode[mid] as number;
        if (m === M_RANGE) return (this.target[mid] as number) + (id - (from[mid] as number));
        if (m === M_SQUASH) return this.target[mid] as number;
        return -1;
      }
    }
    return id;
  }
}

export class IdMap {
  private readonly g2h: Table;
  private readonly h2g: Table;

  /** Throws IdRuleError when two rules of one direction overlap. */
  constructor(rules: readonly IdRule[]) {
    const g2h: Entry[] = [];
    const h2g: Entry[] = [];
    for (const r of rules) {
      const src = { from: r.base, end: r.base + r.count, text: r.text };
      switch (r.kind) {
        case 'guest': g2h.push({ ...src, mode: M_RANGE, target: r.target }); break;
        case 'host': h2g.push({ ...src, mode: M_RANGE, target: r.target }); break;
        case 'squash-guest': g2h.push({ ...src, mode: M_SQUASH, target: r.target }); break;
        case 'squash-host': h2g.push({ ...src, mode: M_SQUASH, target: r.target }); break;
        case 'forbid-guest': g2h.push({ ...src, mode: M_FORBID, target: 0 }); break;
        case 'map':
          g2h.push({ ...src, mode: M_RANGE, target: r.target });
          h2g.push({ from: r.target, end: r.target + r.count, text: r.text, mode: M_RANGE, target: r.base });
          break;
      }
    }
    this.g2h = new Table(g2h, 'guest-to-host');
    this.h2g = new Table(h2g, 'host-to-guest');
  }

  /** A guest id as the host's, or -1 when a forbid-guest rule covers it. */
  toHost(guestId: number): number {
    return this.g2h.map(guestId);
  }

  /** A host id as the guest sees it. */
  toGuest(hostId: number): number {
    return this.h2g.map(hostId);
  }
}

/** The compiled map of a rule list; undefined for none (the identity, never consulted). */
export function compileIdMap(rules: readonly IdRule[]): IdMap | undefined {
  return rules.length === 0 ? undefined : new IdMap(rules);
}
