"""Read and write ONNX files one initializer at a time.

An ONNX file is a protobuf ModelProto. Its weights are TensorProto messages inside the graph,
usually with their bytes in `raw_data`. The reader walks the protobuf wire format over a
memory map, so each weight is a zero-copy numpy view that is read only when it is used and
released right after. The rest of the model (the "skeleton": nodes, inputs, attributes) is
small and parsed with onnx as usual.

The writer relies on a protobuf rule: when a message field appears more than once, parsers
merge the occurrences, appending repeated fields. It writes the skeleton first, then each
initializer as one more `graph { initializer { … } }` occurrence, so the output is written
sequentially and never held in memory. onnx, onnxruntime and Triton read the result as one
ordinary model.

A model above 2 GiB keeps its weights in ONNX external data: the graph's TensorProtos say
`data_location: EXTERNAL` with a file name, an offset and a length. The reader maps each
external file and hands out views on it like raw_data; the writer, given `external_data`,
appends every tensor of at least EXTERNAL_MIN_BYTES to one data file beside the graph
(`<graph>.data`, offsets aligned to EXTERNAL_ALIGN) and writes only its header into the graph.
Either way one tensor at a time is in memory, so peak memory follows the largest tensors.
"""

from __future__ import annotations

import contextlib
import math
import mmap
import os
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import onnx
from onnx import numpy_helper

# Field numbers from onnx.proto3.
_MODEL_GRAPH = 7
_GRAPH_INITIALIZER = 5
_TENSOR_DIMS = 1
_TENSOR_DATA_TYPE = 2
_TENSOR_NAME = 8
_TENSOR_RAW_DATA = 9
_TENSOR_EXTERNAL_DATA = 13
_TENSOR_DATA_LOCATION = 14
_ENTRY_KEY = 1
_ENTRY_VALUE = 2

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5

# A protobuf message cannot exceed 2 GiB; larger models need ONNX external data.
PROTOBUF_LIMIT = 2**31 - 1

_PAGE = mmap.PAGESIZE
# ONNX allows any rank; real weights have a handful. Deeper shapes are refused as malformed.
MAX_RANK = 32
# No tensor has more elements than this (2**44: 64 TiB of float32); a shape past it is a lie.
MAX_ELEMENTS = 2**44
_KNOWN_TYPES = frozenset(onnx.TensorProto.DataType.values()) - {onnx.TensorProto.UNDEFINED}
# Bytes per element of the whole-byte numeric types, whose raw_data size is exact.
_ELEMENT_SIZES: dict[int, int] = {
    t: np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t)).itemsize
    for t in (
        onnx.TensorProto.FLOAT, onnx.TensorProto.UINT8, onnx.TensorProto.INT8, onnx.TensorProto.UINT16,
        onnx.TensorProto.INT16, onnx.TensorProto.INT32, onnx.TensorProto.INT64, onnx.TensorProto.BOOL,
        onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.UINT32, onnx.TensorProto.UINT64,
        onnx.TensorProto.BFLOAT16,
    )
}


# External data: the file beside the graph, the smallest tensor put there (smaller ones stay
# in the graph, as onnx.save's size_threshold does), and the alignment of each tensor in it.
EXTERNAL_DATA_SUFFIX = ".data"
EXTERNAL_MIN_BYTES = 1024
EXTERNAL_ALIGN = 64


def external_data_path(graph: str | os.PathLike[str]) -> Path:
    """The data file the writer puts beside `graph`."""
    graph = Path(graph)
    return graph.with_name(graph.name + EXTERNAL_DATA_SUFFIX)


def external_data_files(graph: str | os.PathLike[str]) -> list[Path]:
    """The data files an output graph written here refers to (none for a single-file model)."""
    data = external_data_path(graph)
    return [data] if data.is_file() else []


def artifact_bytes(graph: str | os.PathLike[str]) -> int:
    """Bytes of the graph and its external data."""
    return sum(path.stat().st_size for path in (Path(graph), *external_data_files(graph)))


class OnnxFormatError(ValueError):
    """The file is not a well-formed ONNX model."""


class OutputTooLarge(ValueError):
    """The output would exceed the 2 GiB protobuf limit of a single-file ONNX model."""


def _read_varint(buf: mmap.mmap | bytes, pos: int, end: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= end or shift > 63:
            raise OnnxFormatError(f"truncated or malformed varint at byte {pos}")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


@dataclass(frozen=True)
class _Field:
    number: int
    wire_type: int
    start: int  # first byte of the tag
    value_start: int  # payload start (LEN) or the varint value itself for VARINT
    end: int  # one past the last byte


def _fields(buf: mmap.mmap | bytes, start: int, end: int) -> Iterator[_Field]:
    pos = start
    while pos < end:
        tag_start = pos
        tag, pos = _read_varint(buf, pos, end)
        number, wire_type = tag >> 3, tag & 7
        if wire_type == _VARINT:
            value, pos = _read_varint(buf, pos, end)
            yield _Field(number, wire_type, tag_start, value, pos)
            continue
        if wire_type == _LEN:
            length, pos = _read_varint(buf, pos, end)
            value_start, pos = pos, pos + length
        elif wire_type == _I64:
            value_start, pos = pos, pos + 8
        elif wire_type == _I32:
            value_start, pos = pos, pos + 4
        else:
            raise OnnxFormatError(f"unsupported protobuf wire type {wire_type} at byte {tag_start}")
        if pos > end:
            raise OnnxFormatError(f"field {number} at byte {tag_start} runs past the end of its message")
        yield _Field(number, wire_type, tag_start, value_start, pos)


@dataclass
class LazyTensor:
    """One initializer of an ONNX file; its values are read only when asked for."""

    name: str
    data_type: int
    dims: tuple[int, ...]
    _file: OnnxFile = field(repr=False)
    _start: int = field(repr=False)  # the TensorProto's bytes in the file
    _end: int = field(repr=False)
    _raw: tuple[int, int] | None = field(default=None, repr=False)  # raw_data payload range
    _external: dict[str, str] | None = field(default=None, repr=False)

    @property
    def numel(self) -> int:
        return math.prod(self.dims)  # Python ints: a hostile shape cannot wrap around

    @property
    def is_float32(self) -> bool:
        return self.data_type == onnx.TensorProto.FLOAT

    @property
    def is_external(self) -> bool:
        return self._external is not None

    @property
    def has_bytes(self) -> bool:
        """Whether the values are a plain byte range (raw_data or external data) that array()
        maps without copying."""
        return (self._raw is not None or self._external is not None) and self.data_type in _ELEMENT_SIZES

    def encoded(self) -> memoryview | bytes:
        """The TensorProto exactly as stored, for copying it to the output unchanged."""
        if self._external is not None:
            return numpy_helper.from_array(self.array(), self.name).SerializeToString()
        return memoryview(self._file.buffer)[self._start : self._end]

    def array(self) -> np.ndarray:
        """The values as a numpy array: a read-only view on the file where possible."""
        if self._raw is not None:
            dtype = onnx.helper.tensor_dtype_to_np_dtype(self.data_type)
            start, end = self._raw
            if (end - start) != self.numel * dtype.itemsize:
                raise OnnxFormatError(
                    f"initializer {self.name!r}: raw_data has {end - start} bytes for shape {self.dims}"
                )
            self._file.prefetch(start, end)
            return np.frombuffer(self._file.buffer, dtype=dtype, count=self.numel, offset=start).reshape(self.dims)
        if self._external is not None:
            return self._file.external_array(self)
        proto = onnx.TensorProto()
        try:
            proto.ParseFromString(bytes(self._file.buffer[self._start : self._end]))
            return numpy_helper.to_array(proto)
        except Exception as exc:  # protobuf's DecodeError, or numpy refusing the values
            raise OnnxFormatError(f"initializer {self.name!r}: {type(exc).__name__}: {exc}") from None

    def release(self) -> None:
        """Drop this tensor's pages from the process (they stay in the page cache)."""
        if self._raw is not None:
            self._file.release(*self._raw)
        elif self._external is not None:
            self._file.release_external(self)


class OnnxFile:
    """An ONNX model opened for streaming: `skeleton` without initializers, and `initializers`."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._handle = open(self.path, "rb")  # noqa: SIM115 - closed in close()
        self._external_maps: dict[str, mmap.mmap] = {}
        try:
            size = os.fstat(self._handle.fileno()).st_size
            if size == 0:
                raise OnnxFormatError(f"{self.path.name}: the file is empty")
            self.buffer = mmap.mmap(self._handle.fileno(), 0, access=mmap.ACCESS_READ)
            self.size = size
            try:
                self.skeleton, self.initializers = self._split()
            except (UnicodeDecodeError, OverflowError, IndexError) as exc:
                raise OnnxFormatError(f"{self.path.name}: not an ONNX model ({type(exc).__name__}: {exc})") from None
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> OnnxFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for mapped in self._external_maps.values():
            mapped.close()
        self._external_maps.clear()
        buffer = getattr(self, "buffer", None)
        if buffer is not None:
            # A caller may still hold a view on a tensor; then the map closes when it is collected.
            with contextlib.suppress(BufferError):
                buffer.close()
        self._handle.close()

    def prefetch(self, start: int, end: int) -> None:
        aligned = start - start % _PAGE
        self.buffer.madvise(mmap.MADV_WILLNEED, aligned, end - aligned)

    def release(self, start: int, end: int) -> None:
        first = -(-start // _PAGE) * _PAGE
        last = end - end % _PAGE
        if last > first:
            self.buffer.madvise(mmap.MADV_DONTNEED, first, last - first)

    def release_external(self, tensor: LazyTensor) -> None:
        info = tensor._external or {}
        mapped = self._external_maps.get(info.get("location", ""))
        if mapped is None:
            return
        start = int(info.get("offset", "0") or 0)
        end = min(len(mapped), start + int(info.get("length", "0") or 0))
        first = -(-start // _PAGE) * _PAGE
        last = end - end % _PAGE
        if last > first:
            mapped.madvise(mmap.MADV_DONTNEED, first, last - first)

    @property
    def has_external_data(self) -> bool:
        return any(t.is_external for t in self.initializers)

    def _split(self) -> tuple[onnx.ModelProto, list[LazyTensor]]:
        buf = self.buffer
        other_fields: list[bytes] = []
        graph_parts: list[bytes] = []
        initializers: list[LazyTensor] = []
        for top in _fields(buf, 0, self.size):
            if top.number != _MODEL_GRAPH:
                other_fields.append(buf[top.start : top.end])
                continue
            if top.wire_type != _LEN:
                raise OnnxFormatError("ModelProto.graph is not a message")
            for inner in _fields(buf, top.value_start, top.end):
                if inner.number == _GRAPH_INITIALIZER and inner.wire_type == _LEN:
                    initializers.append(self._tensor(inner.value_start, inner.end))
                else:
                    graph_parts.append(buf[inner.start : inner.end])
        graph_bytes = b"".join(graph_parts)
        skeleton_bytes = (
            b"".join(other_fields)
            + bytes([(_MODEL_GRAPH << 3) | _LEN])
            + _encode_varint(len(graph_bytes))
            + graph_bytes
        )
        skeleton = onnx.ModelProto()
        try:
            skeleton.ParseFromString(skeleton_bytes)
        except Exception as exc:  # protobuf raises its own DecodeError type
            raise OnnxFormatError(f"{self.path.name}: not an ONNX model ({exc})") from exc
        if not skeleton.graph.node and not initializers:
            raise OnnxFormatError(f"{self.path.name}: the ONNX model has an empty graph")
        return skeleton, initializers

    def _tensor(self, start: int, end: int) -> LazyTensor:
        buf = self.buffer
        name = ""
        data_type = 0
        dims: list[int] = []
        raw: tuple[int, int] | None = None
        external: dict[str, str] = {}
        location = 0
        for f in _fields(buf, start, end):
            if f.number == _TENSOR_DIMS and f.wire_type == _VARINT:
                dims.append(f.value_start)
            elif f.number == _TENSOR_DIMS and f.wire_type == _LEN:  # packed
                pos = f.value_start
                while pos < f.end:
                    value, pos = _read_varint(buf, pos, f.end)
                    dims.append(value)
            elif f.number == _TENSOR_DATA_TYPE:
                data_type = f.value_start
            elif f.number == _TENSOR_NAME:
                name = buf[f.value_start : f.end].decode("utf-8")
            elif f.number == _TENSOR_RAW_DATA:
                raw = (f.value_start, f.end)
            elif f.number == _TENSOR_DATA_LOCATION:
                location = f.value_start
            elif f.number == _TENSOR_EXTERNAL_DATA:
                entry = {
                    g.number: buf[g.value_start : g.end].decode("utf-8") for g in _fields(buf, f.value_start, f.end)
                }
                external[entry.get(_ENTRY_KEY, "")] = entry.get(_ENTRY_VALUE, "")
        # int64 dims arrive as unsigned varints; negative values mean a malformed tensor.
        if any(d >= 2**63 for d in dims):
            raise OnnxFormatError(f"initializer {name!r} has a negative dimension")
        if len(dims) > MAX_RANK:
            raise OnnxFormatError(f"initializer {name!r} has {len(dims)} dimensions, more than {MAX_RANK}")
        if math.prod(max(d, 1) for d in dims) > MAX_ELEMENTS:  # even with a 0 among them numpy cannot shape it
            raise OnnxFormatError(f"initializer {name!r} has the impossible shape {tuple(dims)}")
        if data_type not in _KNOWN_TYPES:
            raise OnnxFormatError(f"initializer {name!r} has the unknown data type {data_type}")
        tensor = LazyTensor(name, data_type, tuple(dims), self, start, end)
        if location == onnx.TensorProto.EXTERNAL:
            tensor._external = external
            return tensor
        tensor._raw = raw
        # Every element takes at least half a byte of the file (int4 packs two), and exactly its
        # size in raw_data; a shape that claims more is a lie, refused before anything is
        # allocated for it.
        stored = end - start
        size = _ELEMENT_SIZES.get(data_type)
        if tensor.numel > 2 * stored or (raw is not None and size is not None and tensor.numel * size != raw[1] - raw[0]):
            raise OnnxFormatError(f"initializer {name!r} claims shape {tensor.dims} but stores {stored} bytes")
        return tensor

    def external_array(self, tensor: LazyTensor) -> np.ndarray:
        """An external-data tensor, read only from a regular file inside the model's own folder."""
        info = tensor._external or {}
        location = info.get("location", "")
        relative = Path(location)
        if not location or "\x00" in location or relative.is_absolute() or ".." in relative.parts:
            raise OnnxFormatError(
                f"initializer {tensor.name!r}: external data location {location!r} is not a plain relative path"
            )
        folder = self.path.parent.resolve()
        target = (folder / relative).resolve()
        if not target.is_relative_to(folder):  # a symbolic link that leads out
            raise OnnxFormatError(f"initializer {tensor.name!r}: external data location {location!r} leaves the model's folder")
        if location not in self._external_maps:
            try:
                # O_NOFOLLOW: a link swapped in after the check above is not followed either.
                fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW)
            except OSError as exc:
                raise OnnxFormatError(f"initializer {tensor.name!r}: external data {location!r} cannot be read ({exc.strerror})") from None
            try:
                if not os.path.isfile(f"/proc/self/fd/{fd}") or os.fstat(fd).st_size == 0:
                    raise OnnxFormatError(f"initializer {tensor.name!r}: external data {location!r} is not a non-empty regular file")
                self._external_maps[location] = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
            finally:
                os.close(fd)
        mapped = self._external_maps[location]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)
        try:
            offset = int(info.get("offset", "0"))
            length = int(info["length"]) if "length" in info else None
        except ValueError:
            raise OnnxFormatError(f"initializer {tensor.name!r}: external data offset or length is not an integer") from None
        claimed = tensor.numel * dtype.itemsize
        if offset < 0 or offset + claimed > len(mapped) or (length is not None and length != claimed):
            raise OnnxFormatError(
                f"initializer {tensor.name!r} claims {claimed} bytes at offset {offset} of {location!r}, "
                f"which holds {len(mapped)} bytes"
            )
        return np.frombuffer(mapped, dtype=dtype, count=tensor.numel, offset=offset).reshape(tensor.dims)


class OnnxStreamWriter:
    """Write a skeleton, then initializers one by one, as an ONNX model: a single file, or with
    `external_data` the graph and one external data file beside it (external_data_path).

    Writes happen on one background thread, so the caller prepares the next tensor while the
    previous one goes to disk; at most one tensor waits to be written. The files are scratch
    space for an upload, so they are not fsynced.
    """

    def __init__(self, path: str | os.PathLike[str], skeleton: onnx.ModelProto, external_data: bool = False) -> None:
        if len(skeleton.graph.initializer):
            raise ValueError("the skeleton must not carry initializers; write them with add_array")
        self.path = Path(path)
        self.external = external_data
        self._out: BinaryIO = open(self.path, "wb")  # noqa: SIM115 - closed in close()
        self._data: BinaryIO | None = None
        self.data_path = external_data_path(self.path)
        if external_data:
            self._data = open(self.data_path, "wb")  # noqa: SIM115 - closed in close()
        self._data_offset = 0
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="onnx-write")
        self._pending: Future[None] | None = None
        self.written = 0
        self._submit(skeleton.SerializeToString())

    def __enter__(self) -> OnnxStreamWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            self._wait()
        finally:
            self._pool.shutdown(wait=True)
            self._out.close()
            if self._data is not None:
                self._data.close()

    def _wait(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def _submit(self, *parts: bytes | memoryview, data: tuple[bytes | memoryview, ...] = ()) -> None:
        size = sum(len(part) for part in parts)
        if self.written + size > PROTOBUF_LIMIT:
            raise OutputTooLarge(
                f"the output model exceeds {PROTOBUF_LIMIT} bytes, the limit of a single-file ONNX model"
            )
        self.written += size
        self._wait()
        self._pending = self._pool.submit(self._write_parts, parts, data)

    def _write_parts(self, parts: tuple[bytes | memoryview, ...], data: tuple[bytes | memoryview, ...]) -> None:
        if data:
            assert self._data is not None
            for part in data:
                self._data.write(part)
        for part in parts:
            self._out.write(part)

    def _write_initializer(
        self, header: bytes | memoryview, payload: memoryview | None, data: tuple[bytes | memoryview, ...] = ()
    ) -> None:
        raw_field = b"" if payload is None else bytes([(_TENSOR_RAW_DATA << 3) | _LEN]) + _encode_varint(len(payload))
        tensor_size = len(header) + len(raw_field) + (0 if payload is None else len(payload))
        graph_payload = bytes([(_GRAPH_INITIALIZER << 3) | _LEN]) + _encode_varint(tensor_size)
        graph_size = len(graph_payload) + tensor_size
        prefix = bytes([(_MODEL_GRAPH << 3) | _LEN]) + _encode_varint(graph_size) + graph_payload
        if payload is None:
            self._submit(prefix, header, data=data)
        else:
            # The payload view keeps its array alive until the background write is done.
            self._submit(prefix, header, raw_field, payload, data=data)

    def add_array(self, name: str, array: np.ndarray, data_type: int | None = None) -> None:
        """Append an initializer whose bytes are `array` (little-endian, C order)."""
        header = onnx.TensorProto()
        header.name = name
        header.data_type = data_type if data_type is not None else onnx.helper.np_dtype_to_tensor_dtype(array.dtype)
        header.dims.extend(array.shape)
        as_bytes = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
        if self.external and as_bytes.nbytes >= EXTERNAL_MIN_BYTES:
            padding = -self._data_offset % EXTERNAL_ALIGN
            offset = self._data_offset + padding
            header.data_location = onnx.TensorProto.EXTERNAL
            for key, value in (("location", self.data_path.name), ("offset", str(offset)), ("length", str(as_bytes.nbytes))):
                entry = header.external_data.add()
                entry.key, entry.value = key, value
            self._data_offset = offset + as_bytes.nbytes
            self._write_initializer(header.SerializeToString(), None, (b"\0" * padding, as_bytes.data))
            return
        self._write_initializer(header.SerializeToString(), as_bytes.data)  # the buffer itself, no copy

    def add_encoded(self, encoded: memoryview | bytes) -> None:
        """Append an initializer that is already a serialized TensorProto."""
        self._write_initializer(encoded, None)

    def copy(self, tensor: LazyTensor) -> None:
        """Append a source initializer unchanged: its bytes as they are, or with external data,
        moved to this writer's data file (a view on the source's map, never a copy in memory)."""
        if tensor.is_external or (self.external and tensor.has_bytes):
            self.add_array(tensor.name, tensor.array(), tensor.data_type)
        else:
            self.add_encoded(tensor.encoded())
