"""An HTTP transport for the judge's ``openai`` client that bounds what one server can cost a run.

- **A total deadline per request** (connect, headers and body together). The client's own
  timeouts are per socket operation, so a server that drips one header line or one body byte
  a second holds a request as long as it likes. Here a timer shuts the request's socket down
  at the deadline, which ends any read blocked on it.
- **A cap on the decoded body** (``MAX_RESPONSE_BYTES``). The body is decoded here, chunk by
  chunk, with the decoder's output bounded, so neither a large body nor a small gzip that
  inflates to gigabytes is ever held whole.

Each request gets a fresh connection (no keep-alive), so that the deadline's timer knows the
socket of its own request.
"""

from __future__ import annotations

import socket
import threading
import zlib
from collections.abc import Iterator

import httpx2

MAX_RESPONSE_BYTES = 1 << 20
"""The most bytes of a decoded judge response read (1 MiB); a chat-completions reply with a
one-line verdict is a few hundred bytes."""

# The encodings decoded here (zlib window bits); any other is refused rather than passed on.
_DECODERS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


class ResponseTooLarge(Exception):
    """The server's response is larger than ``MAX_RESPONSE_BYTES`` once decoded."""


class DeadlineTransport(httpx2.BaseTransport):
    """``httpx2.HTTPTransport`` with a total deadline per request and a capped decoded body.

    Args:
        deadline: seconds one request may take in all, from its start to its body's end.
        max_bytes: the most decoded body bytes read; beyond them, ``ResponseTooLarge``.
        proxy: a proxy URL to connect through (None: connect directly).
    """

    def __init__(
        self, deadline: float, max_bytes: int = MAX_RESPONSE_BYTES, proxy: str | None = None
    ):
        self.deadline = deadline
        self.max_bytes = max_bytes
        self._inner = httpx2.HTTPTransport(
            limits=httpx2.Limits(max_keepalive_connections=0), proxy=proxy
        )

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        watch = _Watch(self.deadline)
        request.extensions = {**request.extensions, "trace": watch.trace}
        request.headers["Accept-Encoding"] = ", ".join(_DECODERS)
        try:
            response = self._inner.handle_request(request)
        except httpx2.TransportError:
            watch.cancel()
            if watch.expired:
                raise watch.timeout() from None
            raise
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        length = response.headers.get("content-length", "")
        problem = None
        if encoding not in ("identity", *_DECODERS):
            problem = f"the response's Content-Encoding {encoding!r} is not gzip or deflate"
        elif encoding == "identity" and length.isdigit() and int(length) > self.max_bytes:
            problem = f"the response is {int(length)} bytes, over the {_limit(self.max_bytes)}"
        if problem is not None:
            response.close()
            watch.cancel()
            raise ResponseTooLarge(problem)
        headers = [
            (name, value)
            for name, value in response.headers.multi_items()
            if name.lower() not in ("content-encoding", "content-length")
        ]
        body = _BoundedBody(response.stream, _DECODERS.get(encoding), watch, self.max_bytes)
        return httpx2.Response(
            response.status_code, headers=headers, stream=body, extensions=response.extensions
        )

    def close(self) -> None:
        self._inner.close()


class _Watch:
    """The deadline of one request: a timer that shuts its socket down when it passes."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.expired = False
        self._socket: socket.socket | None = None
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def trace(self, event: str, info: dict) -> None:
        """httpcore2's trace hook: learns the socket as soon as it is connected."""
        if event == "connection.connect_tcp.complete":
            with self._lock:
                self._socket = info["return_value"].get_extra_info("socket")
                late = self.expired
            if late:
                _shut(self._socket)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            sock = self._socket
        if sock is not None:
            _shut(sock)

    def cancel(self) -> None:
        self._timer.cancel()

    def timeout(self) -> httpx2.ReadTimeout:
        return httpx2.ReadTimeout(f"no complete response within {self.seconds:g} s")


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)  # wakes a read blocked on it, in any thread
    except OSError:
        pass  # already closed


def _limit(max_bytes: int) -> str:
    return f"{max_bytes} byte limit (mosa.eval.judges.bounded_http.MAX_RESPONSE_BYTES)"


class _BoundedBody(httpx2.SyncByteStream):
    """The decoded body, at most ``max_bytes`` of it, within the request's deadline."""

    def __init__(self, raw, wbits: int | None, watch: _Watch, max_bytes: int):
        self._raw, self._wbits, self._watch, self._max_bytes = raw, wbits, watch, max_bytes

    def __iter__(self) -> Iterator[bytes]:
        decoder = None if self._wbits is None else zlib.decompressobj(self._wbits)
        size = 0
        try:
            for chunk in self._raw:
                if decoder is None:
                    data = chunk
                else:
                    # At most one byte past the cap is decoded: enough to know it is exceeded.
                    data = decoder.decompress(chunk, self._max_bytes + 1 - size)
                size += len(data)
                if size > self._max_bytes:
                    raise ResponseTooLarge(
                        f"the response is over the {_limit(self._max_bytes)} once decoded"
                    )
                yield data
                if decoder is not None and decoder.eof:
                    break  # anything after the compressed stream's end is not read
        except zlib.error as err:
            raise httpx2.DecodingError(f"the response's compressed body is damaged: {err}") from err
        except httpx2.TransportError:
            if self._watch.expired:
                raise self._watch.timeout() from None
            raise
        if self._watch.expired:  # the socket shut at the deadline reads as the body's end
            raise self._watch.timeout()

    def close(self) -> None:
        self._watch.cancel()
        self._raw.close()
