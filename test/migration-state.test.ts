// The migration state format on its own: what the source encodes the destination decodes
// unchanged, and input that is cut, padded, corrupted or lying fails with StateFormatError
// (never another exception, never a partial state).
import test from 'ava';
import { decodeState, encodeState, StateFormatError, type MigrationState } from '../src/fs/migration-state.js';

function handle(n: number, fill: number): Buffer {
  const h = Buffer.alloc(8 + n, fill);
  h.writeUInt32LE(n, 0);
  h.writeInt32LE(1, 4);
  return h;
}

const sample: MigrationState = {
  session: { flags: 0x12345678, flags2: 0x3 },
  inodes: [
    { nodeid: 2, refs: 3, location: { kind: 'name', parent: 1, name: Buffer.from('dir') }, verifyHandle: handle(8, 0xaa) },
    { nodeid: 7, refs: 1, location: { kind: 'name', parent: 2, name: Buffer.from('fïle') }, verifyHandle: null },
    { nodeid: 9, refs: 2 ** 40, location: { kind: 'path', path: Buffer.from('dir/sub/x') }, verifyHandle: null },
    { nodeid: 12, refs: 1, location: { kind: 'handle', handle: handle(20, 0x55) }, verifyHandle: null },
    { nodeid: 2 ** 52, refs: 1, location: { kind: 'failed', errno: 116 }, verifyHandle: null },
  ],
  handles: [{ fh: 1, nodeid: 7, flags: 0o2000002 }, { fh: 2 ** 50, nodeid: 1, flags: 0o200000 }],
};

test('a state round-trips through the format', (t) => {
  const b = encodeState(sample);
  t.deepEqual(decodeState(b), sample);
  t.deepEqual(decodeState(encodeState({ session: null, inodes: [], handles: [] })), { session: null, inodes: [], handles: [] });
});

test('every truncation and every extra byte fails cleanly', (t) => {
  const b = encodeState(sample);
  for (let n = 0; n < b.length; n++) t.throws(() => decodeState(b.subarray(0, n)), { instanceOf: StateFormatError }, `cut at ${n}`);
  t.throws(() => decodeState(Buffer.concat([b, Buffer.from([0])])), { instanceOf: StateFormatError });
});

test('corrupted bytes give a StateFormatError or a state that still obeys the rules', (t) => {
  const b = encodeState(sample);
  let rejected = 0;
  for (let i = 0; i < b.length; i++) {
    for (const v of [0x00, 0xff, 0x2f, 0x2e, b[i]! ^ 0x01]) {
      const c = Buffer.from(b);
      c[i] = v;
      try {
        const s = decodeState(c);
        // Accepted: the rules still hold (a byte of a name or a flag changed, say).
        const ids = new Set([1]);
        for (const ino of s.inodes) {
          t.false(ids.has(ino.nodeid));
          if (ino.location.kind === 'name') t.true(ids.has(ino.location.parent));
          ids.add(ino.nodeid);
        }
      } catch (err) {
        t.true(err instanceof StateFormatError, `byte ${i} = ${v}: ${String(err)}`);
        rejected++;
      }
    }
  }
  t.true(rejected > b.length);
});

test('names and paths that would leave a directory are refused', (t) => {
  const bad: [string, MigrationState['inodes'][number]['location']][] = [
    ['dot-dot', { kind: 'name', parent: 1, name: Buffer.from('..') }],
    ['dot', { kind: 'name', parent: 1, name: Buffer.from('.') }],
    ['slash', { kind: 'name', parent: 1, name: Buffer.from('a/b') }],
    ['empty', { kind: 'name', parent: 1, name: Buffer.alloc(0) }],
    ['nul', { kind: 'name', parent: 1, name: Buffer.from('a\0b') }],
    ['long', { kind: 'name', parent: 1, name: Buffer.alloc(256, 0x61) }],
    ['absolute path', { kind: 'path', path: Buffer.from('/etc/passwd') }],
    ['dot-dot path', { kind: 'path', path: Buffer.from('a/../../etc') }],
    ['trailing slash', { kind: 'path', path: Buffer.from('a/') }],
    ['handle too long', { kind: 'handle', handle: handle(129, 1) }],
    ['errno 0', { kind: 'failed', errno: 0 }],
  ];
  for (const [what, location] of bad) {
    const s: MigrationState = { session: null, inodes: [{ nodeid: 5, refs: 1, location, verifyHandle: null }], handles: [] };
    t.throws(() => decodeState(encodeState(s)), { instanceOf: StateFormatError }, what);
  }
});

test('references must point back: no forward parent, no duplicate ids, no handle on an unknown node', (t) => {
  const name = (nodeid: number, parent: number) => ({ nodeid, refs: 1, location: { kind: 'name' as const, parent, name: Buffer.from('n') }, verifyHandle: null });
  const cases: [string, MigrationState][] = [
    ['forward parent', { session: null, inodes: [name(3, 4), name(4, 1)], handles: [] }],
    ['self parent', { session: null, inodes: [name(3, 3)], handles: [] }],
    ['duplicate', { session: null, inodes: [name(3, 1), name(3, 1)], handles: [] }],
    ['root id', { session: null, inodes: [name(1, 1)], handles: [] }],
    ['zero lookups', { session: null, inodes: [{ ...name(3, 1), refs: 0 }], handles: [] }],
    ['unknown handle node', { session: null, inodes: [name(3, 1)], handles: [{ fh: 1, nodeid: 4, flags: 0 }] }],
    ['fh 0', { session: null, inodes: [], handles: [{ fh: 0, nodeid: 1, flags: 0 }] }],
    ['fh twice', { session: null, inodes: [], handles: [{ fh: 5, nodeid: 1, flags: 0 }, { fh: 5, nodeid: 1, flags: 0 }] }],
  ];
  for (const [what, s] of cases) t.throws(() => decodeState(encodeState(s)), { instanceOf: StateFormatError }, what);
});

test('a header that promises more records than the bytes hold is refused before any allocation', (t) => {
  const b = encodeState({ session: null, inodes: [], handles: [] });
  b.writeUInt32LE(0xffffffff, 12);
  const e = t.throws(() => decodeState(b), { instanceOf: StateFormatError });
  t.regex(e?.message ?? '', /cannot fit/);
  const v = encodeState(sample);
  v.writeUInt32LE(2, 8);
  t.regex(t.throws(() => decodeState(v))?.message ?? '', /version 2/);
  t.regex(t.throws(() => decodeState(Buffer.from('not a state at all, just some bytes here, long enough to be one')))?.message ?? '', /bad magic/);
});
