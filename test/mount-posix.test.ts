// POSIX behaviour found by running pjdfstest against the sandboxed daemon (README, "POSIX
// conformance"), pinned down here with ordinary syscalls: each snippet runs as a non-root
// user once through the mount and once in a plain directory set up the same way, and the
// results (return values, errnos, contents, modes left behind) must be equal.
// The mount is the daemon as users run it (vfs-launch, --sandbox namespace, --seccomp kill)
// with --writeback, where the daemon widens write-only opens to read-write for the client's
// page cache: a caller allowed to write but not to read a file must still be able to open it.
import test from 'ava';
import fs from 'node:fs';
import path from 'node:path';
import { useMount, pyJson, twinDirs, type Server } from './mount-helpers.js';

const UID = 4242;
const GID = 4343;

const server = useMount(test, ['--sandbox', 'namespace', '--seccomp', 'kill', '--writeback']);
let s: Server;
test.beforeEach(() => {
  s = server();
});

/** The same fresh subdir, owned by the test user (then `setup`, as root), in the share and in the ref dir. */
const pair = (setup: (root: string) => void): { m: string; h: string; r: string } => twinDirs(s, (root) => {
  fs.chownSync(root, UID, GID);
  setup(root);
});

function file(root: string, name: string, mode: number, content = 'old content'): void {
  const p = path.join(root, name);
  fs.writeFileSync(p, content);
  fs.chownSync(p, UID, GID);
  fs.chmodSync(p, mode);
}

/** Mode, size and content (read as root) of every entry, for comparing share and ref. */
function tree(root: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const e of fs.readdirSync(root).sort()) {
    const st = fs.lstatSync(path.join(root, e));
    out[e] = `${st.mode.toString(8)}:${st.size}:${fs.readFileSync(path.join(root, e), 'utf8')}`;
  }
  return out;
}

const WRITE_ONLY_OPENS = `
d = sys.argv[1]
p = lambda x: os.path.join(d, x)
def wr(name, flags, data=b"new"):
    fd = os.open(p(name), flags)
    try:
        return os.write(fd, data)
    finally:
        os.close(fd)
print(json.dumps({
  "trunc": E(lambda: wr("wo-trunc", os.O_WRONLY | os.O_TRUNC)),
  "plain": E(lambda: wr("wo-plain", os.O_WRONLY)),
  "append": E(lambda: wr("wo-append", os.O_WRONLY | os.O_APPEND)),
  "creat-existing": E(lambda: wr("wo-creat", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)),
  "setuid-trunc": E(lambda: wr("setuid", os.O_WRONLY | os.O_TRUNC)),
  "read-only-file": E(lambda: wr("ro", os.O_WRONLY | os.O_TRUNC)),
  "read-of-write-only": E(lambda: os.read(os.open(p("wo-plain"), os.O_RDONLY), 1)),
}))
`;

test('--writeback: a file the caller may write but not read opens O_WRONLY (with O_TRUNC, O_APPEND, O_CREAT) as on the host', (t) => {
  const d = pair((root) => {
    file(root, 'wo-trunc', 0o200);
    file(root, 'wo-plain', 0o200);
    file(root, 'wo-append', 0o200);
    file(root, 'wo-creat', 0o200);
    // O_TRUNC by its owner, who has no CAP_FSETID: the host clears setuid/setgid.
    file(root, 'setuid', 0o6730);
    file(root, 'ro', 0o400);
  });
  const opts = { uid: UID, gid: GID };
  const viaMount = pyJson<Record<string, unknown>>(WRITE_ONLY_OPENS, [d.m], opts);
  const onHost = pyJson<Record<string, unknown>>(WRITE_ONLY_OPENS, [d.r], opts);
  t.deepEqual(viaMount, onHost);
  t.is(onHost.trunc, 3);
  t.is(onHost['read-only-file'], 'ERR EACCES');
  t.deepEqual(tree(d.h), tree(d.r));
  t.is(tree(d.h)['wo-append'], '100200:14:old contentnew');
  t.is(tree(d.h).setuid, '100730:3:new');
});
