// A minimal stand-in for the daemon, for debugging the backend without the sandbox stage:
// listen, then serve one frontend with runVhostDevice on the main thread. Used only when
// VFS_TEST_DAEMON=entry; the tests normally start src/daemon/main.ts.
//   node --import tsx test/frontend/backend-entry.ts --shared-dir D --socket-path S
import * as fs from 'node:fs';
import { runVhostDevice } from '../../src/vhost/device.js';
import { createFuseServer } from '../../src/fs/fuse-server.js';
import { DEFAULT_FS_OPTIONS } from '../../src/fs/options.js';
import { listenUnix } from '../../src/sys/socket-calls.js';
import { eventfd } from '../../src/sys/event-calls.js';

const O_PATH = 0o10000000;
const O_DIRECTORY = 0o200000;

function arg(name: string): string {
  const i = process.argv.indexOf(name);
  const v = i >= 0 ? process.argv[i + 1] : undefined;
  if (v === undefined) throw new Error(`${name} is required`);
  return v;
}

const rootFd = fs.openSync(arg('--shared-dir'), O_PATH | O_DIRECTORY);
const procSelfFd = fs.openSync('/proc/self/fd', O_PATH | O_DIRECTORY);
const listenFd = listenUnix(arg('--socket-path'));
const code = runVhostDevice({
  listenFd,
  stopFd: eventfd(0),
  makeSession: (maxWrite) => createFuseServer({ rootFd, procSelfFd, options: DEFAULT_FS_OPTIONS, transport: 'virtio', maxWrite }),
});
process.exit(code);
