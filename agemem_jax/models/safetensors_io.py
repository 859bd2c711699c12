"""Minimal safetensors reader and writer on numpy memory maps.

Reading memory-maps each file and hands out one tensor at a time, so a checkpoint never needs to
fit in host memory twice; bf16 comes back as `ml_dtypes.bfloat16`, which plain numpy cannot name.
The format is an 8-byte little-endian header length, a JSON header, then raw row-major bytes.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import ml_dtypes
import numpy as np

DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": ml_dtypes.bfloat16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}
NAMES = {np.dtype(v): k for k, v in DTYPES.items()}
MAX_HEADER = 100 * 1024 * 1024


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt, or does not fit the model."""


class SafetensorsFile:
    """Lazy view of one .safetensors file."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            size = self.path.stat().st_size
            with open(self.path, "rb") as f:
                (n,) = struct.unpack("<Q", f.read(8))
                if n > min(MAX_HEADER, size - 8):
                    raise CheckpointError(f"{self.path}: header length {n} is impossible")
                header = json.loads(f.read(n))
        except FileNotFoundError:
            raise CheckpointError(f"{self.path}: file not found") from None
        except (struct.error, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{self.path}: not a safetensors file ({e})") from None
        self.metadata = header.pop("__metadata__", {}) or {}
        self._entries = header
        self._data_start = 8 + n
        self._size = size
        self._mm: np.memmap | None = None

    def keys(self) -> list[str]:
        return list(self._entries)

    def get(self, key: str) -> np.ndarray:
        if key not in self._entries:
            raise CheckpointError(f"{self.path}: tensor {key!r} not found")
        e = self._entries[key]
        if e["dtype"] not in DTYPES:
            raise CheckpointError(f"{self.path}: tensor {key!r} has unsupported dtype {e['dtype']}")
        dtype = np.dtype(DTYPES[e["dtype"]])
        begin, end = e["data_offsets"]
        count = int(np.prod(e["shape"], dtype=np.int64))
        if end - begin != count * dtype.itemsize or self._data_start + end > self._size:
            raise CheckpointError(f"{self.path}: tensor {key!r} is truncated or corrupt")
        if self._mm is None:
            self._mm = np.memmap(self.path, dtype=np.uint8, mode="r")
        raw = self._mm[self._data_start + begin : self._data_start + end]
        return raw.view(dtype).reshape(e["shape"])


class CheckpointReader:
    """All tensors of an HF folder: one file or several with `model.safetensors.index.json`."""

    def __init__(self, folder: str | os.PathLike):
        folder = Path(folder)
        index = folder / "model.safetensors.index.json"
        if index.exists():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError) as e:
                raise CheckpointError(f"{index}: unreadable index ({e})") from None
            files = {
                name: SafetensorsFile(folder / name) for name in sorted(set(weight_map.values()))
            }
            self._where = {k: files[v] for k, v in weight_map.items()}
        else:
            paths = sorted(folder.glob("*.safetensors"))
            if not paths:
                raise CheckpointError(f"{folder}: no *.safetensors files")
            self._where = {}
            for p in paths:
                f = SafetensorsFile(p)
                self._where.update({k: f for k in f.keys()})

    def keys(self) -> list[str]:
        return list(self._where)

    def get(self, key: str) -> np.ndarray:
        if key not in self._where:
            raise CheckpointError(f"tensor {key!r} is missing from the checkpoint")
        return self._where[key].get(key)

    def source(self, key: str) -> str:
        return str(self._where[key].path) if key in self._where else "<missing>"


def save_file(tensors: dict[str, np.ndarray], path: str | os.PathLike) -> None:
    """Write tensors in insertion order; the `format: pt` tag is what transformers expects."""
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for k, a in tensors.items():
        nbytes = a.size * a.dtype.itemsize
        header[k] = {
            "dtype": NAMES[a.dtype],
            "shape": list(a.shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # keep tensor data 8-byte aligned
    tmp = Path(str(path) + ".tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for a in tensors.values():
            f.write(np.ascontiguousarray(a).tobytes())
    os.replace(tmp, path)


def iter_shards(
    tensors: Iterator[tuple[str, np.ndarray]], max_bytes: int
) -> Iterator[dict[str, np.ndarray]]:
    """Group a stream of tensors into shards of at most `max_bytes` (one tensor may exceed it)."""
    shard: dict[str, np.ndarray] = {}
    size = 0
    for k, a in tensors:
        if shard and size + a.nbytes > max_bytes:
            yield shard
            shard, size = {}, 0
        shard[k] = a
        size += a.nbytes
    if shard:
        yield shard
