// Mutation fuzz of the destination's state loader, in process (fast enough for thousands of
// loads): real states saved by a source session (find-paths with names and paths, and
// file-handles, with handles open), then bit flips, overwritten fields, truncations,
// spliced and duplicated records, fed to a destination session's migration.load(). Checked
// for each: load() returns (a reason or success) and never throws, the destination still
// answers INIT and GETATTR afterwards, and at the end nothing beside the share changed and
// the process holds no fd on anything beside it. VFS_FUZZ_SEED replays a run.
import test from 'ava';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createFuseServer } from '../src/fs/fuse-server.js';
import { DEFAULT_FS_OPTIONS, type MigrationOptions } from '../src/fs/options.js';
import type { FuseSession } from '../src/fs/session.js';
import { EntryOutHead, GetattrIn, InitIn, Op, OpenIn } from '../src/fs/fuse-abi.js';
import { AT_FDCWD, O_CLOEXEC, O_DIRECTORY, O_PATH, openat } from '../src/sys/file-calls.js';
import { setLogSink } from '../src/log.js';
import { cstr, request, send, struct } from './fs-helpers.js';
import { Rng, seedFromEnv } from './fuzz/prng.js';
import { snapshot } from './fuzz/stateful-fuzzer.js';

const MUTANTS = Number(process.env.VFS_FUZZ_REQUESTS ?? 6000);
/** The sessions' log lines (thousands of loads): counted, the errors kept. */
const logged = { lines: 0, errors: [] as string[] };
setLogSink((line) => {
  logged.lines++;
  if (/ ERROR /.test(line) && logged.errors.length < 20) logged.errors.push(line.trim());
});

function sessionAt(dir: string, migration: Partial<MigrationOptions>): FuseSession {
  const rootFd = openat(AT_FDCWD, dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
  const procSelfFd = openat(AT_FDCWD, '/proc/self/fd', O_PATH | O_DIRECTORY | O_CLOEXEC);
  return createFuseServer({
    rootFd, procSelfFd, transport: 'virtio', maxWrite: 1 << 20,
    options: { ...DEFAULT_FS_OPTIONS, xattr: true, migration: { ...DEFAULT_FS_OPTIONS.migration, ...migration } },
  });
}

function ok(session: FuseSession, op: number, parts: Buffer[], nodeid: bigint | number = 1): Buffer {
  const r = send(session, request(op, parts, { nodeid }));
  if (r === null || r.error !== 0) throw new Error(`opcode ${op}: ${r?.error}`);
  return r.body;
}

const initReq = (): Buffer => request(Op.INIT, [struct(InitIn, { major: 7, minor: 38, maxReadahead: 131072, flags: 0xffffffff })], { nodeid: 0 });

/** A source session that looked up and opened things; its saved state. */
function sourceState(dir: string, migration: Partial<MigrationOptions>): Buffer {
  const src = sessionAt(dir, migration);
  send(src, initReq());
  const lookup = (parent: bigint, name: string): bigint => EntryOutHead.decode(ok(src, Op.LOOKUP, [cstr(name)], parent), 0).nodeid;
  const d = lookup(1n, 'dir');
  const a = lookup(d, 'a');
  lookup(1n, 'file');
  lookup(1n, 'up');
  lookup(1n, 'out');
  const deep = lookup(lookup(d, 'sub'), 'deep');
  ok(src, Op.OPEN, [struct(OpenIn, { flags: 2 })], a);
  ok(src, Op.OPEN, [struct(OpenIn, { flags: 0 })], deep);
  ok(src, Op.OPENDIR, [struct(OpenIn, { flags: 0o200000 })], d);
  // An inode known by no name (a ".." lookup): sent by its path.
  lookup(lookup(d, 'sub'), '..');
  const data = src.migration?.save();
  if (typeof data !== 'object') throw new Error(`save: ${String(data)}`);
  return data;
}

/** One mutation of `b`, and what it was. */
function mutate(rng: Rng, b: Buffer, other: Buffer): { data: Buffer; what: string } {
  const m = Buffer.from(b);
  const at = rng.int(b.length);
  switch (rng.int(9)) {
    case 0: m[at] = (m[at] as number) ^ (1 << rng.int(8)); return { data: m, what: `bit flip at ${at}` };
    case 1: m[at] = rng.int(256); return { data: m, what: `byte ${at} = ${m[at]}` };
    case 2: {
      const v = rng.pick([0, 1, 2, 3, 4, 5, 0xffff, 0xffffffff, 0x7fffffff, 4096, 4097]);
      if (at + 4 <= m.length) m.writeUInt32LE(v >>> 0, at & ~3);
      return { data: m, what: `u32 at ${at & ~3} = ${v}` };
    }
    case 3: {
      const v = rng.pick([0n, 1n, 2n, (1n << 64n) - 1n, 1n << 53n, 1n << 63n]);
      if ((at & ~7) + 8 <= m.length) m.writeBigUInt64LE(v, at & ~7);
      return { data: m, what: `u64 at ${at & ~7} = ${v}` };
    }
    case 4: return { data: m.subarray(0, at), what: `truncated to ${at}` };
    case 5: {
      const from = rng.int(b.length);
      const len = rng.int(Math.min(200, b.length - from) + 1);
      return { data: Buffer.concat([m.subarray(0, at), b.subarray(from, from + len), m.subarray(at)]), what: `${len} bytes from ${from} inserted at ${at}` };
    }
    case 6: {
      const len = rng.int(Math.min(200, b.length - at) + 1);
      return { data: Buffer.concat([m.subarray(0, at), m.subarray(at + len)]), what: `${len} bytes at ${at} cut` };
    }
    case 7: {
      const from = rng.int(other.length);
      const len = rng.int(Math.min(300, other.length - from) + 1);
      return { data: Buffer.concat([m.subarray(0, at), other.subarray(from, from + len), m.subarray(at)]), what: `${len} bytes of the other state inserted at ${at}` };
    }
    default: {
      for (let i = 0; i < 1 + rng.int(6); i++) {
        const p = rng.int(m.length);
        m[p] = rng.int(256);
      }
      return { data: m, what: 'several random bytes' };
    }
  }
}

/** Fds of this process on anything in `paths` (by device and inode). */
function fdsOn(paths: readonly string[]): string[] {
  const keys = new Map<string, string>();
  for (const p of paths) {
    const st = fs.lstatSync(p);
    keys.set(`${st.dev}:${st.ino}`, p);
  }
  const out: string[] = [];
  for (const n of fs.readdirSync('/proc/self/fd')) {
    try {
      const st = fs.statSync(`/proc/self/fd/${n}`);
      const hit = keys.get(`${st.dev}:${st.ino}`);
      if (hit !== undefined) out.push(`fd ${n} -> ${hit}`);
    } catch {
      // closed meanwhile
    }
  }
  return out;
}

for (const mode of ['find-paths', 'file-handles'] as const) {
  test.serial(`mutated ${mode} states: load() fails or succeeds, never throws; the destination serves on; nothing outside is touched`, (t) => {
    if (process.geteuid?.() !== 0) {
      t.fail('needs root: file handles (CAP_DAC_READ_SEARCH)');
      return;
    }
    const seed = seedFromEnv() ?? (Date.now() ^ (process.pid << 16)) >>> 0;
    t.log(`seed ${seed} (replay: VFS_FUZZ_SEED=${seed} npx ava test/migration-state-fuzz.test.ts)`);
    const rng = new Rng(seed);
    const parent = fs.mkdtempSync(path.join(os.tmpdir(), 'vfs-state-fuzz-'));
    t.teardown(() => fs.rmSync(parent, { recursive: true, force: true }));
    const share = path.join(parent, 'share');
    fs.mkdirSync(path.join(share, 'dir', 'sub'), { recursive: true });
    fs.writeFileSync(path.join(share, 'dir', 'a'), 'a');
    fs.writeFileSync(path.join(share, 'dir', 'sub', 'deep'), 'deep');
    fs.writeFileSync(path.join(share, 'file'), 'file');
    fs.writeFileSync(path.join(parent, 'outside'), 'outside');
    fs.mkdirSync(path.join(parent, 'outdir'));
    fs.writeFileSync(path.join(parent, 'outdir', 'x'), 'x');
    fs.symlinkSync('..', path.join(share, 'up'));
    fs.symlinkSync('../outside', path.join(share, 'out'));
    const outside = [parent, path.join(parent, 'outside'), path.join(parent, 'outdir'), path.join(parent, 'outdir', 'x')];
    const before = snapshot(parent);
    const state = sourceState(share, { mode });
    const other = sourceState(share, { mode: mode === 'find-paths' ? 'file-handles' : 'find-paths', verifyHandles: true });
    const results = new Map<string, number>();
    const problems: string[] = [];
    for (const onError of ['abort', 'guest-error'] as const) {
      const dst = sessionAt(share, { mode, onError });
      t.is(dst.migration?.load(state), undefined, `${onError}: the unmutated state loads`);
      for (let i = 0; i < MUTANTS / 2 && problems.length === 0; i++) {
        const m = mutate(rng, state, other);
        let why: string | undefined;
        try {
          why = dst.migration?.load(m.data);
        } catch (err) {
          problems.push(`#${i} (${m.what}): load threw ${(err as Error).stack ?? String(err)}`);
          break;
        }
        const k = why === undefined ? 'loaded' : why.replace(/\d+/g, 'N').replace(/"[^"]*"/g, '"…"').slice(0, 70);
        results.set(k, (results.get(k) ?? 0) + 1);
        const g = send(dst, request(Op.GETATTR, [struct(GetattrIn, {})], { nodeid: 1 }));
        if (g === null || (g.error !== 0 && g.error !== -5)) problems.push(`#${i} (${m.what}): GETATTR of the root answered ${g?.error}`);
        if (i % 50 === 0) {
          const i2 = send(dst, initReq());
          if (i2 === null || i2.error !== 0) problems.push(`#${i} (${m.what}): INIT answered ${i2?.error}`);
        }
      }
    }
    t.deepEqual(problems, []);
    t.deepEqual(fdsOn(outside), [], 'no fd on anything beside the share');
    t.deepEqual(snapshot(parent), before, 'nothing beside the share changed');
    t.log(`${logged.lines} log lines; errors: ${logged.errors.join('\n') || 'none'}`);
    t.log([...results.entries()].sort(([, a], [, b]) => b - a).slice(0, 15).map(([k, v]) => `${v}x ${k}`).join('\n'));
  });
}
