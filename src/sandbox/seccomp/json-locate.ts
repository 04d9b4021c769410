// A strict JSON reader that remembers where each value starts, so a policy error can say
// "policies/x.json:42: syscalls[3]..." and a syntax error can name its line and column.
// (JSON.parse on Node 20 reports neither reliably.) Accepts exactly RFC 8259 JSON.

export type Json = null | boolean | number | string | Json[] | { [k: string]: Json };

export class JsonSyntaxError extends Error {
  constructor(readonly line: number, readonly column: number, readonly detail: string) {
    super(`line ${line}, column ${column}: ${detail}`);
    this.name = 'JsonSyntaxError';
  }
}

export interface LocatedJson {
  value: Json;
  /** 1-based line where the value at a path starts; paths look like "syscalls/3/names/0". */
  lineOf(path: readonly (string | number)[]): number | undefined;
}

export function parseJsonLocated(text: string): LocatedJson {
  const lines = new Map<string, number>();
  let pos = 0;
  let line = 1;
  let lineStart = 0;

  const fail = (detail: string): never => {
    throw new JsonSyntaxError(line, pos - lineStart + 1, detail);
  };
  const ws = (): void => {
    while (pos < text.length) {
      const c = text.charCodeAt(pos);
      if (c === 0x0a) { line++; pos++; lineStart = pos; } else if (c === 0x20 || c === 0x09 || c === 0x0d) pos++;
      else break;
    }
  };
  const describe = (): string => (pos >= text.length ? 'unexpected end of input' : `unexpected ${JSON.stringify(text[pos])}`);
  const expect = (ch: string): void => {
    if (text[pos] !== ch) fail(`${describe()}, expected '${ch}'`);
    pos++;
  };

  const str = (): string => {
    const start = pos;
    expect('"');
    while (pos < text.length) {
      const c = text.charCodeAt(pos);
      if (c === 0x22) { pos++; return JSON.parse(text.slice(start, pos)) as string; }
      if (c === 0x5c) {
        pos++;
        const e = text[pos];
        if (e === 'u') {
          if (!/^[0-9a-fA-F]{4}$/.test(text.slice(pos + 1, pos + 5))) fail('bad \\u escape');
          pos += 5;
        } else if (e !== undefined && '"\\/bfnrt'.includes(e)) pos++;
        else fail('bad escape in string');
      } else if (c < 0x20) fail('control character in string (unterminated string?)');
      else pos++;
    }
    return fail('unterminated string');
  };

  const num = (): number => {
    const m = /^-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?/.exec(text.slice(pos, pos + 400));
    if (!m) fail(describe());
    pos += m![0].length;
    return Number(m![0]);
  };

  const value = (path: string): Json => {
    ws();
    lines.set(path, line);
    const c = text[pos];
    if (c === '{') {
      pos++;
      const obj: { [k: string]: Json } = {};
      ws();
      if (text[pos] === '}') { pos++; return obj; }
      for (;;) {
        ws();
        if (text[pos] !== '"') fail(`${describe()}, expected a property name in double quotes`);
        const key = str();
        ws();
        expect(':');
        obj[key] = value(path === '' ? key : `${path}/${key}`);
        ws();
        if (text[pos] === ',') { pos++; continue; }
        if (text[pos] === '}') { pos++; return obj; }
        fail(`${describe()}, expected ',' or '}'`);
      }
    }
    if (c === '[') {
      pos++;
      const arr: Json[] = [];
      ws();
      if (text[pos] === ']') { pos++; return arr; }
      for (;;) {
        arr.push(value(path === '' ? String(arr.length) : `${path}/${arr.length}`));
        ws();
        if (text[pos] === ',') { pos++; continue; }
        if (text[pos] === ']') { pos++; return arr; }
        fail(`${describe()}, expected ',' or ']'`);
      }
    }
    if (c === '"') return str();
    if (c === '-' || (c !== undefined && c >= '0' && c <= '9')) return num();
    for (const [word, v] of [['true', true], ['false', false], ['null', null]] as const) {
      if (text.startsWith(word, pos)) { pos += word.length; return v; }
    }
    return fail(describe());
  };

  const v = value('');
  ws();
  if (pos < text.length) fail(`${describe()} after the end of the JSON value`);
  return { value: v, lineOf: (p) => lines.get(p.join('/')) };
}
