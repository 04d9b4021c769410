// The device thread. It owns the transport (vhost-user connection + virtqueues, or the
// /dev/fuse fd) and all FUSE state, and serves requests synchronously in one blocking
// epoll loop. Why a worker and not the main thread: the loop blocks in epoll_wait, and
// the main thread must stay in Node's event loop to turn SIGTERM/SIGINT into a clean
// stop (it writes the stop eventfd the loop also waits on). Why it is started before
// the sandbox: after pivot_root nothing outside the shared dir can be loaded, neither
// this module nor koffi's native addon, so the worker imports everything up front and
// then waits for the main thread's messages.
import { parentPort } from 'node:worker_threads';
import { createFuseServer } from '../fs/fuse-server.js';
import { runVhostDevice } from '../vhost/device.js';
import { runFuseDeviceLoop } from '../fuse-dev/fuse-loop.js';
import { dropPrivileges } from '../sandbox/index.js';
import { setLogLevel, setLogSink, useSyslog, logger } from '../log.js';
import { sendSyslog } from '../sys/syslog-calls.js';
import { sigbusGuard, lastGuardError } from '../sys/sigbus-guard.js';
import type { FromMain, ToMain } from './worker-messages.js';

const log = logger('device');
const port = parentPort;
if (port === null) throw new Error('worker.ts must run as a worker thread');

const send = (m: ToMain): void => port.postMessage(m);

function serve(m: Extract<FromMain, { type: 'serve' }>): number {
  const { rootFd, procSelfFd, fs, transport, stopFd } = m;
  if (transport.kind === 'vhost') {
    return runVhostDevice({
      listenFd: transport.listenFd,
      stopFd,
      tag: transport.tag,
      makeSession: (maxWrite) => createFuseServer({ rootFd, procSelfFd, options: fs, transport: 'virtio', maxWrite }),
    });
  }
  const session = createFuseServer({ rootFd, procSelfFd, options: fs, transport: 'devfuse', maxWrite: transport.maxWrite });
  return runFuseDeviceLoop({ devFd: transport.devFd, stopFd, session, bufferSize: transport.maxWrite + 64 * 1024 });
}

port.on('message', (m: FromMain) => {
  try {
    switch (m.type) {
      case 'drop-privileges':
        if (m.logLevel === 'off') setLogSink(() => undefined);
        else setLogLevel(m.logLevel);
        if (m.syslogFd !== undefined) {
          const fd = m.syslogFd;
          useSyslog((msg) => sendSyslog(fd, msg));
        }
        // rlimits and no_new_privs are per process; capabilities are per thread.
        dropPrivileges({ capabilities: m.capabilities, setRlimit: false });
        send({ type: 'privileges-dropped' });
        break;
      case 'serve':
        send({ type: 'exit', code: serve(m) });
        break;
    }
  } catch (err) {
    log.error(err instanceof Error ? err.message : String(err));
    send({ type: 'failed', message: err instanceof Error ? err.message : String(err) });
  }
});

// The SIGBUS guard for guest memory (sys/sigbus-guard.ts), installed here, before the
// sandbox and the seccomp filter, by the one thread that touches guest memory.
if (sigbusGuard() === undefined) log.debug(`no SIGBUS guard: ${lastGuardError()?.message ?? 'unknown'}`);

send({ type: 'ready' });
