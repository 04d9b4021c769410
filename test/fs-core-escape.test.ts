// Requests that try to name something outside the shared directory: every name-taking
// opcode with "..", "../x", "a/b" or an absolute name, on the root and on a subdirectory.
// Each must fail with an errno, and nothing may appear beside the shared dir or leave it.
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { CreateIn, EntryOutHead, LinkIn, MkdirIn, MknodIn, Op, Rename2In, RenameIn } from '../src/fs/fuse-abi.js';
import { makeFs, init, send, request, struct, cstr } from './fs-helpers.js';

const HOSTILE = ['..', '../escape', 'a/b', '/tmp/escape', '../../escape', '.'];

test('no name-taking opcode reaches outside the shared directory', (t) => {
  const f = makeFs();
  t.teardown(() => f.cleanup());
  init(f.session);
  // The names a request could leave behind outside: beside the share, one level up, /tmp.
  const parent = path.dirname(f.dir);
  const outside = ['escape', 'moved', 'b'].flatMap((n) => [path.join(parent, n), path.join(path.dirname(parent), n)]);
  outside.push('/tmp/escape');
  const existedBefore = outside.filter((p) => fs.existsSync(p));
  fs.writeFileSync(path.join(f.dir, 'file'), 'inside');
  fs.mkdirSync(path.join(f.dir, 'sub'));
  const lookup = (dir: number, name: string): number => {
    const a = send(f.session, request(Op.LOOKUP, [cstr(name)], { nodeid: dir }));
    if (a === null || a.error !== 0) throw new Error(`lookup ${name}: ${a?.error}`);
    return Number(EntryOutHead.decode(a.body, 0).nodeid);
  };
  const file = lookup(1, 'file');
  const sub = lookup(1, 'sub');

  for (const dir of [1, sub]) {
    for (const name of HOSTILE) {
      const where = `parent ${dir === 1 ? 'root' : 'sub'}, name '${name}'`;
      const cases: Array<[string, Buffer]> = [
        ['MKDIR', request(Op.MKDIR, [struct(MkdirIn, { mode: 0o755 }), cstr(name)], { nodeid: dir })],
        ['CREATE', request(Op.CREATE, [struct(CreateIn, { flags: 0o101, mode: 0o100644 }), cstr(name)], { nodeid: dir })],
        ['MKNOD', request(Op.MKNOD, [struct(MknodIn, { mode: 0o010644 }), cstr(name)], { nodeid: dir })],
        ['SYMLINK', request(Op.SYMLINK, [cstr(name), cstr('/etc/passwd')], { nodeid: dir })],
        ['LINK', request(Op.LINK, [struct(LinkIn, { oldnodeid: BigInt(file) }), cstr(name)], { nodeid: dir })],
        ['RENAME (to)', request(Op.RENAME, [struct(RenameIn, { newdir: BigInt(dir) }), cstr('file'), cstr(name)], { nodeid: 1 })],
        ['RENAME2 (to)', request(Op.RENAME2, [struct(Rename2In, { newdir: BigInt(dir) }), cstr('file'), cstr(name)], { nodeid: 1 })],
        ['RENAME (from)', request(Op.RENAME, [struct(RenameIn, { newdir: 1n }), cstr(name), cstr('moved')], { nodeid: dir })],
        ['UNLINK', request(Op.UNLINK, [cstr(name)], { nodeid: dir })],
        ['RMDIR', request(Op.RMDIR, [cstr(name)], { nodeid: dir })],
      ];
      for (const [op, req] of cases) {
        const a = send(f.session, req);
        t.true(a !== null && a.error < 0, `${op} ${where}: answered ${a?.error}`);
      }
    }
  }
  t.deepEqual(outside.filter((p) => fs.existsSync(p)), existedBefore, 'nothing appeared outside the shared dir');
  t.deepEqual(fs.readdirSync(f.dir).sort(), ['file', 'sub'], 'the shared dir is unchanged');
  t.is(fs.readFileSync(path.join(f.dir, 'file'), 'utf8'), 'inside');
  t.deepEqual(fs.readdirSync(path.join(f.dir, 'sub')), []);
});
