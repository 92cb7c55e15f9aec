"""Forge bad files the writers refuse to produce: edited graph.json, raw .npy headers, zip members."""

from __future__ import annotations

import io
import json
import struct
import zipfile
from pathlib import Path

import numpy as np


def members(path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {n: zf.read(n) for n in zf.namelist()}


def write_zip(path, ms: dict[str, bytes], deflate: tuple[str, ...] = ()) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for k, v in ms.items():
            zf.writestr(k, v, compress_type=zipfile.ZIP_DEFLATED if k in deflate else zipfile.ZIP_STORED)
    return Path(path)


def npy(arr: np.ndarray) -> bytes:
    b = io.BytesIO()
    np.lib.format.write_array(b, arr, allow_pickle=False)
    return b.getvalue()


def npy_with_header(header: str, body: bytes = b"") -> bytes:
    """A version-1 .npy image with an arbitrary header text (numpy would never write it)."""
    h = header.encode("latin1")
    h += b" " * ((-(10 + len(h) + 1)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(h)) + h + body


def npz_of(ms: dict[str, bytes]) -> bytes:
    b = io.BytesIO()
    with zipfile.ZipFile(b, "w") as zf:
        for k, v in ms.items():
            zf.writestr(k, v)
    return b.getvalue()


def tensors_of(model) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(members(model)["tensors.npz"])) as zf:
        return {n: zf.read(n) for n in zf.namelist()}


def model_with(src, dst, edit_json=None, tensor_members: dict[str, bytes] | None = None,
               raw_graph: bytes | None = None) -> Path:
    """Copy model ``src`` to ``dst`` with graph.json edited and/or some tensors.npz members replaced."""
    ms = members(src)
    if edit_json is not None:
        doc = json.loads(ms["graph.json"])
        edit_json(doc)
        ms["graph.json"] = json.dumps(doc).encode()
    if raw_graph is not None:
        ms["graph.json"] = raw_graph
    if tensor_members:
        t = tensors_of(src)
        t.update(tensor_members)
        ms["tensors.npz"] = npz_of(t)
    return write_zip(dst, ms)


def node(doc: dict, name: str) -> dict:
    return next(n for n in doc["nodes"] if n["name"] == name)


def declare_size(path, member: str, size: int) -> None:
    """Patch the declared uncompressed size of ``member`` in its local header and central directory entry."""
    b = bytearray(Path(path).read_bytes())
    name = member.encode()
    # (signature, offset of the uncompressed-size field, offset of the file name) per the zip spec
    for sig, size_at, name_at in ((b"PK\x03\x04", 22, 30), (b"PK\x01\x02", 24, 46)):
        i = b.find(sig)
        while i >= 0:
            if b[i + name_at:i + name_at + len(name)] == name:
                b[i + size_at:i + size_at + 4] = struct.pack("<I", size)
            i = b.find(sig, i + 4)
    Path(path).write_bytes(bytes(b))
