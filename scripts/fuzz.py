#!/usr/bin/env python
"""Mutation fuzzer of hwsim's file loaders: model files, profiles, data files.

    python scripts/fuzz.py --cases 100000 --target model --seed 0
    python scripts/fuzz.py --cases 20000 --target profile
    python scripts/fuzz.py --cases 10000 --target data
    python scripts/fuzz.py --cases 1000               # every target, split evenly
    python scripts/fuzz.py --target model:100000 --target profile:20000 --target data:10000

Each case takes a valid seed file (built here: a small model with every op, every built-in
profile plus user profiles with ``extends`` and overrides, ``.npz`` data sets in both layouts),
mutates it with one or more of: byte flips, truncation, zip member deletion / duplication /
garbage / a declared decompressed size of GiBs, JSON-level edits of ``graph.json`` (huge or
non-finite numbers, wrong types, deep nesting, deleted or unknown keys, attrs of 10^6 ... 10^30),
``.npy`` header edits (huge shapes, odd dtypes, unparseable header text, wrong lengths) and
value edits (NaN, Inf, float32 overflow, negative variances, uint64 labels above 2^63), TOML-level
edits of profiles (random keys and values of every TOML type, ``extends`` chains and cycles,
bad ``[[overrides]]``, non-UTF-8 bytes), then calls the loader:

- ``model``: :func:`hwsim.graph.load_model`;
- ``profile``: :func:`hwsim.profile.load_profile` (and ``describe()`` / ``profile_toml`` of what loads);
- ``data``: :func:`hwsim.data.load_dataset` with ``npz:PATH``.

A case is a *clean rejection* (HwsimError), *accepted*, a *crash* (any other exception), a
*hang* (over ``--time-limit`` seconds) or a *memory* failure (MemoryError under the worker's
``RLIMIT_AS``). Cases run in a pool of worker processes (``--workers``, default 2), in-process per
case (no interpreter start per case), each worker under ``resource.setrlimit(RLIMIT_AS)``
(``--memory-mb``, default 1024) and a SIGALRM time limit; the report gives the counts per target,
the slowest case, every worker's peak RSS, and the first crashes with the case id that reproduces
them (``--only TARGET:CASE``). Exit status 1 if any case crashed, hung or ran out of memory.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import random
import resource
import signal
import struct
import sys
import tempfile
import time
import traceback
import warnings
import zipfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TARGETS = ("model", "profile", "data")
OUTCOMES = ("rejected", "accepted", "crash", "hang", "memory", "nonfinite")

# ----------------------------------------------------------------------------- seed files
_SEEDS: dict[str, list] = {}


def _seed_model_bytes() -> list[bytes]:
    import numpy as np

    from hwsim.graph import GraphBuilder, save_model

    rng = np.random.default_rng(0)
    b = GraphBuilder(input_shape=(1, 8, 8), mean=(0.1307,), std=(0.3081,))
    h = b.conv2d("conv1", "input", rng.normal(0, 1, (4, 1, 3, 3)), bias=rng.normal(0, 1, 4), padding=1)
    h = b.batchnorm("bn1", h, rng.uniform(0.5, 1, 4), rng.normal(0, 1, 4), rng.normal(0, 1, 4), rng.uniform(0.5, 1, 4))
    h = b.relu("relu1", h)
    h2 = b.conv2d("dw", h, rng.normal(0, 1, (4, 1, 3, 3)), padding=(1, 1, 1, 1), groups=4)
    h2 = b.relu6("relu2", h2)
    h = b.add("add", h, h2)
    h = b.concat("cat", [h, h2])
    h = b.maxpool2d("pool", h, kernel=2)
    h = b.avgpool2d("apool", h, kernel=2, stride=1, padding=1)
    h = b.global_avgpool("gap", h)
    h = b.flatten("flat", h)
    h = b.linear("fc", h, rng.normal(0, 1, (3, 8)), bias=rng.normal(0, 1, 3))
    g = b.build(outputs=[h], metadata={"arch": "fuzz", "float_accuracy": 0.5})
    out = []
    with tempfile.TemporaryDirectory() as d:
        save_model(g, Path(d) / "seed.hwsim")
        out.append((Path(d) / "seed.hwsim").read_bytes())
    # a second seed: a plain conv -> linear net with a strided, dilated conv
    b = GraphBuilder(input_shape=(3, 6, 6))
    h = b.conv2d("c", "input", rng.normal(0, 1, (2, 3, 2, 2)), stride=2, dilation=1)
    h = b.flatten("f", h)
    h = b.linear("l", h, rng.normal(0, 1, (2, 18)))
    with tempfile.TemporaryDirectory() as d:
        save_model(b.build(), Path(d) / "seed2.hwsim")
        out.append((Path(d) / "seed2.hwsim").read_bytes())
    return out


def _seed_profile_texts() -> list[str]:
    from importlib import resources

    from hwsim.profile import builtin_names

    texts = [(resources.files("hwsim") / "profiles" / f"{n}.toml").read_text(encoding="utf-8") for n in builtin_names()]
    texts += [
        'extends = "int8-tflite"\n[accumulator]\nbits = 16\noverflow = "saturate"\nrows = 16\n\n'
        '[[overrides]]\nop = "depthwise"\n"requant.fixed_rounding" = "single"\n\n'
        '[[overrides]]\nposition = "first"\n"accumulator.bits" = 32\n',
        'extends = "parent.toml"\n[weights]\nbits = 4\n[first_layer]\nbits = "profile"\n',
        'name = "mine"\ndescription = "x"\nbatchnorm = "scale"\n[weights]\nrange = "mse"\nstep_scale = 0.9\n'
        '[activations]\nrange = "percentile"\npercentile = 99.9\n[requant]\nfixed_ties = ["half_up", "half_even"]\n',
    ]
    return texts


def _seed_data_arrays() -> list[dict]:
    import numpy as np

    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (30, 6, 6), dtype=np.uint8)
    y = (np.arange(30) % 3).astype(np.int64)
    xf = rng.uniform(0, 1, (20, 1, 5, 5)).astype(np.float32)
    yf = (np.arange(20) % 2).astype(np.uint8)
    return [{"x": x, "y": y},
            {"x_train": x[:20], "y_train": y[:20], "x_test": x[20:], "y_test": y[20:]},
            {"x": xf, "y": yf}]


def _npz_bytes(arrays: dict) -> bytes:
    import numpy as np

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for k, a in arrays.items():
            b = io.BytesIO()
            np.lib.format.write_array(b, np.asarray(a), allow_pickle=False)
            zf.writestr(k + ".npy", b.getvalue())
    return buf.getvalue()


def seeds(target: str) -> list:
    if target not in _SEEDS:
        _SEEDS[target] = {"model": _seed_model_bytes, "profile": _seed_profile_texts, "data": _seed_data_arrays}[target]()
    return _SEEDS[target]


# ----------------------------------------------------------------------------- generic mutations
INTERESTING_INTS = [0, -1, 1, 2, 3, 255, 256, 65535, 65536, 2**31 - 1, 2**31, 2**32, 2**53, 2**53 + 1, 2**63,
                    2**64, 10**6, 10**9, 10**12, 10**30, 10**400, -(10**30), -(2**63)]


def byte_flips(data: bytes, rng: random.Random) -> bytes:
    b = bytearray(data)
    for _ in range(rng.choice([1, 1, 2, 4, 8, 32])):
        if not b:
            break
        i = rng.randrange(len(b))
        op = rng.random()
        if op < 0.5:
            b[i] ^= 1 << rng.randrange(8)
        elif op < 0.8:
            b[i] = rng.randrange(256)
        else:
            b[i] = rng.choice([0x00, 0xff, 0x7f, 0x80, 0x22, 0x5b, 0x7b, 0x2c])
    return bytes(b)


def truncate(data: bytes, rng: random.Random) -> bytes:
    return data[:rng.randrange(len(data) + 1)] if data else data


def random_value(rng: random.Random, depth: int = 0):
    """A JSON-able (or not quite) value of any kind."""
    k = rng.randrange(12)
    if k == 0:
        return rng.choice(INTERESTING_INTS)
    if k == 1:
        return rng.choice([0.0, -0.0, 1e-45, 1e-320, 3.4e38, 3.5e38, 1e39, 1e308, -1e308, 0.5, -1.5, 1e-5])
    if k == 2:
        return rng.choice([float("nan"), float("inf"), -float("inf")])
    if k == 3:
        return rng.choice(["", "x", "conv1", "input", "fc", "conv1.weight", "\x00", "é", "a" * 5000, "1e400"])
    if k == 4:
        return rng.choice([True, False, None])
    if k == 5 and depth < 3:
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(5))]
    if k == 6 and depth < 3:
        return {rng.choice(["name", "op", "shape", "x", "stride"]): random_value(rng, depth + 1) for _ in range(rng.randrange(3))}
    if k == 7:
        return [rng.choice(INTERESTING_INTS) for _ in range(rng.choice([1, 2, 3, 4, 5]))]
    if k == 8:
        return [rng.randrange(-2, 5) for _ in range(rng.choice([2, 4]))]
    if k == 9:
        return rng.randrange(-3, 20)
    if k == 10:
        return rng.choice(["conv2d", "linear", "batchnorm", "relu", "maxpool2d", "add", "concat", "flatten", "nope"])
    return rng.random() * rng.choice([1, 1e3, 1e30])


def _paths(obj, prefix=()):
    """Every (path, value) inside a JSON document."""
    yield prefix, obj
    if len(prefix) > 12:  # do not walk into deep nesting a previous mutation made
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, prefix + (i,))


def mutate_json_doc(doc, rng: random.Random):
    """Edit one to three places of a parsed JSON document in place; returns the (possibly new) root."""
    for _ in range(rng.choice([1, 1, 2, 3])):
        paths = [p for p, _ in _paths(doc) if p]
        if not paths:
            return random_value(rng)
        path = rng.choice(paths)
        parent = doc
        for k in path[:-1]:
            parent = parent[k]
        key = path[-1]
        op = rng.random()
        if op < 0.55:
            parent[key] = random_value(rng)
        elif op < 0.7:
            del parent[key]
        elif op < 0.8 and isinstance(parent, dict):
            parent[rng.choice(["extra", "attrs", "params", "x" * 3])] = random_value(rng)
        elif op < 0.9:
            cur = parent[key]
            if isinstance(cur, int) and not isinstance(cur, bool):
                parent[key] = rng.choice([cur * 10**rng.randrange(1, 30), -cur, 0, cur + 1, cur - 1])
            elif isinstance(cur, list):
                parent[key] = cur + [rng.choice(INTERESTING_INTS)] if rng.random() < 0.5 else cur[:-1]
            else:
                parent[key] = random_value(rng)
        else:  # deep nesting
            v = 0
            for _ in range(rng.choice([10, 100, 1000, 5000])):
                v = [v]
            parent[key] = v
    return doc


def json_dumps_any(doc, rng: random.Random) -> bytes:
    """Serialize, allowing NaN/Infinity and huge ints (what a hostile writer could emit)."""
    try:
        text = json.dumps(doc, allow_nan=True)
    except (ValueError, RecursionError):
        text = "[" * 50000
    if rng.random() < 0.05:
        text = text.replace("0.5", "1e400", 1)
    return text.encode("utf-8", "surrogatepass")


# ----------------------------------------------------------------------------- npy / zip mutations
def mutate_npy(raw: bytes, rng: random.Random) -> bytes:
    """Header or value edits of one .npy image."""
    import numpy as np

    if len(raw) < 10:
        return byte_flips(raw, rng)
    major = raw[6]
    start = 10 if major == 1 else 12
    hlen = struct.unpack("<H", raw[8:10])[0] if major == 1 else struct.unpack("<I", raw[8:12])[0]
    header, body = raw[start:start + hlen], raw[start + hlen:]
    op = rng.randrange(9)
    if op == 0:  # huge or odd shape
        shape = rng.choice(["(10**12,)", "(1000000, 1000000)", "(2**62, 4)", "(-1, 3)", "(0,)", "()", "(3, 8, 1, 1, 1, 1, 1, 1, 1)",
                            "(1, 2)", "(4, 1, 0, 3)", "(True,)", "(3.0, 8)", "[3, 8]", "(4, 1, 3, 3)"])
        h = f"{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}"
    elif op == 1:  # dtype
        d = rng.choice(["<f8", "<f2", "|O", "<i4", ">f4", "<c8", "V4", "<U3", "|b1", "<M8[s]", "<u8", "|u1", "f16", "S3",
                        "[('a', '<f4')]", "('<f4', (2,))"])
        h = header.decode("latin1").replace("'<f4'", repr(d) if not d.startswith(("[", "(")) else d, 1)
        for old in ("'|u1'", "'<i8'", "'|i1'", "'<f8'"):
            h = h.replace(old, repr(d) if not d.startswith(("[", "(")) else d, 1)
    elif op == 2:  # unparseable header text (tokenizer errors)
        h = rng.choice(["{'descr': '<f4', 'fortran_order': False, 'shape': (3, 8), }\x00", "{'descr': '<f4' 'sh",
                        "{" * 3000, "{'descr': b'\\xff', 'fortran_order': 0, 'shape': (1,)}", "\"\"\"", "{1: 2}",
                        "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 8), 'x': 1}", "{'a': 1e400}",
                        "{'descr': '<f4', 'fortran_order': True, 'shape': (8, 3), }", "(" * 200 + ")" * 200, "lambda: 0"])
    elif op == 3:  # header length field
        n = rng.choice([0, 1, hlen - 1, hlen + 1, 65535, len(raw)])
        return raw[:8] + struct.pack("<H", n % 65536) + raw[10:] if major == 1 else raw
    elif op == 4:  # version byte
        return raw[:6] + bytes([rng.choice([0, 2, 3, 4, 255]), raw[7]]) + raw[8:]
    elif op == 5:  # data length
        return raw[:start + hlen] + (body[:rng.randrange(len(body) + 1)] if rng.random() < 0.7 else body + b"\x00" * rng.randrange(1, 64))
    else:  # values
        try:
            from hwsim.safeio import parse_npy

            a = parse_npy(raw, "seed").copy()
        except Exception:  # noqa: BLE001 (an already broken seed)
            return byte_flips(raw, rng)
        if a.size == 0:
            return raw
        flat = a.reshape(-1)
        i = rng.randrange(flat.size)
        if a.dtype.kind == "f":
            flat[i] = rng.choice([np.nan, np.inf, -np.inf, 3.4e38, -3.4e38, 1e-45, -1.0, -1e30, 0.0, 2.0])
            if rng.random() < 0.3:
                flat[:] = rng.choice([-1.0, 0.0, 3.4e38])
        else:
            info = np.iinfo(a.dtype)
            flat[i] = rng.choice([info.min, info.max, 0, -1 if info.min < 0 else 1, 2**20 if info.max >= 2**20 else 7])
            if rng.random() < 0.3:
                return _array_npy(a.astype(rng.choice(["<u8", "<i8", "<f4", "<f8", "|u1", "<i2"])), rng)
        return _array_npy(a, rng)
    hb = h.encode("latin1", "replace")
    hb = hb + b" " * ((-(start + len(hb) + 1)) % 64) + b"\n"
    if major == 1 and len(hb) < 65536:
        return raw[:8] + struct.pack("<H", len(hb)) + hb + body
    return raw[:6] + b"\x02\x00" + struct.pack("<I", len(hb)) + hb + body


def _array_npy(a, rng: random.Random) -> bytes:
    import numpy as np

    b = io.BytesIO()
    if a.dtype.kind == "u" and a.dtype.itemsize == 8 and rng.random() < 0.5:
        a = a.copy()
        a.reshape(-1)[0] = np.uint64(2**63 + rng.randrange(1000))
    np.lib.format.write_array(b, a, allow_pickle=False)
    return b.getvalue()


def zip_members(raw: bytes) -> list[tuple[str, bytes, int]] | None:
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as zf:
            return [(i.filename, zf.read(i), i.compress_type) for i in zf.infolist()]
    except Exception:  # noqa: BLE001 (an already broken seed)
        return None


def build_zip(members: list[tuple[str, bytes, int]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data, ctype in members:
            zf.writestr(zipfile.ZipInfo(name), data, compress_type=ctype)
    return buf.getvalue()


def declare_huge(raw: bytes, rng: random.Random) -> bytes:
    """Patch the declared uncompressed size of one member (local header and central directory)."""
    b = bytearray(raw)
    size = rng.choice([0xFFFFFFF0, 0x7FFFFFFF, 1 << 31, 5 << 20, 0, 1])
    hits = [i for i in range(len(b) - 4) if b[i:i + 4] in (b"PK\x03\x04", b"PK\x01\x02")]
    if not hits:
        return byte_flips(raw, rng)
    for i in rng.sample(hits, k=min(len(hits), rng.choice([1, 2, len(hits)]))):
        off = 22 if b[i:i + 4] == b"PK\x03\x04" else 24
        if i + off + 4 <= len(b):
            b[i + off:i + off + 4] = struct.pack("<I", size)
    return bytes(b)


def bomb_member(rng: random.Random) -> tuple[bytes, int]:
    """A deflated member of zeros (a small decompression bomb: ~1 KiB -> several MiB)."""
    return b"\x00" * rng.choice([1 << 20, 8 << 20]), zipfile.ZIP_DEFLATED


def mutate_archive(raw: bytes, rng: random.Random, inner: str | None = None) -> bytes:
    """Member-level mutations of a zip (``inner``: the name of a nested .npz member to recurse into)."""
    ms = zip_members(raw)
    if ms is None:
        return byte_flips(raw, rng)
    op = rng.randrange(8)
    if op == 0 and ms:  # delete a member
        del ms[rng.randrange(len(ms))]
    elif op == 1 and ms:  # duplicate a member
        ms.append(rng.choice(ms))
    elif op == 2 and ms:  # garbage member content
        i = rng.randrange(len(ms))
        ms[i] = (ms[i][0], rng.choice([b"", b"PK\x03\x04garbage", os.urandom(rng.randrange(1, 200)), b"\x93NUMPY"]), ms[i][2])
    elif op == 3 and ms:  # a decompression bomb in place of a member
        i = rng.randrange(len(ms))
        data, ct = bomb_member(rng)
        ms[i] = (ms[i][0], data, ct)
    elif op == 4 and ms:  # rename a member
        i = rng.randrange(len(ms))
        ms[i] = (rng.choice(["x.npy", "graph.json", "tensors.npz", "../evil.npy", "a/b.npy", "", "fc.weight"]), ms[i][1], ms[i][2])
    elif op == 5:  # an extra member
        ms.append((rng.choice(["extra.npy", "extra.txt", "x.npy"]), os.urandom(rng.randrange(50)), zipfile.ZIP_STORED))
    elif op == 6 and ms:  # recompress
        ms = [(n, d, rng.choice([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA])) for n, d, _ in ms]
    else:
        return declare_huge(raw, rng)
    return build_zip(ms)


# ----------------------------------------------------------------------------- per-target mutators
def _file_level(raw: bytes, rng: random.Random, kind: int) -> bytes | None:
    """Mutations every zip-based target shares (kinds 0-2): byte flips, truncation, archive edits."""
    if kind == 0:
        return byte_flips(raw, rng)
    if kind == 1:
        return truncate(raw, rng)
    if kind == 2:
        return mutate_archive(raw, rng)
    return None


def mutate_model(raw: bytes, rng: random.Random) -> bytes:
    kind = rng.randrange(10)
    if kind <= 2:
        return _file_level(raw, rng, kind)
    ms = zip_members(raw)
    if ms is None:
        return byte_flips(raw, rng)
    idx = {n: i for i, (n, _, _) in enumerate(ms)}
    if kind in (3, 4, 5, 6) and "graph.json" in idx:  # JSON level
        i = idx["graph.json"]
        try:
            doc = json.loads(ms[i][1])
        except (ValueError, RecursionError):  # an earlier mutation broke it: flip bytes instead
            return byte_flips(raw, rng)
        if rng.random() < 0.5:  # aim at attrs / params / inputs, where the semantics live
            nodes = doc.get("nodes", [])
            if nodes:
                n = rng.choice(nodes)
                attr = rng.choice(["stride", "padding", "dilation", "groups", "kernel", "eps", "axis"])
                if attr in n.get("attrs", {}) or rng.random() < 0.3:
                    n.setdefault("attrs", {})[attr] = rng.choice([
                        [10**rng.randrange(1, 31)] * (4 if attr == "padding" else 2), [0, 0], [1, 10**6],
                        10**rng.randrange(1, 31), 1e400 if rng.random() < 0.5 else 10**400, -1, 0, [3, 3, 3, 3],
                        [8, 8], [9, 9, 9, 9], float("nan"), 1e-50, 1e39])
                else:
                    doc = mutate_json_doc(doc, rng)
            if rng.random() < 0.3:
                inp = doc.get("inputs", [{}])[0] if doc.get("inputs") else {}
                if isinstance(inp, dict):
                    inp[rng.choice(["shape", "mean", "std"])] = rng.choice([
                        [1, 10**6, 10**6], [1, 0, 8], [10**30], [1e39], [0.0], [-1.0], [float("inf")], [1e-50],
                        [1, 16385, 1], [65537, 1, 1], [1, 8, 8], [1e400]])
        else:
            doc = mutate_json_doc(doc, rng)
        ms[i] = ("graph.json", json_dumps_any(doc, rng), ms[i][2])
        return build_zip(ms)
    if "tensors.npz" in idx:  # npz / npy level
        i = idx["tensors.npz"]
        inner = ms[i][1]
        if rng.random() < 0.3:
            inner = mutate_archive(inner, rng)
        else:
            ims = zip_members(inner)
            if ims:
                j = rng.randrange(len(ims))
                if rng.random() < 0.25:  # aim at a BatchNorm variance
                    j = next((k for k, m in enumerate(ims) if "running_var" in m[0]), j)
                ims[j] = (ims[j][0], mutate_npy(ims[j][1], rng), ims[j][2])
                inner = build_zip(ims)
        ms[i] = ("tensors.npz", inner, ms[i][2])
        return build_zip(ms)
    return byte_flips(raw, rng)


def mutate_data(arrays: dict, rng: random.Random) -> bytes:
    raw = _npz_bytes(arrays)
    kind = rng.randrange(8)
    if kind <= 2:
        return _file_level(raw, rng, kind)
    if kind == 3:  # labels: uint64 above 2^63, negative, huge, float
        import numpy as np

        a = dict(arrays)
        yk = rng.choice([k for k in a if k.startswith("y")])
        y = a[yk].astype(rng.choice(["<u8", "<i8", "<f4", "|i1", "<u4"]))
        if y.dtype.kind == "u" and y.dtype.itemsize == 8:
            y[rng.randrange(len(y))] = np.uint64(2**63 + rng.randrange(2**20))
        elif y.dtype.kind == "i":
            y[rng.randrange(len(y))] = rng.choice([-1, -(2**7), np.iinfo(y.dtype).max])
        a[yk] = y
        return _npz_bytes(a)
    if kind == 4:  # images: NaN, out of range, odd shapes
        import numpy as np

        a = dict(arrays)
        xk = rng.choice([k for k in a if k.startswith("x")])
        x = a[xk].astype(np.float32) / (255.0 if a[xk].dtype == np.uint8 else 1.0)
        op = rng.randrange(4)
        if op == 0:
            x.reshape(-1)[rng.randrange(x.size)] = rng.choice([np.nan, np.inf, 2.0, -0.5])
        elif op == 1:
            x = x.reshape(rng.choice([(x.shape[0], -1), (x.shape[0], 1, 1, 1, -1), (-1,)]))
        elif op == 2:
            x = x[:0]
        else:
            x = x[:, None] if rng.random() < 0.5 else x.astype(np.float64)
        a[xk] = x
        return _npz_bytes(a)
    ms = zip_members(raw)
    if not ms:
        return byte_flips(raw, rng)
    j = rng.randrange(len(ms))
    ms[j] = (ms[j][0], mutate_npy(ms[j][1], rng), ms[j][2])
    return build_zip(ms)


# --- TOML
def _toml_value(v) -> str:
    import datetime as dt

    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v == math.inf else ("-inf" if v == -math.inf else repr(v)))
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (dt.date, dt.time, dt.datetime)):
        return v.isoformat()
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {_toml_value(x)}" for k, x in v.items()) + "}"
    return json.dumps(str(v))


def toml_dumps(d: dict) -> str:
    """A small TOML writer: scalars first, then [tables], then [[arrays of tables]]."""
    lines, tables, arrays = [], [], []
    for k, v in d.items():
        if isinstance(v, dict):
            tables.append((k, v))
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            arrays.append((k, v))
        else:
            lines.append(f"{json.dumps(str(k))} = {_toml_value(v)}")
    for k, v in tables:
        lines.append(f"\n[{json.dumps(str(k))}]")
        lines += [f"{json.dumps(str(kk))} = {_toml_value(vv)}" for kk, vv in v.items()]
    for k, v in arrays:
        for t in v:
            lines.append(f"\n[[{json.dumps(str(k))}]]")
            lines += [f"{json.dumps(str(kk))} = {_toml_value(vv)}" for kk, vv in t.items()]
    return "\n".join(lines) + "\n"


def _toml_random_value(rng: random.Random):
    import datetime as dt

    k = rng.randrange(9)
    if k == 0:
        return rng.choice(INTERESTING_INTS[:-3] + [-(2**63), 2**63 - 1])
    if k == 1:
        return rng.choice([0.0, -0.0, 1e-300, 1e300, float("nan"), float("inf"), -float("inf"), 0.5, 99.99, 100.0001])
    if k == 2:
        return rng.choice(["", "unbounded", "profile", "none", "0", "wrap", "saturate", "half_even", "pow2", "x" * 3000,
                           "\x00", "é", "nan", "int8-tflite", "[1,2]", "half_up,half_away"])
    if k == 3:
        return rng.choice([True, False])
    if k == 4:
        return [_toml_random_value(rng) for _ in range(rng.randrange(4))] if rng.random() < 0.8 else []
    if k == 5:
        return {rng.choice(["bits", "x", "overflow", "a.b"]): rng.randrange(-5, 70)}
    if k == 6:
        return rng.choice([dt.date(1979, 5, 27), dt.datetime(1979, 5, 27, 7, 32), dt.time(7, 32)])
    if k == 7:
        return rng.randrange(-3, 70)
    return rng.choice(["half_even", "half_away", "half_up", "floor", "trunc", "stochastic", "per_channel", "float", "fixed"])


def mutate_profile(text: str, rng: random.Random, parent_name: str) -> bytes:
    import tomllib

    from hwsim.profile import SCHEMA

    kind = rng.randrange(10)
    raw = text.encode("utf-8")
    if kind == 0:
        return byte_flips(raw, rng)
    if kind == 1:
        return truncate(raw, rng)
    if kind == 2:  # non-UTF-8 bytes
        i = rng.randrange(len(raw) + 1)
        return raw[:i] + rng.choice([b"\xff", b"\xc3\x28", b"\xe2\x82", b"\x80", b"\xed\xa0\x80"]) + raw[i:]
    try:
        d = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, RecursionError):
        return byte_flips(raw, rng)
    for _ in range(rng.choice([1, 1, 2, 3, 5])):
        op = rng.randrange(10)
        if op < 4:  # a schema key with a random value
            key = rng.choice(list(SCHEMA))
            sec, _, leaf = key.rpartition(".")
            target = d.setdefault(sec, {}) if sec else d
            if isinstance(target, dict):
                target[leaf] = _toml_random_value(rng)
        elif op == 4:  # delete something
            if d:
                k = rng.choice(list(d))
                if isinstance(d[k], dict) and d[k] and rng.random() < 0.6:
                    del d[k][rng.choice(list(d[k]))]
                else:
                    del d[k]
        elif op == 5:  # unknown keys and odd sections
            d[rng.choice(["bogus", "weights", "accumulator", "requant"])] = rng.choice(
                [{"bitz": 3}, 7, [1, 2], {"bits": {"x": 1}}, "str"])
        elif op == 6:  # extends
            d["extends"] = rng.choice(["int8-tflite", "int8-fbgemm", "nope", "nope.toml", parent_name, "fuzz.toml",
                                       "/", "\x00", "a" * 5000, "../" * 50 + "etc/passwd", 7, ["int8-tflite"], "", "."])
        elif op == 7:  # overrides
            ov = [{rng.choice(["match", "op", "position", "bogus"]): _toml_random_value(rng),
                   rng.choice(["accumulator.bits", "weights.bits", "name", "first_layer.bits", "requant.mode", "x.y"]):
                       _toml_random_value(rng)} for _ in range(rng.randrange(1, 4))]
            d["overrides"] = ov if rng.random() < 0.9 else rng.choice([7, "x", [1, 2]])
        elif op == 8:  # name / description types
            d[rng.choice(["name", "description", "batchnorm"])] = _toml_random_value(rng)
        else:  # a value of the right kind but out of range
            key = rng.choice([k for k, v in SCHEMA.items() if v.kind in ("int", "float")])
            sec, _, leaf = key.rpartition(".")
            t = d.setdefault(sec, {}) if sec else d
            if isinstance(t, dict):
                spec = SCHEMA[key]
                t[leaf] = rng.choice([spec.lo - 1, spec.hi + 1, spec.lo, spec.hi, 0, -1, 10**18]) if spec.kind == "int" \
                    else rng.choice([spec.lo - 0.001, spec.hi * 10, float("nan"), spec.lo])
    try:
        return toml_dumps(d).encode("utf-8", "surrogatepass")
    except (RecursionError, ValueError):
        return raw


# ----------------------------------------------------------------------------- running one case
class _Timeout(BaseException):
    pass


class _RoundTrip(Exception):
    """A profile whose ``profile_toml`` does not load back to itself (a crash: the writer and reader disagree)."""


class _NonFinite(Exception):
    """--deep: an accepted model whose float run overflows float32 on random inputs."""


def _alarm(signum, frame):
    raise _Timeout()


_WORKDIR: Path | None = None


def _workdir() -> Path:
    global _WORKDIR
    if _WORKDIR is None:
        _WORKDIR = Path(tempfile.mkdtemp(prefix="hwsim-fuzz-"))
        # the parent profile that user-profile seeds extend (relative to the profile's directory)
        (_WORKDIR / "parent.toml").write_text('extends = "int8-fbgemm"\n[accumulator]\nbits = 24\n')
    return _WORKDIR


def make_case(target: str, seed: int, case: int) -> tuple[str, bytes]:
    """(file name, mutated bytes) of case ``case`` (deterministic in target, seed, case).

    A structured mutation that cannot apply to what earlier mutations left (e.g. a JSON edit of
    bytes that no longer parse) falls back to byte flips: the generator never aborts a run."""
    rng = random.Random(f"{target}:{seed}:{case}")
    base = rng.choice(seeds(target))
    if target == "model":
        data = base
        for _ in range(rng.choice([1, 1, 1, 2, 3])):
            try:
                data = mutate_model(data, rng)
            except Exception:  # noqa: BLE001 (see the docstring)
                data = byte_flips(data, rng)
        return "fuzz.hwsim", data
    try:
        if target == "profile":
            return "fuzz.toml", mutate_profile(base, rng, "parent.toml")
        return "fuzz.npz", mutate_data(base, rng)
    except Exception:  # noqa: BLE001
        raw = base.encode() if isinstance(base, str) else _npz_bytes(base)
        return ("fuzz.toml" if target == "profile" else "fuzz.npz"), byte_flips(raw, rng)


def _deep(target: str, loaded) -> None:
    """--deep: use what loaded. A model: float run, compile under int8-tflite, integer run (logits finite).
    A profile: compile the seed model under it and run two images."""
    import numpy as np

    from hwsim.compile import compile_model
    from hwsim.execute import run_quantized
    from hwsim.floatref import run_float
    from hwsim.graph import load_model
    from hwsim.profile import load_profile

    if target == "model":
        g, prof = loaded, load_profile("int8-tflite")
    elif target == "profile":
        p = _workdir() / "deep_seed.hwsim"
        if not p.exists():
            p.write_bytes(seeds("model")[0])
        g, prof = load_model(p), loaded
    else:
        return
    shape = tuple(g.inputs[0].shape)
    if int(np.prod(shape)) > 1 << 16:  # keep a deep case small
        return
    x = np.random.default_rng(0).normal(0, 1, (4,) + shape).astype(np.float32)
    with np.errstate(all="ignore"):
        fl = run_float(g, x)
    if not np.isfinite(fl).all():
        raise _NonFinite("float logits are not finite")
    qg = compile_model(g, prof, x)
    run_quantized(qg, x[:2])


def run_case(target: str, seed: int, case: int, time_limit: float = 10.0, deep: bool = False) -> tuple[str, float, str]:
    """(outcome, seconds, detail) of one case, run in this process."""
    from hwsim.errors import HwsimError

    name, data = make_case(target, seed, case)
    path = _workdir() / name
    path.write_bytes(data)
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, time_limit)
    t0 = time.perf_counter()
    try:
        if target == "model":
            from hwsim.graph import load_model

            loaded = load_model(path)
        elif target == "profile":
            from hwsim.profile import load_profile, profile_toml

            loaded = load_profile(str(path))
            loaded.describe()
            rt = path.with_name("roundtrip.toml")  # what `profiles show` prints must load back as the same profile
            rt.write_text(profile_toml(loaded), encoding="utf-8")
            if load_profile(str(rt)) != loaded:
                raise _RoundTrip("profile_toml does not load back to the same profile")
        else:
            from hwsim.data import load_dataset

            loaded = load_dataset(f"npz:{path}")
        if deep:
            _deep(target, loaded)
        outcome, detail = "accepted", ""
    except HwsimError as e:
        msg = str(e)
        outcome, detail = ("crash", f"HwsimError message is not one line: {msg[:200]!r}") if "\n" in msg else ("rejected", msg[:200])
    except _Timeout:
        outcome, detail = "hang", f"over {time_limit} s"
    except MemoryError:
        outcome, detail = "memory", "MemoryError"
    except _NonFinite as e:
        outcome, detail = "nonfinite", str(e)
    except Exception as e:  # noqa: BLE001 (the point: any other exception is a crash)
        tb = traceback.extract_tb(e.__traceback__)
        where = f"{Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else "?"
        outcome, detail = "crash", f"{type(e).__name__} at {where}: {str(e)[:200]}"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    return outcome, time.perf_counter() - t0, detail


def _init_worker(memory_mb: int) -> None:
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    warnings.filterwarnings("ignore", category=UserWarning, module="zipfile")  # our own duplicate members
    warnings.filterwarnings("ignore", category=RuntimeWarning)  # --deep: float overflow is reported, not printed
    if memory_mb:
        lim = memory_mb << 20
        resource.setrlimit(resource.RLIMIT_AS, (lim, lim))
    import hwsim.data  # noqa: F401  (import once per worker, before the clock runs)
    import hwsim.graph  # noqa: F401
    import hwsim.profile  # noqa: F401


def _run_chunk(args) -> dict:
    target, seed, cases, time_limit, deep = args
    counts: Counter = Counter()
    crashes, slowest = [], (0.0, -1)
    for c in cases:
        outcome, dt, detail = run_case(target, seed, c, time_limit, deep)
        counts[outcome] += 1
        if outcome in ("crash", "hang", "memory", "nonfinite") and len(crashes) < 20:
            crashes.append((c, outcome, detail))
        if dt > slowest[0]:
            slowest = (dt, c)
    return {"target": target, "counts": counts, "crashes": crashes, "slowest": slowest,
            "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "pid": os.getpid()}


def fuzz(targets: dict[str, int], seed: int = 0, workers: int = 2, memory_mb: int = 1024,
         time_limit: float = 10.0, chunk: int = 250, deep: bool = False) -> dict:
    """Run ``targets`` = {target: number of cases}; returns per-target counts, crashes, timings and peak RSS.

    ``workers = 0`` runs in this process (no memory limit): what the test suite does."""
    jobs = [(t, seed, range(i, min(i + chunk, n)), time_limit, deep) for t, n in targets.items() for i in range(0, n, chunk)]
    t0 = time.perf_counter()
    if workers == 0:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=UserWarning, module="zipfile")
            parts = [_run_chunk(j) for j in jobs]
    else:
        import multiprocessing as mp

        with mp.get_context("fork").Pool(workers, initializer=_init_worker, initargs=(memory_mb,)) as pool:
            parts = list(pool.imap_unordered(_run_chunk, jobs))
    report: dict = {"seconds": time.perf_counter() - t0, "workers": workers, "memory_mb": memory_mb,
                    "time_limit_s": time_limit, "targets": {}}
    for t in targets:
        mine = [p for p in parts if p["target"] == t]
        counts = sum((p["counts"] for p in mine), Counter())
        report["targets"][t] = {
            "cases": targets[t], **{o: counts.get(o, 0) for o in OUTCOMES},
            "crashes": sorted(c for p in mine for c in p["crashes"])[:20],
            "slowest_case_s": max((p["slowest"][0] for p in mine), default=0.0),
            "slowest_case": max((p["slowest"] for p in mine), default=(0.0, -1))[1],
        }
    report["peak_rss_mb"] = max((p["maxrss_mb"] for p in parts), default=0.0)
    return report


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=1000, help="cases per target (or in all, split evenly, without --target)")
    ap.add_argument("--target", action="append", metavar="TARGET[:N]",
                    help="model, profile or data, optionally with its own number of cases (repeatable; default all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--memory-mb", type=int, default=1024, help="RLIMIT_AS of each worker (MiB)")
    ap.add_argument("--time-limit", type=float, default=10.0, help="seconds per case before it counts as a hang")
    ap.add_argument("--only", metavar="TARGET:CASE", help="run one case in this process and print its outcome")
    ap.add_argument("--save", metavar="TARGET:CASE:PATH", help="write one case's mutated file to PATH")
    ap.add_argument("--deep", action="store_true",
                    help="also use what loads: compile and run accepted models (int8-tflite) and profiles (on a seed model)")
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    a = ap.parse_args(argv)
    if a.save:
        t, c, path = a.save.split(":", 2)
        Path(path).write_bytes(make_case(t, a.seed, int(c))[1])
        return 0
    if a.only:
        t, c = a.only.split(":")
        print(run_case(t, a.seed, int(c), a.time_limit, a.deep))
        return 0
    if a.cases < 1:
        ap.error("--cases must be at least 1")
    per: dict[str, int] = {}
    for spec in a.target or []:
        t, _, n = spec.partition(":")
        if t not in TARGETS or (n and not n.isdigit()):
            ap.error(f"--target {spec!r}: allowed {', '.join(TARGETS)}, optionally :N")
        per[t] = int(n) if n else a.cases
    if not per:
        per = {t: max(1, a.cases // len(TARGETS)) for t in TARGETS}
    rep = fuzz(per, a.seed, a.workers, a.memory_mb, a.time_limit, deep=a.deep)
    if a.json:
        print(json.dumps(rep, indent=1, default=str))
    else:
        print(f"fuzz: seed {a.seed}, {a.workers} worker(s), RLIMIT_AS {a.memory_mb} MiB each, "
              f"{a.time_limit:g} s per case, {rep['seconds']:.1f} s in all; peak worker RSS {rep['peak_rss_mb']:.0f} MiB")
        print(f"{'target':8} {'cases':>8} {'rejected':>9} {'accepted':>9} {'crash':>6} {'hang':>5} {'memory':>7} {'slowest':>9}"
              + ("  float-overflow" if a.deep else ""))
        for t, r in rep["targets"].items():
            print(f"{t:8} {r['cases']:8d} {r['rejected']:9d} {r['accepted']:9d} {r['crash']:6d} {r['hang']:5d} "
                  f"{r['memory']:7d} {r['slowest_case_s']:8.3f}s" + (f"  {r['nonfinite']:14d}" if a.deep else ""))
            for c, o, d in r["crashes"]:
                print(f"  {o} {t}:{c}  {d}   (reproduce: python scripts/fuzz.py --seed {a.seed} --only {t}:{c})")
    bad = sum(r[o] for r in rep["targets"].values() for o in ("crash", "hang", "memory"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
