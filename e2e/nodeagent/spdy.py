"""SPDY/3.1 framing, as much of it as the kubelet's streaming API needs.

The apiserver reaches a kubelet's exec and portForward endpoints over SPDY/3.1 (it
translates kubectl's WebSockets into SPDY on its side). A session is a set of streams
that the client opens with SYN_STREAM frames, each carrying a compressed header block
(`streamtype: stdout`, `port: 8000`, ...); the server answers each with SYN_REPLY and
then both sides send DATA frames, a FIN flag half-closing a stream. Flow control is not
enforced by Kubernetes' SPDY library, so WINDOW_UPDATE and SETTINGS are read and ignored.
"""

from __future__ import annotations

import asyncio
import struct
import zlib
from dataclasses import dataclass, field

VERSION = 3
SYN_STREAM, SYN_REPLY, RST_STREAM, SETTINGS, PING, GOAWAY, HEADERS, WINDOW_UPDATE = 1, 2, 3, 4, 6, 7, 8, 9
FLAG_FIN = 0x01
RST_CANCEL = 5
MAX_DATA = 32 * 1024

# The SPDY/3 header compression dictionary (draft-mbelshe-httpbis-spdy-00, section 2.6.10.1):
# length-prefixed names, then one run of text.
_WORDS = (
    "options", "head", "post", "put", "delete", "trace", "accept", "accept-charset", "accept-encoding",
    "accept-language", "accept-ranges", "age", "allow", "authorization", "cache-control", "connection",
    "content-base", "content-encoding", "content-language", "content-length", "content-location", "content-md5",
    "content-range", "content-type", "date", "etag", "expect", "expires", "from", "host", "if-match",
    "if-modified-since", "if-none-match", "if-range", "if-unmodified-since", "last-modified", "location",
    "max-forwards", "pragma", "proxy-authenticate", "proxy-authorization", "range", "referer", "retry-after",
    "server", "te", "trailer", "transfer-encoding", "upgrade", "user-agent", "vary", "via", "warning",
    "www-authenticate", "method", "get", "status", "200 OK", "version", "HTTP/1.1", "url", "public", "set-cookie",
    "keep-alive", "origin",
)
_TAIL = (
    "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505"
    "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request401 Unauthorized"
    "403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented503 Service Unavailable"
    "Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT"
    "chunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,"
    "text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0."
)
DICTIONARY = b"".join(struct.pack(">I", len(w)) + w.encode() for w in _WORDS) + _TAIL.encode()


class ProtocolError(Exception):
    """The peer sent something that is not SPDY/3."""


def encode_headers(headers: dict[str, str]) -> bytes:
    block = struct.pack(">I", len(headers))
    for name, value in headers.items():
        block += struct.pack(">I", len(name)) + name.lower().encode() + struct.pack(">I", len(value)) + value.encode()
    return block


def decode_headers(block: bytes) -> dict[str, str]:
    (count,), offset, headers = struct.unpack_from(">I", block), 4, {}
    for _ in range(count):
        (size,) = struct.unpack_from(">I", block, offset)
        name = block[offset + 4: offset + 4 + size].decode()
        offset += 4 + size
        (size,) = struct.unpack_from(">I", block, offset)
        # Several values of one header are joined by NUL; the first is the one that matters here.
        headers[name.lower()] = block[offset + 4: offset + 4 + size].decode().split("\0")[0]
        offset += 4 + size
    return headers


def control_frame(kind: int, flags: int, payload: bytes) -> bytes:
    return struct.pack(">HHI", 0x8000 | VERSION, kind, (flags << 24) | len(payload)) + payload


def data_frame(stream_id: int, data: bytes, fin: bool) -> bytes:
    return struct.pack(">II", stream_id & 0x7FFFFFFF, ((FLAG_FIN if fin else 0) << 24) | len(data)) + data


@dataclass
class Stream:
    id: int
    headers: dict[str, str]
    session: Session
    reader: asyncio.StreamReader = field(default_factory=asyncio.StreamReader)
    closed: bool = False  # our side sent FIN

    def write(self, data: bytes) -> None:
        for start in range(0, len(data), MAX_DATA):
            self.session.send(data_frame(self.id, data[start:start + MAX_DATA], False))

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.session.send(data_frame(self.id, b"", True))

    async def drain(self) -> None:
        await self.session.drain()


class Session:
    """The server side of one SPDY/3.1 connection: `streams()` yields each stream the client opens."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer
        self.deflate = zlib.compressobj(zdict=DICTIONARY)
        self.inflate = zlib.decompressobj(zdict=DICTIONARY)
        self.streams: dict[int, Stream] = {}
        self.opened: asyncio.Queue[Stream | None] = asyncio.Queue()
        self.done = asyncio.Event()

    def send(self, frame: bytes) -> None:
        if not self.writer.is_closing():
            self.writer.write(frame)

    async def drain(self) -> None:
        try:
            await self.writer.drain()
        except (ConnectionError, OSError):
            pass

    def _reply(self, stream_id: int) -> None:
        block = self.deflate.compress(encode_headers({})) + self.deflate.flush(zlib.Z_SYNC_FLUSH)
        self.send(control_frame(SYN_REPLY, 0, struct.pack(">I", stream_id) + block))

    async def serve(self) -> None:
        """Read frames until the peer goes away; then every stream sees end of input."""
        try:
            while True:
                head = await self.reader.readexactly(8)
                first, second = struct.unpack(">II", head)
                flags, length = second >> 24, second & 0xFFFFFF
                payload = await self.reader.readexactly(length)
                if first & 0x80000000:
                    if not self._control(first & 0xFFFF, flags, payload):
                        break
                else:
                    stream = self.streams.get(first & 0x7FFFFFFF)
                    if stream is not None:
                        if payload:
                            stream.reader.feed_data(payload)
                        if flags & FLAG_FIN:
                            stream.reader.feed_eof()
        except (asyncio.IncompleteReadError, ConnectionError, OSError, ProtocolError):
            pass
        finally:
            for stream in self.streams.values():
                if not stream.reader.at_eof():
                    stream.reader.feed_eof()
            self.done.set()
            await self.opened.put(None)

    def _control(self, kind: int, flags: int, payload: bytes) -> bool:
        if kind == SYN_STREAM:
            stream_id = struct.unpack_from(">I", payload)[0] & 0x7FFFFFFF
            headers = decode_headers(self.inflate.decompress(payload[10:]))
            stream = Stream(stream_id, headers, self)
            self.streams[stream_id] = stream
            if flags & FLAG_FIN:
                stream.reader.feed_eof()
            self._reply(stream_id)
            self.opened.put_nowait(stream)
        elif kind == HEADERS:
            self.inflate.decompress(payload[4:])  # keeps the shared compression context in step
        elif kind == RST_STREAM:
            stream = self.streams.get(struct.unpack_from(">I", payload)[0] & 0x7FFFFFFF)
            if stream is not None:
                stream.closed = True
                if not stream.reader.at_eof():
                    stream.reader.feed_eof()
        elif kind == PING:
            self.send(control_frame(PING, 0, payload))
        elif kind == GOAWAY:
            return False
        elif kind not in (SETTINGS, WINDOW_UPDATE, SYN_REPLY):
            raise ProtocolError(f"unknown SPDY control frame type {kind}")
        return True

    def reset(self, stream: Stream) -> None:
        stream.closed = True
        self.send(control_frame(RST_STREAM, 0, struct.pack(">II", stream.id, RST_CANCEL)))

    def goaway(self) -> None:
        self.send(control_frame(GOAWAY, 0, struct.pack(">II", 0, 0)))
