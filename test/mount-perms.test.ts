// Permissions and ownership through a /dev/fuse mount for a caller that is not root:
// every check runs the same snippet, as the same uid/gid, once through the mount and once
// on a plain directory set up identically; the results (successes, errnos, the owners
// and modes left on the host) must be the same. The client kernel checks permissions
// (default_permissions); the server creates with the caller's uid/gid.
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { useMount, pyJson, twinDirs, type Server } from './mount-helpers.js';

const UID = 4242;
const GID = 4343;
const OTHER = 4444;
const as = { uid: UID, gid: GID };

const server = useMount(test);
let s: Server;
// before hooks run concurrently: pick the server up once they are all done.
test.beforeEach(() => {
  s = server();
});

/** Run `setup` (as root) on a fresh subdir of the share and of the ref dir; return both paths. */
const pair = (setup: (root: string) => void): { m: string; h: string; r: string } => twinDirs(s, setup);

/** Owner and mode of every entry below root, for comparing host and ref trees. */
function tree(root: string): Record<string, string> {
  const out: Record<string, string> = {};
  const walk = (dir: string): void => {
    for (const e of fs.readdirSync(dir).sort()) {
      const p = path.join(dir, e);
      const st = fs.lstatSync(p);
      out[path.relative(root, p)] = `${st.uid}:${st.gid}:${st.mode.toString(8)}:${st.nlink}:${st.size}`;
      if (st.isDirectory()) walk(p);
    }
  };
  walk(root);
  return out;
}

function setupTree(root: string): void {
  const p = (x: string): string => path.join(root, x);
  fs.mkdirSync(p('closed'), { mode: 0o755 });
  fs.mkdirSync(p('private'), { mode: 0o700 });
  fs.writeFileSync(p('private/x'), '');
  fs.mkdirSync(p('open'));
  fs.chmodSync(p('open'), 0o777);
  fs.mkdirSync(p('sticky'));
  fs.chmodSync(p('sticky'), 0o1777);
  fs.writeFileSync(p('sticky/others'), 'o');
  fs.chownSync(p('sticky/others'), OTHER, OTHER);
  fs.chmodSync(p('sticky/others'), 0o666);
  fs.writeFileSync(p('secret'), 'secret');
  fs.chmodSync(p('secret'), 0o600);
  fs.writeFileSync(p('readable'), 'readable');
  fs.chmodSync(p('readable'), 0o644);
  fs.writeFileSync(p('shared-rw'), 'rw');
  fs.chmodSync(p('shared-rw'), 0o666);
  fs.mkdirSync(p('sgid'));
  fs.chownSync(p('sgid'), 0, 777);
  fs.chmodSync(p('sgid'), 0o2777);
  fs.writeFileSync(p('mine'), 'mine');
  fs.chownSync(p('mine'), UID, GID);
}

const REFUSALS = `
d = sys.argv[1]
p = lambda x: os.path.join(d, x)
def create(x):
    os.close(os.open(p(x), os.O_CREAT | os.O_WRONLY, 0o644))
def read(x):
    with open(p(x), "rb") as f: return f.read().decode()
def write(x):
    fd = os.open(p(x), os.O_WRONLY); os.write(fd, b"W"); os.close(fd)
out = {}
out["create in closed"] = E(lambda: create("closed/f"))
out["mkdir in closed"] = E(lambda: os.mkdir(p("closed/d")))
out["symlink in closed"] = E(lambda: os.symlink("x", p("closed/l")))
out["mkfifo in closed"] = E(lambda: os.mkfifo(p("closed/fifo")))
out["link into closed"] = E(lambda: os.link(p("readable"), p("closed/hl")))
out["rename into closed"] = E(lambda: os.rename(p("open"), p("closed/o")))
out["read secret"] = E(lambda: read("secret"))
out["read readable"] = E(lambda: read("readable"))
out["write readable"] = E(lambda: write("readable"))
out["truncate readable"] = E(lambda: os.truncate(p("readable"), 0))
out["list private"] = E(lambda: os.listdir(p("private")))
out["stat in private"] = E(lambda: os.stat(p("private/x")) and None)
out["unlink readable"] = E(lambda: os.unlink(p("readable")))
out["unlink others in sticky"] = E(lambda: os.unlink(p("sticky/others")))
out["write others in sticky"] = E(lambda: write("sticky/others"))
out["chmod readable"] = E(lambda: os.chmod(p("readable"), 0o777))
out["chown mine to other"] = E(lambda: os.chown(p("mine"), ${OTHER}, -1))
out["chgrp mine to 0"] = E(lambda: os.chown(p("mine"), -1, 0))
out["chmod mine"] = E(lambda: os.chmod(p("mine"), 0o600))
out["utime explicit shared-rw"] = E(lambda: os.utime(p("shared-rw"), (1, 2)))
out["utime now shared-rw"] = E(lambda: os.utime(p("shared-rw")))
out["utime explicit mine"] = E(lambda: os.utime(p("mine"), (1, 2)))
out["access secret R"] = os.access(p("secret"), os.R_OK)
out["access readable W"] = os.access(p("readable"), os.W_OK)
out["access shared-rw W"] = os.access(p("shared-rw"), os.W_OK)
out["mknod chr in open"] = E(lambda: os.mknod(p("open/dev"), 0o600 | stat.S_IFCHR, os.makedev(1, 3)))
print(json.dumps(out))`;

test('an unprivileged caller is refused exactly where the kernel refuses it on a plain directory', (t) => {
  const d = pair(setupTree);
  const viaMount = pyJson<Record<string, unknown>>(REFUSALS, [d.m], as);
  const onRef = pyJson<Record<string, unknown>>(REFUSALS, [d.r], as);
  t.deepEqual(viaMount, onRef);
  // Spot checks so a mount that refused nothing and a ref that refused nothing cannot agree silently.
  t.is(viaMount['create in closed'], 'ERR EACCES');
  t.is(viaMount['read secret'], 'ERR EACCES');
  t.is(viaMount['read readable'], 'readable');
  t.is(viaMount['unlink others in sticky'], 'ERR EPERM');
  t.is(viaMount['chmod readable'], 'ERR EPERM');
  t.is(viaMount['chown mine to other'], 'ERR EPERM');
  t.is(viaMount['mknod chr in open'], 'ERR EPERM');
  t.is(viaMount['utime now shared-rw'], 'OK');
  t.deepEqual(tree(d.h), tree(d.r));
});

const CREATIONS = `
d = sys.argv[1]
p = lambda x: os.path.join(d, x)
os.umask(0o022)
os.close(os.open(p("open/file"), os.O_CREAT | os.O_WRONLY, 0o666))
os.mkdir(p("open/dir"), 0o777)
os.symlink("file", p("open/link"))
os.mkfifo(p("open/fifo"), 0o666)
os.link(p("open/file"), p("open/hard"))
os.umask(0o077)
os.close(os.open(p("open/masked"), os.O_CREAT | os.O_WRONLY, 0o666))
os.mkdir(p("open/maskeddir"), 0o777)
os.umask(0o022)
os.close(os.open(p("sgid/file"), os.O_CREAT | os.O_WRONLY, 0o2775))
os.mkdir(p("sgid/dir"), 0o755)
os.rename(p("open/file"), p("open/renamed"))
os.chmod(p("mine"), 0o640)
print(json.dumps("ok"))`;

test('files an unprivileged caller creates are owned by its uid/gid, with the umask applied', (t) => {
  const d = pair(setupTree);
  t.is(pyJson<string>(CREATIONS, [d.m], as), 'ok');
  t.is(pyJson<string>(CREATIONS, [d.r], as), 'ok');
  const host = tree(d.h);
  t.deepEqual(host, tree(d.r));
  const st = fs.lstatSync(path.join(d.h, 'open/renamed'));
  t.is(st.uid, UID);
  t.is(st.gid, GID);
  t.is(fs.lstatSync(path.join(d.h, 'open/link')).uid, UID);
  t.is(fs.lstatSync(path.join(d.h, 'open/dir')).mode & 0o7777, 0o755);
  t.is(fs.lstatSync(path.join(d.h, 'open/masked')).mode & 0o7777, 0o600);
  // A setgid directory passes its group down and a subdirectory keeps the setgid bit.
  t.is(fs.lstatSync(path.join(d.h, 'sgid/dir')).gid, 777);
  t.is(fs.lstatSync(path.join(d.h, 'sgid/dir')).mode & 0o2000, 0o2000);
  t.is(fs.lstatSync(path.join(d.h, 'sgid/file')).gid, 777);
});

const WRITE_KILLS_SUID = `
d = sys.argv[1]
p = lambda x: os.path.join(d, x)
fd = os.open(p("suid"), os.O_WRONLY); os.write(fd, b"x"); os.close(fd)
fd = os.open(p("sgid-x"), os.O_WRONLY); os.pwrite(fd, b"y", 3); os.close(fd)
fd = os.open(p("suid-trunc"), os.O_WRONLY | os.O_TRUNC); os.close(fd)
os.truncate(p("suid-truncate"), 1)
print(json.dumps({x: oct(os.stat(p(x)).st_mode) for x in ("suid", "sgid-x", "suid-trunc", "suid-truncate")}))`;

test('a write, O_TRUNC or truncate by another user clears setuid/setgid on the host', (t) => {
  const d = pair((root) => {
    for (const [name, mode] of [['suid', 0o4777], ['sgid-x', 0o2777], ['suid-trunc', 0o6777], ['suid-truncate', 0o4777]] as const) {
      fs.writeFileSync(path.join(root, name), 'content');
      fs.chmodSync(path.join(root, name), mode);
    }
  });
  const viaMount = pyJson<Record<string, string>>(WRITE_KILLS_SUID, [d.m], as);
  const onRef = pyJson<Record<string, string>>(WRITE_KILLS_SUID, [d.r], as);
  t.deepEqual(viaMount, onRef);
  for (const name of ['suid', 'sgid-x', 'suid-trunc', 'suid-truncate']) {
    t.is(fs.statSync(path.join(d.h, name)).mode & 0o6000, 0, `${name}: setuid/setgid cleared on the host`);
  }
  t.deepEqual(tree(d.h), tree(d.r));
  // Root writing does not clear them (CAP_FSETID), on either side.
  const keep = pair((root) => {
    fs.writeFileSync(path.join(root, 'suid'), 'c');
    fs.chmodSync(path.join(root, 'suid'), 0o4755);
  });
  fs.appendFileSync(path.join(keep.m, 'suid'), 'more');
  t.is(fs.statSync(path.join(keep.h, 'suid')).mode & 0o7777, 0o4755);
});
