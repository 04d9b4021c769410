// Framing of vhost-user messages on the connected socket: read one header and its payload
// (with the descriptors that came along), write replies. A frontend sends each message in
// one write, so once epoll says the socket is readable the whole message is normally there;
// a message cut short is waited for briefly and then treated as a framing error, since a
// stream that lost its framing cannot be trusted any further and the connection is closed.
import { recvMsg, sendAll, pollIn, closeFd, MSG_DONTWAIT } from '../sys/socket-calls.js';
import { HEADER, MAX_PAYLOAD, FLAG_VERSION, FLAG_VERSION_MASK, FLAG_REPLY, encodeHeader, type Message } from './vhost-user-protocol.js';

/** How long to wait for the rest of a message that arrived in pieces. */
const PARTIAL_TIMEOUT_MS = 1000;
/** How long a reply may wait for the frontend to make room in the socket. */
const SEND_TIMEOUT_MS = 5000;

export type ReadResult = 'message' | 'again' | 'eof' | { error: string };

export class VhostUserConnection {
  private readonly buf = Buffer.alloc(HEADER.bytes + MAX_PAYLOAD);
  private readonly out = Buffer.alloc(HEADER.bytes + MAX_PAYLOAD);
  private open = true;
  /** The last message read (valid until the next read). */
  readonly msg: Message = { request: 0, flags: 0, size: 0, payload: Buffer.alloc(0), fds: [] };

  constructor(readonly fd: number) {}

  /** Read exactly `len` bytes at buf[off]; 'again' only if nothing at all was there. */
  private readExact(off: number, len: number, fds: number[]): 'ok' | 'again' | 'eof' | { error: string } {
    let got = 0;
    while (got < len) {
      const n = recvMsg(this.fd, this.buf, off + got, len - got, fds, MSG_DONTWAIT);
      if (n === 0) return got === 0 && off === 0 ? 'eof' : { error: `connection closed in the middle of a message (${off + got} of ${off + len} bytes)` };
      if (n < 0) {
        if (got === 0 && off === 0) return 'again';
        if (!pollIn(this.fd, PARTIAL_TIMEOUT_MS)) {
          return { error: `message cut short: ${off + got} of ${off + len} bytes arrived within ${PARTIAL_TIMEOUT_MS} ms` };
        }
        continue;
      }
      got += n;
    }
    return 'ok';
  }

  /**
   * Read one message into this.msg. 'again': nothing to read; 'eof': the frontend closed
   * the connection; {error}: the framing is broken (the caller closes the connection).
   * Received descriptors are in msg.fds and belong to the caller, also on error.
   */
  read(): ReadResult {
    const m = this.msg;
    m.fds.length = 0;
    const h = this.readExact(0, HEADER.bytes, m.fds);
    if (h !== 'ok') return h;
    m.request = this.buf.readUInt32LE(HEADER.request);
    m.flags = this.buf.readUInt32LE(HEADER.flags);
    m.size = this.buf.readUInt32LE(HEADER.size);
    if ((m.flags & FLAG_VERSION_MASK) !== FLAG_VERSION) return { error: `unsupported message version ${m.flags & FLAG_VERSION_MASK} (flags 0x${m.flags.toString(16)})` };
    if ((m.flags & FLAG_REPLY) !== 0) return { error: `a request with the reply flag set (request ${m.request})` };
    if (m.size > MAX_PAYLOAD) return { error: `payload size ${m.size} of request ${m.request} exceeds ${MAX_PAYLOAD}` };
    if (m.size > 0) {
      const p = this.readExact(HEADER.bytes, m.size, m.fds);
      if (p === 'eof' || p === 'again') return { error: `payload of request ${m.request} missing` };
      if (p !== 'ok') return p;
    }
    m.payload = this.buf.subarray(HEADER.bytes, HEADER.bytes + m.size);
    return 'message';
  }

  /** Send a reply to `request` with `payload`. */
  reply(request: number, payload: Buffer): void {
    encodeHeader(request, FLAG_VERSION | FLAG_REPLY, payload.length, this.out);
    payload.copy(this.out, HEADER.bytes);
    sendAll(this.fd, this.out.subarray(0, HEADER.bytes + payload.length), [], SEND_TIMEOUT_MS);
  }

  /** Reply with a u64 (GET_* answers and REPLY_ACK status: 0 success, non-zero failure). */
  replyU64(request: number, value: bigint | number): void {
    encodeHeader(request, FLAG_VERSION | FLAG_REPLY, 8, this.out);
    this.out.writeBigUInt64LE(BigInt(value), HEADER.bytes);
    sendAll(this.fd, this.out.subarray(0, HEADER.bytes + 8), [], SEND_TIMEOUT_MS);
  }

  close(): void {
    if (!this.open) return;
    this.open = false;
    closeFd(this.fd);
  }
}
