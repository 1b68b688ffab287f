"""The node agent's SPDY/3.1 framing: the header dictionary, header blocks, and a session's streams."""

from __future__ import annotations

import asyncio
import hashlib
import struct
import zlib

import pytest

from e2e.nodeagent import spdy

pytestmark = pytest.mark.unit


def test_the_header_dictionary_is_the_one_of_the_spdy3_spec() -> None:
    # The digest of the 1423-byte dictionary every SPDY/3 implementation (Go's included) shares.
    assert len(spdy.DICTIONARY) == 1423
    assert hashlib.sha256(spdy.DICTIONARY).hexdigest() == "51d27341373f923f3cd88e1eb7162aeaa3723d7585ff2399201dc06498407f02"


def test_header_blocks_round_trip_through_the_shared_compression_context() -> None:
    deflate, inflate = zlib.compressobj(zdict=spdy.DICTIONARY), zlib.decompressobj(zdict=spdy.DICTIONARY)
    for headers in ({"streamtype": "error"}, {"streamtype": "data", "port": "8000", "requestid": "0"}):
        block = deflate.compress(spdy.encode_headers(headers)) + deflate.flush(zlib.Z_SYNC_FLUSH)
        assert spdy.decode_headers(inflate.decompress(block)) == headers


class _Writer:
    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data

    def is_closing(self) -> bool:
        return False

    async def drain(self) -> None:
        return None


def _frames(data: bytes) -> list[tuple[bool, int, int, bytes]]:
    """(control, type or stream id, flags, payload) of each frame."""
    out, offset = [], 0
    while offset < len(data):
        first, second = struct.unpack_from(">II", data, offset)
        length = second & 0xFFFFFF
        payload = bytes(data[offset + 8: offset + 8 + length])
        control = bool(first & 0x80000000)
        out.append((control, first & 0xFFFF if control else first, second >> 24, payload))
        offset += 8 + length
    return out


def test_a_session_replies_to_each_stream_delivers_data_and_answers_pings() -> None:
    deflate = zlib.compressobj(zdict=spdy.DICTIONARY)

    def syn(stream_id: int, headers: dict[str, str], fin: bool = False) -> bytes:
        block = deflate.compress(spdy.encode_headers(headers)) + deflate.flush(zlib.Z_SYNC_FLUSH)
        return spdy.control_frame(spdy.SYN_STREAM, 1 if fin else 0, struct.pack(">IIBB", stream_id, 0, 0, 0) + block)

    async def scenario() -> tuple[list, bytes, bool, bytes]:
        reader, writer = asyncio.StreamReader(), _Writer()
        session = spdy.Session(reader, writer)  # type: ignore[arg-type]
        reader.feed_data(syn(1, {"streamtype": "error"}, fin=True) + syn(3, {"streamtype": "stdin"})
                         + spdy.data_frame(3, b"hello ", False) + spdy.data_frame(3, b"world", True)
                         + spdy.control_frame(spdy.PING, 0, struct.pack(">I", 7)))
        reader.feed_eof()
        await session.serve()
        opened = []
        while (stream := session.opened.get_nowait()) is not None:
            opened.append((stream.id, stream.headers))
        stdin = await session.streams[3].reader.read()
        error_eof = session.streams[1].reader.at_eof()
        session.streams[3].write(b"out")
        session.streams[3].close()
        return opened, stdin, error_eof, bytes(writer.data)

    opened, stdin, error_eof, written = asyncio.run(scenario())
    assert opened == [(1, {"streamtype": "error"}), (3, {"streamtype": "stdin"})]
    assert stdin == b"hello world" and error_eof
    frames = _frames(written)
    replies = [struct.unpack(">I", payload[:4])[0] for control, kind, _, payload in frames if control and kind == spdy.SYN_REPLY]
    assert replies == [1, 3]
    assert (True, spdy.PING, 0, struct.pack(">I", 7)) in frames
    assert frames[-2:] == [(False, 3, 0, b"out"), (False, 3, spdy.FLAG_FIN, b"")]
