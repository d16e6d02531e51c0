#!/usr/bin/env python3
"""A seeded fault-injecting HTTP proxy in front of an S3-protocol server (stdlib only).

Requests are forwarded byte for byte (the Host header and every signed header stay as the client
sent them, so SigV4 signatures remain valid). Per request, a seeded random draw picks one of:

  pass         forward, return the server's answer
  error-500    answer 500 InternalError (S3 XML error body) without forwarding
  error-503    answer 503 SlowDown without forwarding
  delay        forward, then hold the server's answer for 1-5 s before returning it
  reset-before reset the client connection (TCP RST) before forwarding: the request is lost
  reset-after  forward, then reset the client connection instead of answering: the request took
               effect but its answer is lost (the client retries a request that already happened)

The draws come from one seeded stream in the order requests arrive, so a seed reproduces the mix
of faults, not their exact timing. `counts` says how many of each were injected.

Use in-process (`FaultProxy(upstream_port, seed).start()`), or on its own:
  tests/chaos/s3_proxy.py --upstream 127.0.0.1:9000 --listen 127.0.0.1:9001 --seed 1
"""

import argparse
import collections
import random
import socket
import struct
import threading
import time

DEFAULT_RATES = {"error-500": 0.02, "error-503": 0.02, "delay": 0.02, "reset-before": 0.01, "reset-after": 0.01}

ERRORS = {
    "error-500": (500, "Internal Server Error", "InternalError", "We encountered an internal error. Please try again."),
    "error-503": (503, "Slow Down", "SlowDown", "Please reduce your request rate."),
}


class ProtocolError(Exception):
    """The peer sent something this proxy cannot frame."""


class _Reader:
    """Buffered reads from a socket: lines, exact byte counts, HTTP message framing."""

    def __init__(self, sock):
        self.sock, self.buf = sock, b""

    def _fill(self):
        data = self.sock.recv(65536)
        if not data:
            raise EOFError
        self.buf += data

    def until(self, marker, limit=1 << 20):
        while marker not in self.buf:
            if len(self.buf) > limit:
                raise ProtocolError("header too long")
            self._fill()
        i = self.buf.index(marker) + len(marker)
        out, self.buf = self.buf[:i], self.buf[i:]
        return out

    def exact(self, n):
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def rest(self):
        """Everything until the peer closes."""
        out = [self.buf]
        self.buf = b""
        while True:
            data = self.sock.recv(65536)
            if not data:
                return b"".join(out)
            out.append(data)

    def head(self):
        """(raw head bytes, first line, {lowercase name: value})."""
        raw = self.until(b"\r\n\r\n")
        lines = raw[:-4].decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return raw, lines[0], headers

    def body(self, headers, until_close=False):
        """Raw body bytes framed by Content-Length or chunked encoding (kept encoded)."""
        if "chunked" in headers.get("transfer-encoding", "").lower():
            parts = []
            while True:
                size_line = self.until(b"\r\n")
                parts.append(size_line)
                size = int(size_line.split(b";")[0].strip(), 16)
                if size == 0:
                    while True:  # trailers, then the empty line
                        line = self.until(b"\r\n")
                        parts.append(line)
                        if line == b"\r\n":
                            return b"".join(parts)
                parts.append(self.exact(size + 2))
        if "content-length" in headers:
            return self.exact(int(headers["content-length"]))
        return self.rest() if until_close else b""


def _reset(sock):
    """Close with a TCP RST instead of a FIN."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


def error_response(kind, method, request_id):
    status, reason, code, message = ERRORS[kind]
    body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
            f"<RequestId>{request_id}</RequestId></Error>").encode()
    head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/xml\r\nx-amz-request-id: {request_id}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    return head if method == "HEAD" else head + body  # answers to HEAD carry no body


class FaultProxy:
    """Listens on 127.0.0.1 and forwards to the upstream port, injecting seeded faults."""

    def __init__(self, upstream_port, seed, rates=None, listen_port=0, upstream_host="127.0.0.1", trace=None):
        self.upstream = (upstream_host, upstream_port)
        self.rates = dict(DEFAULT_RATES if rates is None else rates)
        self.rng = random.Random(f"s3-proxy-{seed}")
        self.lock = threading.Lock()
        self.counts = collections.Counter()
        self.enabled = True  # False: forward everything unchanged (faults can be switched off)
        self.listener = socket.create_server(("127.0.0.1", listen_port), backlog=256)
        self.port = self.listener.getsockname()[1]
        self.closed = False
        self.next_id = 0
        self.trace = open(trace, "a", buffering=1) if trace else None  # one line per request
        self.epoch = time.monotonic()

    def start(self):
        threading.Thread(target=self._accept, name="s3-proxy", daemon=True).start()
        return self

    def _log(self, request_id, line, kind, status, started):
        now = time.monotonic()
        with self.lock:
            if self.trace:
                self.trace.write(f"{started - self.epoch:9.3f} {request_id} {kind:<12} {status} "
                                 f"{(now - started) * 1000:7.1f}ms {line}\n")

    def close(self):
        self.closed = True
        try:
            self.listener.close()
        except OSError:
            pass
        if self.trace:
            with self.lock:
                self.trace.close()
                self.trace = None

    def faults(self):
        """Faults injected so far by kind (without `pass`)."""
        with self.lock:
            return {k: v for k, v in self.counts.items() if k not in ("pass", "requests")}

    def _draw(self):
        with self.lock:
            self.next_id += 1
            self.counts["requests"] += 1
            x = self.rng.random()
            delay = self.rng.uniform(1.0, 5.0)
            kind = "pass"
            if self.enabled:
                for name, rate in self.rates.items():
                    if x < rate:
                        kind = name
                        break
                    x -= rate
            self.counts[kind] += 1
            return kind, delay, f"chaos{self.next_id:08d}"

    def _accept(self):
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client):
        upstream = up_reader = None
        reader = _Reader(client)
        try:
            while True:
                try:
                    raw, line, headers = reader.head()
                except EOFError:
                    return
                method = line.split(" ", 1)[0]
                if headers.get("expect", "").lower() == "100-continue":
                    client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                body = reader.body(headers)
                started = time.monotonic()
                kind, delay, request_id = self._draw()
                if kind == "reset-before":
                    self._log(request_id, line, kind, "-", started)
                    _reset(client)
                    return
                if kind in ERRORS:
                    client.sendall(error_response(kind, method, request_id))
                    self._log(request_id, line, kind, ERRORS[kind][0], started)
                    continue
                for fresh in (upstream is None, True):
                    if fresh:  # (re)connect; a kept-alive connection the server closed is retried once
                        if upstream is not None:
                            upstream.close()
                        upstream = socket.create_connection(self.upstream, timeout=60)
                        up_reader = _Reader(upstream)
                    try:
                        upstream.sendall(raw + body)
                        r_raw, r_line, r_headers = up_reader.head()
                        while int(r_line.split(" ")[1]) < 200:  # interim (100 Continue): ours was sent
                            r_raw, r_line, r_headers = up_reader.head()
                        break
                    except (EOFError, ConnectionResetError, BrokenPipeError):
                        if fresh:
                            raise
                status = int(r_line.split(" ")[1])
                delimited = "content-length" in r_headers or "chunked" in r_headers.get("transfer-encoding", "")
                closes = "close" in r_headers.get("connection", "").lower()
                no_body = method == "HEAD" or status in (204, 304)
                r_body = b"" if no_body else up_reader.body(r_headers, until_close=not delimited)
                closes = closes or not (no_body or delimited)
                if kind == "reset-after":
                    self._log(request_id, line, kind, status, started)
                    _reset(client)
                    return
                if kind == "delay":
                    time.sleep(delay)
                client.sendall(r_raw + r_body)
                self._log(request_id, line, kind, status, started)
                if closes or "close" in headers.get("connection", "").lower():
                    return
        except (OSError, EOFError, ProtocolError, ValueError, IndexError):
            return
        finally:
            for s in (client, upstream):
                if s is not None:
                    try:
                        s.close()
                    except OSError:
                        pass


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--upstream", required=True, help="host:port of the S3 server")
    ap.add_argument("--listen", default="127.0.0.1:0", help="127.0.0.1:PORT to listen on")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--trace", help="append one line per request (time, id, fault, status, duration) to this file")
    for kind, rate in DEFAULT_RATES.items():
        ap.add_argument(f"--{kind}", type=float, default=rate, help=f"fraction of requests (default {rate})")
    args = ap.parse_args()
    host, port = args.upstream.rsplit(":", 1)
    rates = {kind: getattr(args, kind.replace("-", "_")) for kind in DEFAULT_RATES}
    proxy = FaultProxy(int(port), args.seed, rates, int(args.listen.rsplit(":", 1)[1]), host, args.trace).start()
    print(f"listening on 127.0.0.1:{proxy.port}", flush=True)
    try:
        while True:
            time.sleep(10)
            print(f"requests {proxy.counts['requests']}, faults {proxy.faults()}", flush=True)
    except KeyboardInterrupt:
        proxy.close()


if __name__ == "__main__":
    main()
