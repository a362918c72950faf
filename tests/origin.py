"""A real, scriptable origin server for the end-to-end tests (127.0.0.1, port 0, its own thread and loop).

The request target's query string says how to answer, e.g. `/x?cc=max-age=60&size=2048&chunked=1`:
  status=N        response status (default 200)          cc=VALUE     Cache-Control
  size=N          body of N deterministic bytes           body=TEXT    literal body
  chunked=1       Transfer-Encoding: chunked (4 KiB chunks)
  truncate=1      announce the full body, send half, then close the connection
  delay=S         wait S seconds before the head          bodygate=G   head now, body once gate G opens
  gate=G          hold the whole response until gate G opens
  etag=E / lm=D   ETag / Last-Modified, answering 304 to a matching If-None-Match / If-Modified-Since
  vary=F          Vary: F (the body then names the request's F value)
  hdr=N:V         an extra response field (repeatable)    echo=1       body = JSON of the request received
  close=1         Connection: close                       noclen=1     close-delimited body (no length)
  readgate=G      read the request body only once gate G opens
  te=CODING       Transfer-Encoding: CODING (not chunked), body delimited by closing the connection
  hints=LINK      send a 103 Early Hints with Link: LINK before the response
Every request is recorded (method, target, headers, body) before it is answered.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit


@dataclass
class Seen:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes
    conn: int = 0  # which connection it came on (Origin.open_conns)

    def header(self, name: str) -> str | None:
        for n, v in self.headers:
            if n.lower() == name.lower():
                return v
        return None


def _accepting(task: asyncio.Task) -> bool:
    """Is this the loop's task that sets up a connection it accepted (its transport not made yet)?"""
    return getattr(task.get_coro(), "__name__", "") == "_accept_connection2"


async def close_listener(server: asyncio.Server) -> None:
    """Close a server's listener without leaking what it accepted: stop accepting, let the connections already
    accepted be set up, then close. (asyncio's Server.close alone leaves a connection accepted just before it
    open and unanswered forever: its transport's Server._attach fails once the server is closed, and nothing
    closes the socket.) Runs on the server's loop."""
    loop = asyncio.get_running_loop()
    for s in server.sockets:
        loop.remove_reader(s.fileno())
    for _ in range(1000):  # bounded: an accepted connection is set up within a few iterations
        if not any(_accepting(t) for t in asyncio.all_tasks()):
            break
        await asyncio.sleep(0)
    else:
        raise RuntimeError("connections accepted are still being set up")
    server.close()


def body_bytes(target: str, n: int) -> bytes:
    unit = target.encode() + b"|0123456789abcdef"
    return (unit * (n // len(unit) + 1))[:n]


@dataclass
class Origin:
    host: str = "127.0.0.1"
    port: int = 0
    sock: socket.socket | None = None  # a socket bound (port 0) but not listening yet: serve on it
    seen: list[Seen] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._cond = threading.Condition()
        self._gates: dict[str, asyncio.Event] = {}
        self._overrides: dict[str, dict[str, str]] = {}
        self._conns: set[asyncio.StreamWriter] = set()
        self._transports: set[asyncio.BaseTransport] = set()  # every connection accepted (connection_made)
        self._conn_ids = itertools.count(1)
        self.open_conns: set[int] = set()  # the connections open now, by Seen.conn
        started = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            if self.sock is not None:
                start = self.loop.create_server(self._protocol, sock=self.sock)
            else:
                start = self.loop.create_server(self._protocol, self.host, 0)
            self.server = self.loop.run_until_complete(start)
            self.port = self.server.sockets[0].getsockname()[1]
            started.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        if not started.wait(10):
            raise RuntimeError("origin did not start")

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # ------------------------------------------------------------------ test side
    def count(self, path_prefix: str = "") -> int:
        with self._cond:
            return sum(1 for s in self.seen if s.target.startswith(path_prefix))

    def requests_for(self, path_prefix: str) -> list[Seen]:
        with self._cond:
            return [s for s in self.seen if s.target.startswith(path_prefix)]

    def wait_count(self, path_prefix: str, n: int, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while sum(1 for s in self.seen if s.target.startswith(path_prefix)) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def override(self, path: str, **params: str) -> None:
        """From now on, requests whose path is `path` behave as if the query also said `params`."""
        with self._cond:
            self._overrides[path] = params

    def open_gate(self, name: str) -> None:
        self.loop.call_soon_threadsafe(self._gate(name).set)

    def kill(self) -> None:
        """Die as a killed process does: every connection accepted is reset and the listener closes (the
        kernel resets what it still queues); then the loop stops."""

        async def die() -> None:
            await close_listener(self.server)
            for t in list(self._transports):
                t.abort()  # type: ignore[attr-defined]

        asyncio.run_coroutine_threadsafe(die(), self.loop).result(5)
        self.close()

    def close(self) -> None:
        def stop() -> None:
            self.server.close()
            for w in list(self._conns):
                w.close()
            self.loop.stop()

        self.loop.call_soon_threadsafe(stop)
        self.thread.join(10)

    # ------------------------------------------------------------------ server side
    def _protocol(self) -> asyncio.StreamReaderProtocol:
        """asyncio.start_server's protocol, remembering its transport from connection_made (for kill)."""
        origin = self

        class Tracked(asyncio.StreamReaderProtocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                origin._transports.add(transport)
                super().connection_made(transport)

            def connection_lost(self, exc: Exception | None) -> None:
                origin._transports.discard(self._transport)  # type: ignore[attr-defined]
                super().connection_lost(exc)

        return Tracked(asyncio.StreamReader(loop=self.loop), self._client, loop=self.loop)

    def _gate(self, name: str) -> asyncio.Event:
        g = self._gates.get(name)
        if g is None:
            g = self._gates[name] = asyncio.Event()
        return g

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._conns.add(writer)
        conn = next(self._conn_ids)
        self.open_conns.add(conn)
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                method, target, _ = line.decode("latin-1").split(" ", 2)
                headers = []
                while True:
                    h = await reader.readline()
                    if h in (b"\r\n", b"\n", b""):
                        break
                    n, _, v = h.decode("latin-1").partition(":")
                    headers.append((n.strip(), v.strip()))
                hd = {n.lower(): v for n, v in headers}
                rg = parse_qs(urlsplit(target).query).get("readgate")
                if rg:  # do not read the request body until the gate opens (flow-control tests)
                    await self._gate(rg[0]).wait()
                body = b""
                if "content-length" in hd:
                    body = await reader.readexactly(int(hd["content-length"]))
                elif hd.get("transfer-encoding", "").lower() == "chunked":
                    while True:
                        size = int((await reader.readline()).split(b";")[0], 16)
                        if size == 0:
                            await reader.readline()
                            break
                        body += await reader.readexactly(size)
                        await reader.readline()
                seen = Seen(method, target, headers, body, conn)
                with self._cond:
                    self.seen.append(seen)
                    self._cond.notify_all()
                if not await self._answer(seen, hd, writer):
                    return
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            return
        finally:
            self._conns.discard(writer)
            self.open_conns.discard(conn)
            writer.close()

    async def _answer(self, req: Seen, hd: dict[str, str], w: asyncio.StreamWriter) -> bool:
        u = urlsplit(req.target)
        q = dict(parse_qs(u.query, keep_blank_values=True).items())
        with self._cond:
            q.update({k: [v] for k, v in self._overrides.get(u.path, {}).items()})

        def one(k: str, default: str | None = None) -> str | None:
            return q[k][0] if k in q else default

        if one("gate"):
            await self._gate(one("gate") or "").wait()
        if one("delay"):
            await asyncio.sleep(float(one("delay") or 0))
        status = int(one("status", "200") or 200)
        fields: list[tuple[str, str]] = [("Date", _http_date())]
        if one("cc") is not None:
            fields.append(("Cache-Control", one("cc") or ""))
        etag, lm = one("etag"), one("lm")
        if etag:
            fields.append(("ETag", etag))
        if lm:
            fields.append(("Last-Modified", lm))
        if one("vary"):
            fields.append(("Vary", one("vary") or ""))
        for h in q.get("hdr", []):
            n, _, v = h.partition(":")
            fields.append((n, v))
        if (etag and hd.get("if-none-match") == etag) or (lm and hd.get("if-modified-since") == lm):
            status = 304
        if one("echo"):
            body = json.dumps(
                {
                    "method": req.method,
                    "target": req.target,
                    "headers": req.headers,
                    "body": req.body.decode("latin-1"),
                }
            ).encode()
        elif one("body") is not None:
            body = (one("body") or "").encode()
        elif one("vary"):
            body = f"variant {hd.get((one('vary') or '').lower(), '')}".encode()
        else:
            body = body_bytes(req.target, int(one("size", "100") or 100))
        if status == 304 or req.method == "HEAD":
            send_body = b""
        else:
            send_body = body
        te = one("te")
        close = one("close") == "1" or one("noclen") == "1" or te is not None
        chunked = one("chunked") == "1"
        if status == 304:
            pass
        elif te is not None:  # a transfer coding other than chunked: the body ends at close
            fields.append(("Transfer-Encoding", te))
        elif chunked:
            fields.append(("Transfer-Encoding", "chunked"))
        elif one("noclen") != "1":
            fields.append(("Content-Length", str(len(body))))
        if close:
            fields.append(("Connection", "close"))
        reason = {200: "OK", 304: "Not Modified", 404: "Not Found"}.get(status, "Status")
        head = f"HTTP/1.1 {status} {reason}\r\n" + "".join(f"{n}: {v}\r\n" for n, v in fields) + "\r\n"
        if one("hints"):  # an interim 103 first (RFC 8297)
            head = f"HTTP/1.1 103 Early Hints\r\nLink: {one('hints')}\r\n\r\n" + head
        w.write(head.encode("latin-1"))
        await w.drain()
        if one("bodygate"):
            await self._gate(one("bodygate") or "").wait()
        if one("truncate") == "1":
            cut = send_body[: len(send_body) // 2]
            w.write(b"%x\r\n%s\r\n" % (len(cut), cut) if chunked else cut)
            await w.drain()
            return False
        if chunked and status != 304 and req.method != "HEAD":
            for i in range(0, len(send_body), 4096):
                part = send_body[i : i + 4096]
                w.write(b"%x\r\n%s\r\n" % (len(part), part))
            w.write(b"0\r\n\r\n")
        else:
            w.write(send_body)
        await w.drain()
        return not close


def _http_date(t: float | None = None) -> str:
    from email.utils import formatdate

    return formatdate(t, usegmt=True)
