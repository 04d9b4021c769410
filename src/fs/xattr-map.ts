// Extended attribute name mapping (--xattrmap), in virtiofsd's rule language: a list of
// rules `<sep>type<sep>scope<sep>key<sep>prepend<sep>`, each with its own separator (the
// first character after optional white space), or the shorthand `<sep>map<sep>key<sep>
// prepend<sep>`, which must come last. Names from the guest (getxattr, setxattr,
// removexattr, the security label of a new file) are matched against `key`; names from the
// host (listxattr) against `prepend`; the first matching rule decides. The map is parsed
// once at start, so every mistake in it is found before the daemon serves anything.
//
// When no rule matches a name, the name is treated as after a final `:bad:all:::` (EPERM
// for the guest, hidden in lists), as the C virtiofsd's implicit terminator did; virtiofsd
// (Rust) panics there instead, and a map that can reach this gets a warning at start.

import { constants as osConstants } from 'node:os';

/** Longest xattr name Linux takes (XATTR_NAME_MAX). */
export const XATTR_NAME_MAX = 255;
const { EPERM, ERANGE, EOPNOTSUPP } = osConstants.errno;

export type XattrRuleType = 'prefix' | 'ok' | 'bad' | 'unsupported';
export const SCOPE_CLIENT = 1;
export const SCOPE_SERVER = 2;
const SCOPE_ALL = SCOPE_CLIENT | SCOPE_SERVER;

export interface XattrRule {
  readonly type: XattrRuleType;
  /** SCOPE_CLIENT and/or SCOPE_SERVER. */
  readonly scope: number;
  /** Prefix matched against names from the guest. */
  readonly key: Buffer;
  /** Prefix matched against names from the host; what `prefix` adds to guest names and strips from host names. */
  readonly prepend: Buffer;
  /** 1-based position of the rule in the map as written (the rules a `map` expands to share it). */
  readonly index: number;
  /** The rule as written. */
  readonly text: string;
}

/** A malformed --xattrmap: which rule (1-based, null when the map has none), its text, and what is wrong. */
export class XattrMapError extends Error {
  constructor(readonly rule: number | null, readonly ruleText: string, readonly problem: string) {
    super(rule === null ? problem : `rule ${rule} '${ruleText}': ${problem}`);
    this.name = 'XattrMapError';
  }
}

const TYPES: readonly string[] = ['prefix', 'ok', 'bad', 'unsupported', 'map'];
const SCOPES: Readonly<Record<string, number>> = { client: SCOPE_CLIENT, server: SCOPE_SERVER, all: SCOPE_ALL };
const FIELDS = ['type', 'scope', 'key', 'prepend'] as const;
const MAP_FIELDS = ['type', 'key', 'prepend'] as const;
const isSpace = (c: string): boolean => /\s/u.test(c);

/** Parse a --xattrmap value; throws XattrMapError naming the rule and the problem. */
export function parseXattrMap(source: string): XattrMap {
  const chars = Array.from(source);
  const rules: XattrRule[] = [];
  let i = 0;
  let index = 0;
  for (;;) {
    while (i < chars.length && isSpace(chars[i] as string)) i++;
    if (i >= chars.length) break;
    index++;
    const start = i;
    const sep = chars[i++] as string;
    const shown = (): string => chars.slice(start, i).join('') + restOfWord(chars, i);
    // Read fields up to each separator; the type decides how many fields follow.
    const fields: string[] = [];
    const readField = (what: string): string => {
      const from = i;
      while (i < chars.length && chars[i] !== sep) i++;
      if (i >= chars.length) {
        throw new XattrMapError(index, chars.slice(start).join(''),
          `the ${what} field is not closed by '${sep}' (a rule is ${sep}type${sep}scope${sep}key${sep}prepend${sep}, or ${sep}map${sep}key${sep}prepend${sep})`);
      }
      const f = chars.slice(from, i).join('');
      i++;
      return f;
    };
    const type = readField('type');
    fields.push(type);
    if (!TYPES.includes(type)) {
      throw new XattrMapError(index, shown(), `type '${type}' is not one of prefix, ok, bad, unsupported, map`);
    }
    for (const what of (type === 'map' ? MAP_FIELDS : FIELDS).slice(1)) fields.push(readField(what));
    const text = chars.slice(start, i).join('');
    if (type === 'map') {
      const [, key, prepend] = fields as [string, string, string];
      const after = chars.slice(i).join('');
      if (after.trim() !== '') {
        throw new XattrMapError(index, text, 'a map rule must be the last rule (it ends the map with its own catch-all rules)');
      }
      rules.push(...expandMap(index, text, bytes(index, text, 'key', key), bytes(index, text, 'prepend', prepend)));
      continue;
    }
    const [, scopeName, key, prepend] = fields as [string, string, string, string];
    const scope = SCOPES[scopeName];
    if (scope === undefined) throw new XattrMapError(index, text, `scope '${scopeName}' is not one of client, server, all`);
    rules.push({
      type: type as XattrRuleType, scope, index, text,
      key: bytes(index, text, 'key', key), prepend: bytes(index, text, 'prepend', prepend),
    });
  }
  if (rules.length === 0) throw new XattrMapError(null, '', 'no rules: give at least one, e.g. :map::user.virtiofs.:');
  return new XattrMap(rules);
}

/** The rest of a rule for an error message: up to the next white space, at most 40 characters. */
function restOfWord(chars: readonly string[], from: number): string {
  let j = from;
  while (j < chars.length && j - from < 40 && !isSpace(chars[j] as string)) j++;
  return chars.slice(from, j).join('');
}

function bytes(index: number, text: string, what: string, s: string): Buffer {
  const b = Buffer.from(s, 'utf8');
  if (b.length > XATTR_NAME_MAX) throw new XattrMapError(index, text, `the ${what} is ${b.length} bytes, longer than any xattr name (${XATTR_NAME_MAX})`);
  return b;
}

/**
 * `map:key:prepend`: prefix `key` names with `prepend` (and strip it from host names); with
 * a key, also refuse guest names already carrying `prepend` and hide host names starting
 * with `key` that are not mapped, then pass the rest; without a key, refuse everything else.
 */
function expandMap(index: number, text: string, key: Buffer, prepend: Buffer): XattrRule[] {
  const empty = Buffer.alloc(0);
  const out: XattrRule[] = [{ type: 'prefix', scope: SCOPE_ALL, key, prepend, index, text }];
  if (key.length > 0) out.push({ type: 'bad', scope: SCOPE_ALL, key: prepend, prepend: key, index, text });
  out.push({ type: key.length > 0 ? 'ok' : 'bad', scope: SCOPE_ALL, key: empty, prepend: empty, index, text });
  return out;
}

function startsWith(b: Buffer, from: number, len: number, prefix: Buffer): boolean {
  const n = prefix.length;
  if (n > len) return false;
  for (let j = 0; j < n; j++) if (b[from + j] !== prefix[j]) return false;
  return true;
}

export class XattrMap {
  private readonly client: readonly XattrRule[];
  private readonly server: readonly XattrRule[];
  /** What the daemon should say at start about this map (rules that can never decide, missing catch-alls). */
  readonly warnings: readonly string[];

  constructor(readonly rules: readonly XattrRule[]) {
    this.client = rules.filter((r) => (r.scope & SCOPE_CLIENT) !== 0);
    this.server = rules.filter((r) => (r.scope & SCOPE_SERVER) !== 0);
    const w: string[] = [];
    if (!this.client.some((r) => r.key.length === 0)) {
      w.push('--xattrmap: no client or all rule has an empty key, so some names from the guest match no rule; those are refused with EPERM (as after a final :bad:all:::)');
    }
    if (!this.server.some((r) => r.prepend.length === 0)) {
      w.push('--xattrmap: no server or all rule has an empty prepend, so some host names match no rule; those are hidden from listxattr (as after a final :bad:all:::)');
    }
    this.warnings = w;
  }

  /**
   * The host name for the guest's name `name[0, len)`: written NUL-terminated into `out`
   * (at least XATTR_NAME_MAX + 1 bytes); returns its length without the NUL, or -EPERM
   * (bad), -EOPNOTSUPP (unsupported), -ERANGE (the prefixed name is too long).
   */
  mapClient(name: Buffer, len: number, out: Buffer): number {
    let rule: XattrRule | undefined;
    for (const r of this.client) {
      if (startsWith(name, 0, len, r.key)) {
        rule = r;
        break;
      }
    }
    if (rule === undefined || rule.type === 'bad') return -EPERM;
    if (rule.type === 'unsupported') return -EOPNOTSUPP;
    const pre = rule.type === 'prefix' ? rule.prepend.length : 0;
    if (pre + len > XATTR_NAME_MAX) return -ERANGE;
    if (pre > 0) rule.prepend.copy(out, 0);
    name.copy(out, pre, 0, len);
    out[pre + len] = 0;
    return pre + len;
  }

  /**
   * Filter and rewrite a host listxattr result `list[0, len)` (NUL-terminated names) into
   * `out` from `pos`: hidden names dropped, prefixes stripped. With `out` null only the
   * length is computed (the size query must answer what a real listing would return).
   * Returns the length of the guest's list, or -ERANGE when it exceeds `room`.
   */
  mapServerList(list: Buffer, len: number, out: Buffer | null, pos: number, room: number): number {
    let n = 0;
    let from = 0;
    while (from < len) {
      let end = from;
      while (end < len && list[end] !== 0) end++;
      const nameLen = end - from;
      if (nameLen > 0) {
        const strip = this.serverName(list, from, nameLen);
        // A name that is only the prefix would be empty for the guest: not a name at all.
        if (strip >= 0 && strip < nameLen) {
          const l = nameLen - strip;
          if (out !== null) {
            if (n + l + 1 > room) return -ERANGE;
            list.copy(out, pos + n, from + strip, end);
            out[pos + n + l] = 0;
          }
          n += l + 1;
        }
      }
      from = end + 1;
    }
    return n;
  }

  /** How many leading bytes of a host name to strip (0: pass as is), or -1 to hide it. */
  private serverName(list: Buffer, from: number, len: number): number {
    for (const r of this.server) {
      if (!startsWith(list, from, len, r.prepend)) continue;
      switch (r.type) {
        case 'ok': return 0;
        case 'prefix': return r.prepend.length;
        default: return -1;
      }
    }
    return -1;
  }
}
