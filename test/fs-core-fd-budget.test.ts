// The fd budget of the inode table, in process against the FUSE core: with a small
// RLIMIT_NOFILE the core holds no more fds than its budget however many inodes the guest
// remembers, gives up least recently used O_PATH fds and finds those inodes again (by
// parent and name, or by file handle), follows the guest's renames, and never reopens a
// file that has left the shared directory, even one moved to the same file system.
import test, { type ExecutionContext } from 'ava';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Attr, AttrOutHead, EntryOutHead, GetattrIn, Op, OpenIn, OpenOut, ReadIn, RenameIn } from '../src/fs/fuse-abi.js';
import { fuseServerInodeStats } from '../src/fs/fuse-server.js';
import { fdBudget } from '../src/fs/state.js';
import type { FsOptions } from '../src/fs/options.js';
import { AT_EMPTY_PATH, AT_FDCWD, FILE_HANDLE, nameToHandleAt } from '../src/sys/file-calls.js';
import { cstr, init, makeFs, request, send, struct, type TestFs } from './fs-helpers.js';

const ESTALE = -116;
const LIMIT = 200;

function setup(t: ExecutionContext, opts: Partial<FsOptions>): TestFs & { lookup(name: string, parent?: bigint): bigint; size(node: bigint): number | string } {
  const f = makeFs({ fdLimit: LIMIT, ...opts });
  t.teardown(() => f.cleanup());
  init(f.session);
  return {
    ...f,
    lookup(name: string, parent = 1n): bigint {
      const r = send(f.session, request(Op.LOOKUP, [cstr(name)], { nodeid: parent }));
      if (r === null || r.error !== 0) throw new Error(`lookup ${name}: ${r?.error}`);
      return EntryOutHead.decode(r.body, 0).nodeid;
    },
    size(node: bigint): number | string {
      const r = send(f.session, request(Op.GETATTR, [struct(GetattrIn, {})], { nodeid: node }));
      if (r === null) return 'no reply';
      if (r.error !== 0) return r.error;
      return Number(Attr.decode(r.body, AttrOutHead.size).size);
    },
  };
}

function tree(dir: string, dirs: number, per: number): void {
  for (let d = 0; d < dirs; d++) {
    fs.mkdirSync(path.join(dir, `d${d}`));
    for (let i = 0; i < per; i++) fs.writeFileSync(path.join(dir, `d${d}`, `f${i}`), 'x'.repeat(i % 50));
  }
}

for (const mode of ['never', 'prefer'] as const) {
  test(`${mode}: 1,200 remembered inodes under a ${LIMIT}-fd limit stay within the budget and all answer`, (t) => {
    const f = setup(t, { inodeFileHandles: mode });
    tree(f.dir, 4, 300);
    const budget = fdBudget(LIMIT);
    const nodes: [bigint, number][] = [];
    for (let d = 0; d < 4; d++) {
      const dn = f.lookup(`d${d}`);
      for (let i = 0; i < 300; i++) nodes.push([f.lookup(`f${i}`, dn), i % 50]);
      t.true(fuseServerInodeStats(f.session).fds <= budget, `after d${d}`);
    }
    // Every inode answers, in an order that defeats the LRU (each one was given up).
    let wrong = 0;
    for (const [node, size] of nodes) if (f.size(node) !== size) wrong++;
    for (const [node, size] of [...nodes].reverse()) if (f.size(node) !== size) wrong++;
    t.is(wrong, 0);
    const st = fuseServerInodeStats(f.session);
    t.is(st.inodes, 1204);
    t.true(st.fds <= budget, `${st.fds} fds, budget ${budget}`);
    t.true(st.reopens > 1000, `${st.reopens} reopens`);
    if (mode === 'never') t.true(st.evictions > 1000, `${st.evictions} evictions`);
    t.log(`${mode}: ${st.inodes} inodes, ${st.fds} fds (budget ${budget}), ${st.evictions} evictions, ${st.reopens} reopens`);
  });

  test(`${mode}: an evicted inode follows the guest's rename; the old name held by another file is not confused with it`, (t) => {
    const f = setup(t, { inodeFileHandles: mode });
    fs.mkdirSync(path.join(f.dir, 'a'));
    fs.mkdirSync(path.join(f.dir, 'b'));
    fs.writeFileSync(path.join(f.dir, 'a', 'x'), '12345');
    const a = f.lookup('a');
    const b = f.lookup('b');
    const x = f.lookup('x', a);
    const rn = send(f.session, request(Op.RENAME, [struct(RenameIn, { newdir: b }), cstr('x'), cstr('y')], { nodeid: a }));
    t.is(rn?.error, 0);
    // Another file takes the old name on the host.
    fs.writeFileSync(path.join(f.dir, 'a', 'x'), 'another file');
    // Push x's fd out: remember many other inodes.
    tree(f.dir, 1, 400);
    const d0 = f.lookup('d0');
    for (let i = 0; i < 400; i++) f.lookup(`f${i}`, d0);
    t.true(fuseServerInodeStats(f.session).evictions > 0 || mode === 'prefer');
    t.is(f.size(x), 5, 'x is found again under its new name b/y');
  });

  test(`${mode}: an evicted inode unlinked by the guest under one of its names still answers through its fd`, (t) => {
    const f = setup(t, { inodeFileHandles: mode });
    fs.writeFileSync(path.join(f.dir, 'a'), 'abc');
    fs.linkSync(path.join(f.dir, 'a'), path.join(f.dir, 'b'));
    const a = f.lookup('a');
    tree(f.dir, 1, 400);
    const d0 = f.lookup('d0');
    for (let i = 0; i < 400; i++) f.lookup(`f${i}`, d0);
    const u = send(f.session, request(Op.UNLINK, [cstr('a')]));
    t.is(u?.error, 0);
    // Push everything else out again: the unlinked inode keeps the fd UNLINK gave it.
    for (let i = 0; i < 400; i++) f.lookup(`f${i}`, d0);
    t.is(f.size(a), 3, 'still the file (now only named b)');
    t.false(fs.existsSync(path.join(f.dir, 'a')));
  });

  test(`${mode}: an inode moved out of the shared directory on the host is not reopened (ESTALE), nor is anything outside`, (t) => {
    const f = setup(t, { inodeFileHandles: mode });
    // The share is a subdirectory, so "outside" is on the same file system.
    const outside = fs.mkdtempSync(path.join(path.dirname(f.dir), 'vfs-outside-'));
    t.teardown(() => fs.rmSync(outside, { recursive: true, force: true }));
    fs.writeFileSync(path.join(outside, 'planted'), 'secret outside the share');
    fs.writeFileSync(path.join(f.dir, 'leaver'), 'will leave');
    const leaver = f.lookup('leaver');
    // Evict it, then move it out of the share on the host (same file system: its handle still opens it).
    tree(f.dir, 1, 400);
    const d0 = f.lookup('d0');
    for (let i = 0; i < 400; i++) f.lookup(`f${i}`, d0);
    fs.renameSync(path.join(f.dir, 'leaver'), path.join(outside, 'leaver'));
    t.is(f.size(leaver), ESTALE);
    const o = send(f.session, request(Op.OPEN, [struct(OpenIn, { flags: 0 })], { nodeid: leaver }));
    t.not(o?.error, 0);
    // The planted file's handle, as the host makes it: no node id the guest can name reaches it.
    const h = nameToHandleAt(AT_FDCWD, path.join(outside, 'planted'), 0);
    t.true(Buffer.isBuffer(h));
    if (Buffer.isBuffer(h)) {
      const words: bigint[] = [];
      for (let p = FILE_HANDLE.data; p + 8 <= h.length; p += 4) words.push(h.readBigUInt64LE(p));
      words.push(BigInt(h.readUInt32LE(FILE_HANDLE.data)), BigInt(fs.statSync(path.join(outside, 'planted')).ino));
      for (const w of words) {
        const r = send(f.session, request(Op.OPEN, [struct(OpenIn, { flags: 0 })], { nodeid: w }));
        t.is(r?.error, -2, `node id 0x${w.toString(16)} from the planted file's handle or inode number`);
        if (r?.error === 0) {
          const fh = OpenOut.decode(r.body, 0).fh;
          const rd = send(f.session, request(Op.READ, [struct(ReadIn, { fh, size: 100 })], { nodeid: w }));
          t.notRegex(rd?.body.toString() ?? '', /secret/);
        }
      }
    }
    t.is(fs.readFileSync(path.join(outside, 'planted'), 'utf8'), 'secret outside the share');
  });
}

test('prefer: LOOKUP keeps a file handle and no fd', (t) => {
  const f = setup(t, { inodeFileHandles: 'prefer', fdLimit: 0 });
  tree(f.dir, 1, 100);
  const d0 = f.lookup('d0');
  f.lookup('f0', d0); // reopens d0 itself from its handle: the one fd this listing needs
  const before = fuseServerInodeStats(f.session).fds;
  for (let i = 1; i < 100; i++) f.lookup(`f${i}`, d0);
  const st = fuseServerInodeStats(f.session);
  t.is(st.inodes, 101);
  t.is(st.fds, before, 'no fd per looked-up file');
  // tmpfs and ext4 make handles; the machine's /tmp is one of them.
  t.true(Buffer.isBuffer(nameToHandleAt(AT_FDCWD, os.tmpdir(), AT_EMPTY_PATH)));
});

test('the fd budget leaves a reserve below RLIMIT_NOFILE', (t) => {
  t.is(fdBudget(0), 0);
  t.is(fdBudget(4096), 3072);
  t.is(fdBudget(20000), 18976);
  t.is(fdBudget(1_000_000), 998976);
  t.true(fdBudget(100) >= 16 && fdBudget(100) < 100);
});
