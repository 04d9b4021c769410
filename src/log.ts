// Process-wide logger: levelled lines on stderr (or syslog through logger(1)'s socket
// when asked), one line per event, prefixed with the component. Kept tiny and
// allocation-light because the device loop logs rejected guest requests from the hot path.
// Every line is written before the logging call returns, by the thread that logs it
// (src/sys/log-calls.ts says why not process.stderr): a line logged is a line in the sink,
// in order, even when the process exits right after.
import { writeText } from './sys/log-calls.js';

export type LogLevel = 'error' | 'warn' | 'info' | 'debug' | 'trace';

const ORDER: Record<LogLevel, number> = { error: 0, warn: 1, info: 2, debug: 3, trace: 4 };

export const LOG_LEVELS: readonly LogLevel[] = ['error', 'warn', 'info', 'debug', 'trace'];

let threshold = ORDER.info;
const STDERR_FD = 2;

/** Write `text` to fd 2 now, from this thread (see src/sys/log-calls.ts); for messages outside the logger. */
export function writeStderr(text: string): void {
  writeText(STDERR_FD, text);
}

let sink: (line: string) => void = (line) => writeText(STDERR_FD, line + '\n');

export function setLogLevel(level: LogLevel): void {
  threshold = ORDER[level];
}

/** The level set last (a queue thread starts at its owner's). */
export function logLevel(): LogLevel {
  return LOG_LEVELS[threshold] as LogLevel;
}

export function setLogSink(fn: (line: string) => void): void {
  sink = fn;
}

/** Syslog severities (RFC 5424) of our levels; facility daemon (3). */
const SYSLOG_SEVERITY: Record<LogLevel, number> = { error: 3, warn: 4, info: 6, debug: 7, trace: 7 };
const FACILITY_DAEMON = 3;

let syslogSend: ((msg: Buffer) => void) | undefined;

/** Route log lines to syslog through `send` (a connected /dev/log datagram socket). */
export function useSyslog(send: (msg: Buffer) => void): void {
  syslogSend = send;
}

export function logEnabled(level: LogLevel): boolean {
  return ORDER[level] <= threshold;
}

export interface Logger {
  error(msg: string): void;
  warn(msg: string): void;
  info(msg: string): void;
  debug(msg: string): void;
  trace(msg: string): void;
}

export function logger(component: string): Logger {
  const emit = (level: LogLevel, msg: string): void => {
    if (ORDER[level] > threshold) return;
    if (syslogSend !== undefined) {
      const pri = FACILITY_DAEMON * 8 + SYSLOG_SEVERITY[level];
      syslogSend(Buffer.from(`<${pri}>vfs[${process.pid}]: ${component}: ${msg}`));
      return;
    }
    sink(`[${new Date().toISOString()}] ${level.toUpperCase()} ${component}: ${msg}`);
  };
  return {
    error: (m) => emit('error', m),
    warn: (m) => emit('warn', m),
    info: (m) => emit('info', m),
    debug: (m) => emit('debug', m),
    trace: (m) => emit('trace', m),
  };
}
