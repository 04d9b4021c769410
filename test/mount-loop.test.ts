// The /dev/fuse request loop on its own, behind a scripted session (test/mount-stub-serve.ts)
// and the real kernel: replies reach the caller, a reply the kernel refuses still ends the
// caller's wait (EIO) instead of leaving it blocked forever, concurrent callers are all
// answered, and the stop eventfd (SIGTERM in the server) ends the loop with exit 0.
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { codeOf, mountFor, pyJson } from './mount-helpers.js';
import { isMountPoint } from '../src/fuse-dev/mount.js';

test('replies reach callers; a reply the kernel refuses becomes EIO, not a hang', async (t) => {
  const s = await mountFor(t, [], undefined, 'stub');
  t.true(fs.statSync(s.mnt).isDirectory());
  t.true(fs.statSync(path.join(s.mnt, 'good')).isFile());
  t.is(fs.statSync(path.join(s.mnt, 'good')).ino, 2);
  t.is(codeOf(() => fs.statSync(path.join(s.mnt, 'missing'))), 'ENOENT');
  t.is(codeOf(() => fs.statSync(path.join(s.mnt, 'bad'))), 'EIO');
  // The server's log line arrives through a pipe: give it a moment.
  for (let i = 0; i < 100 && !/answering EIO/.test(s.stderr()); i++) await new Promise((r) => setTimeout(r, 50));
  t.regex(s.stderr(), /answering EIO/);
  t.is(codeOf(() => fs.statSync(path.join(s.mnt, 'throw'))), 'EIO');
  // The loop is still serving afterwards.
  t.true(fs.statSync(path.join(s.mnt, 'good')).isFile());
});

test('many concurrent callers are all answered', async (t) => {
  const s = await mountFor(t, [], undefined, 'stub');
  // 16 threads in one process, each alternating a found and a missing name (cache=0 on
  // negative entries is the stub's default, so every missing stat is a request).
  const r = pyJson<number[]>(`
import threading
d = sys.argv[1]
res = [0] * 16
def work(k):
    ok = 0
    for i in range(300):
        if os.stat(os.path.join(d, "good")).st_ino == 2: ok += 1
        if E(lambda: os.stat(os.path.join(d, "n%d_%d" % (k, i)))) == "ERR ENOENT": ok += 1
    res[k] = ok
ts = [threading.Thread(target=work, args=(k,)) for k in range(16)]
[x.start() for x in ts]; [x.join() for x in ts]
print(json.dumps(res))`, [s.mnt]);
  t.deepEqual(r, Array.from({ length: 16 }, () => 600));
});

test('the stop eventfd ends the loop with 0 and the mount is gone', async (t) => {
  const s = await mountFor(t, [], undefined, 'stub');
  fs.statSync(path.join(s.mnt, 'good'));
  t.deepEqual(await s.stop('SIGTERM'), { code: 0, signal: null });
  t.false(isMountPoint(s.mnt));
});
