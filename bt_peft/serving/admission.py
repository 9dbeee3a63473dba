"""Admission control: what the server holds for requests it has not answered yet is bounded before it reads them.

At most `max_requests` `/get_reward` requests are in flight (read, waiting for the tokenizer, queued or being scored);
at most `max_buffered_bytes` of request bodies are held between being read and being tokenized. Beyond either, a
request gets 503 at once, before its body is read (a body that declares its Content-Length is refused on it; one sent
in chunks when a chunk would exceed the budget). The event loop is the only caller, so plain counters suffice.
"""

import contextlib
from collections.abc import AsyncIterator, Iterator

from starlette.requests import Request

from .requests import RequestError


class Admission:
    """Counts the requests in flight and the body bytes buffered, and refuses what would exceed either bound.

    Args:
        max_requests (`int`): the most `/get_reward` requests in flight.
        max_buffered_bytes (`int`): the most bytes of request bodies held at once.
        max_body_bytes (`int`): the largest body of one request (413 beyond).
    """

    def __init__(self, max_requests: int, max_buffered_bytes: int, max_body_bytes: int):
        self.max_requests = max_requests
        self.max_buffered_bytes = max_buffered_bytes
        self.max_body_bytes = max_body_bytes
        self.in_flight = 0
        self.buffered_bytes = 0

    @contextlib.contextmanager
    def request(self) -> Iterator[None]:
        """Count one request in flight for the duration of the block.

        Raises:
            `RequestError`: 503 when `max_requests` are already in flight.
        """
        if self.in_flight >= self.max_requests:
            raise RequestError(503, None, f"{self.in_flight} requests are in flight (at most {self.max_requests}, "
                               "--max_requests); retry later")
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1

    def _reserve(self, size: int) -> None:
        if self.buffered_bytes + size > self.max_buffered_bytes:
            raise RequestError(503, None, f"{self.buffered_bytes} bytes of request bodies are buffered (at most "
                               f"{self.max_buffered_bytes}, --max_buffered_bytes); retry later")
        self.buffered_bytes += size

    @contextlib.asynccontextmanager
    async def body(self, request: Request) -> AsyncIterator[bytearray]:
        """Read the request body, holding its bytes in the buffer budget for the duration of the block.

        Yields:
            `bytearray`: the whole body (not copied into `bytes`: it may be MiBs).

        Raises:
            `RequestError`: 413 as soon as the body exceeds `max_body_bytes` (by its Content-Length or while read);
            503 when holding it would exceed `max_buffered_bytes` (checked on the Content-Length before reading, and
            on each chunk while reading).
        """
        too_large = RequestError(413, "body", f"larger than this server's limit of {self.max_body_bytes} bytes "
                                 "(--max_body_bytes)")
        declared = request.headers.get("content-length", "")
        reserved = int(declared) if declared.isdigit() else 0
        if reserved > self.max_body_bytes:
            raise too_large
        self._reserve(reserved)
        try:
            body = bytearray()
            async for chunk in request.stream():
                body += chunk
                if len(body) > self.max_body_bytes:
                    raise too_large
                if len(body) > reserved:
                    self._reserve(len(body) - reserved)
                    reserved = len(body)
            yield body
        finally:
            self.buffered_bytes -= reserved
