// virtiofsd's id-map syntax for --uid-map/--gid-map, ":inner:outer:count:" (the first
// character is the separator, so "/0/100000/65536/" is the same map), turned into what
// util-linux unshare's --map-users/--map-groups expect ("outer,inner,count").
export interface IdMap {
  /** First id inside the namespace. */
  inner: number;
  /** First id on the host. */
  outer: number;
  count: number;
}

const MAX_ID = 0xffffffff;

/** Parse one map; undefined when it does not parse (the caller names the option). */
export function parseIdMap(text: string): IdMap | undefined {
  if (text.length < 2) return undefined;
  const sep = text[0];
  if (/[0-9]/.test(sep) || text[text.length - 1] !== sep) return undefined;
  const parts = text.slice(1, -1).split(sep);
  if (parts.length !== 3 || parts.some((p) => !/^\d+$/.test(p))) return undefined;
  const [inner, outer, count] = parts.map(Number);
  if (count < 1 || inner + count - 1 > MAX_ID || outer + count - 1 > MAX_ID) return undefined;
  return { inner, outer, count };
}

/** unshare(1)'s --map-users/--map-groups argument. */
export function unshareMapArg(map: IdMap): string {
  return `${map.outer},${map.inner},${map.count}`;
}
