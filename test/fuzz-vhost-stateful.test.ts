// The stateful hostile-guest fuzz (test/fuzz/stateful-fuzzer.ts, the generator and reply
// model of test/fs-fuzz-stateful.test.ts) against the daemon as users run it: started by
// vfs-launch with `--sandbox namespace --seccomp kill`, the requests carried by our
// vhost-user frontend (memfd guest memory, eventfds, split rings). The in-process run cannot
// see a syscall the seccomp policy lacks; this one dies of it. Checked: the daemon lives
// through every request (a death names the seed, the request and the launcher's account,
// which names the syscall), each request that needs a reply gets one well-formed reply
// with its unique, the daemon's open fds (counted from outside) follow the guest's lookups
// and handles and are back once it lets go of all, nothing beside the share changes, and the
// session still serves. Two configurations: --xattr, and the parity options whose replies the
// model still predicts (a kata-style --xattrmap, --killpriv-v2, --allow-mmap, --cache never).
// VFS_FUZZ_SEED replays a run; VFS_FUZZ_REQUESTS changes its length.
import test, { type ExecutionContext } from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import {
  Attr, CreateIn, ENTRY_OUT_SIZE, EntryOutHead, ForgetIn, GetattrIn, InitIn, Op, OpenOut, OutHeader, ReadIn,
  ReleaseIn, WriteIn, WriteOut,
} from '../src/fs/fuse-abi.js';
import { HIPRIO } from './frontend/virtio-fs.js';
import { cstr, request, struct } from './fs-helpers.js';
import { seedFromEnv } from './fuzz/prng.js';
import { DaemonDied, connectSandboxed, lastWords } from './fuzz/sandboxed-daemon.js';
import { S_IFREG, StatefulFuzzer, makeFuzzShare, snapshot } from './fuzz/stateful-fuzzer.js';

const REQUESTS = Number(process.env.VFS_FUZZ_REQUESTS ?? 20000);
/** How often (in requests) the daemon's fds are compared with the model; 1 to find the request that leaks. */
const FD_EVERY = Number(process.env.VFS_FUZZ_FD_EVERY ?? 250);
const FORGETS = new Set<number>([Op.FORGET, Op.BATCH_FORGET]);

const KATA_MAP = [
  ':prefix:all:trusted.:user.virtiofs.:', ':prefix:all:security.:user.virtiofs.:',
  ':bad:client:user.virtiofs.::', ':bad:server::trusted.:', ':bad:server::security.:', ':ok:all:::',
].join(' ');
const CONFIGS: readonly string[][] = [['--xattr'], ['--xattrmap', KATA_MAP, '--killpriv-v2', '--allow-mmap', '--cache', 'never']];
const replay = seedFromEnv();
// Seed base + k runs configuration k: a seed names its configuration (seed % configurations).
const raw = (Date.now() ^ (process.pid << 16)) >>> 0;
const base = replay ?? raw - (raw % CONFIGS.length);

for (const [k, args] of CONFIGS.entries()) {
  // A replayed seed runs in the configuration it ran in (seed % configurations).
  const seed = replay ?? (base + k) >>> 0;
  if (replay !== undefined && seed % CONFIGS.length !== k) continue;
  test.serial(`stateful fuzz through vhost-user into the sandboxed daemon (--seccomp kill, ${args[0]}): it lives, replies, keeps its fds and the host`, async (t) => {
    t.timeout(5 * 60_000);
    await storm(t, seed, args);
  });
}

async function storm(t: ExecutionContext, seed: number, args: string[]): Promise<void> {
  if (process.geteuid?.() !== 0) {
    t.fail('needs root: the callers 0/1000/65534 are real credential switches in the daemon');
    return;
  }
  t.log(`seed ${seed}, ${args.join(' ')} (replay: VFS_FUZZ_SEED=${seed} npx ava test/fuzz-vhost-stateful.test.ts)`);
  const w = makeFuzzShare();
  t.teardown(() => fs.rmSync(w.parent, { recursive: true, force: true }));
  const before = snapshot(w.parent);
  const { d, io, closeFrontend } = await connectSandboxed(t, w.share, args);
  const call = (op: number, parts: Buffer[], nodeid: bigint | number = 1): { error: number; body: Buffer } => {
    const r = io.call([request(op, parts, { nodeid })], [OutHeader.size, 256 * 1024]);
    if (r === undefined) throw new Error(`${op}: no reply`);
    return { error: r.header.error, body: r.body };
  };
  const ok = (op: number, parts: Buffer[], nodeid: bigint | number = 1): Buffer => {
    const a = call(op, parts, nodeid);
    if (a.error !== 0) throw new Error(`opcode ${op} failed: ${a.error}`);
    return a.body;
  };
  const init = (): void => {
    ok(Op.INIT, [struct(InitIn, { major: 7, minor: 38, maxReadahead: 131072, flags: 0xffffffff })], 0);
  };
  init();
  const baseFds = d.fdCount();
  const baseTargets = d.fdTargets();
  /** The daemon's fds opened since INIT (the first dozen), for a count that disagrees with the model. */
  const newFds = (): string => [...d.fdTargets()].filter(([n, p]) => baseTargets.get(n) !== p)
    .map(([n, p]) => `${n} -> ${p}`).slice(0, 12).join(', ');

  const fz = new StatefulFuzzer(seed, w);
  const started = Date.now();
  let died: DaemonDied | undefined;
  let maxExcess = 0;
  for (let i = 0; i < REQUESTS && fz.failures.length === 0; i++) {
    fz.run(i, (readable, writable, op) => {
      try {
        return io.serve(readable, writable, op, FORGETS);
      } catch (err) {
        if (err instanceof DaemonDied) died = err;
        throw err;
      }
    });
    if (i % FD_EVERY === FD_EVERY - 1 && fz.initialized && fz.failures.length === 0) {
      const held = d.fdCount() - baseFds;
      // A lower bound while the guest holds things (minimumFds() says why), exact at the end.
      if (held < fz.minimumFds()) {
        fz.fail(`#after ${i}: the daemon holds ${held} fds more than after INIT, fewer than the ${fz.minimumFds()} the guest's ` +
          `${fz.liveNodes.size} nodes and ${fz.liveFh.size} handles need; fds new since INIT: ${newFds() || 'none'}`);
      }
      maxExcess = Math.max(maxExcess, held - fz.minimumFds());
    }
  }
  const storm = Date.now() - started;
  if (fz.failures.length > 0) {
    t.log(`seed ${seed}; last requests:\n  ${fz.history.join('\n  ')}`);
    if (died !== undefined || !d.alive()) t.log(`daemon: ${await lastWords(d)}`);
  }
  t.deepEqual(fz.failures, [], `seed ${seed}: invariants held during the storm`);
  if (fz.failures.length > 0) return;
  t.true(d.alive(), 'the daemon is alive after the storm');
  t.log(`${REQUESTS} requests in ${storm} ms (${Math.round(REQUESTS / (storm / 1000))}/s); daemon fds at most ${maxExcess} above the guest's minimum`);

  t.deepEqual(snapshot(w.parent), before, 'the share\'s parent and its sentinels are unchanged');

  // The session still serves.
  if (!fz.initialized) {
    init();
    fz.initialized = true;
  }
  const fresh = `fresh-${seed}`;
  t.is(call(Op.LOOKUP, [cstr(fresh)]).error, -2, 'a new name is not there yet');
  const c = ok(Op.CREATE, [struct(CreateIn, { flags: 2, mode: 0o100644, umask: 0 }), cstr(fresh)]);
  const node = EntryOutHead.decode(c, 0).nodeid;
  const fh = OpenOut.decode(c, ENTRY_OUT_SIZE).fh;
  fz.addRef(Number(node), S_IFREG);
  const data = Buffer.from(`written after the storm, seed ${seed}\n`);
  t.is(WriteOut.decode(ok(Op.WRITE, [struct(WriteIn, { fh, offset: 0n, size: data.length }), data], node), 0).size, data.length);
  t.deepEqual(ok(Op.READ, [struct(ReadIn, { fh, offset: 0n, size: 4096 })], node), data, 'reads back what was written');
  t.is(Attr.decode(ok(Op.GETATTR, [struct(GetattrIn, {})], node), 16).size, BigInt(data.length));
  ok(Op.RELEASE, [struct(ReleaseIn, { fh })], node);
  t.is(fs.readFileSync(path.join(w.share, fresh), 'utf8'), data.toString());

  // Let go of everything: the daemon is back to the fds it had after INIT.
  for (const f of fz.liveFh.values()) call(Op.RELEASE, [struct(ReleaseIn, { fh: BigInt(f) })], fz.fhNode.get(f) ?? 1n);
  for (const n of fz.liveNodes.values()) {
    io.call([request(Op.FORGET, [struct(ForgetIn, { nlookup: BigInt(fz.refs.get(n) ?? 0) })], { nodeid: n })], [], HIPRIO);
  }
  // Each FORGET was waited for (its chain came back), so the daemon has served them all.
  t.is(d.fdCount(), baseFds, `the daemon's fds once the guest let go of all (${fz.liveNodes.size} nodes, ${fz.liveFh.size} handles released)`);
  t.is(call(Op.DESTROY, [], 0).error, 0);
  t.true(d.alive());
  closeFrontend();
  const answers = [...fz.errnos.entries()].sort(([a], [b]) => a.localeCompare(b)).map(([k, v]) => `${k}: ${v}`).join(', ');
  t.log(`answers: ${answers}`);
  t.is(await d.stop(), 0, `the launcher exits 0 after SIGTERM:\n${d.log().slice(-2000)}`);
}
