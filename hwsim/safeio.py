"""The one place where hwsim opens user files and writes outputs.

Reading (model files, ``.npz`` data, profiles): nothing a file declares is allocated before it
is checked. Zip members are read only when their declared size is within
:data:`MAX_MEMBER_BYTES` (and the archive's total within :data:`MAX_TOTAL_BYTES`), and never
beyond the declared size (a decompression bomb stops at the limit). ``.npy`` members are parsed
here, not by numpy: the header is a bounded literal, the dtype a plain number type, the shape
at most :data:`MAX_NDIM` non-negative integers whose byte count must equal the bytes actually
present. JSON numbers must be finite and integers within +-2^53. Text files must be UTF-8.

Writing: :func:`check_output` refuses an output path that cannot be written (missing or
read-only directory, a directory named as a file, a read-only file, a wrong extension) before
any work starts; :func:`atomic_write` writes completely or not at all (temporary sibling +
rename) with the permissions of a plain ``open()``: 0o666 minus the user's umask.

Every problem is a one-line :class:`~hwsim.errors.HwsimError` naming the file (and member,
key or value) and what is allowed. The limits are stated in ``docs/architecture.md``.
"""

from __future__ import annotations

import ast
import io
import json
import lzma
import math
import os
import stat
import struct
import tempfile
import threading
import zipfile
import zlib
from pathlib import Path
from typing import Any, Callable

import numpy as np

from hwsim.errors import HwsimError

# ----------------------------------------------------------------------------- limits
MAX_MEMBER_BYTES = 1 << 30        # largest zip member, decompressed (1 GiB)
MAX_TOTAL_BYTES = 2 << 30         # all members of one archive, decompressed (2 GiB)
MAX_MEMBERS = 10_000              # members of one archive
MAX_NDIM = 8                      # dimensions of one array
MAX_NPY_HEADER = 10_000           # bytes of one .npy header (numpy's own default limit)
MAX_JSON_BYTES = 64 << 20         # a JSON document (graph.json)
MAX_TEXT_BYTES = 1 << 20          # a text file (profile TOML)
MAX_JSON_INT = 1 << 53            # |integer| in JSON (exactly representable as a double)
FLOAT32_MAX = float(np.finfo(np.float32).max)

# exceptions the zip/zlib/lzma/bz2 readers raise on corrupt input (zipfile has no single family)
ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, lzma.LZMAError, EOFError, OSError, ValueError, KeyError,
              struct.error, NotImplementedError, RuntimeError, UnicodeDecodeError, OverflowError,
              IndexError, TypeError, AttributeError)


def _size(n: int) -> str:
    for unit, k in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << k:
            return f"{n / (1 << k):.1f} {unit}"
    return f"{n} B"


# ----------------------------------------------------------------------------- zip archives
def open_zip(source: str | os.PathLike | bytes, where: str, what: str = "zip archive",
             member_limits: bool = True) -> zipfile.ZipFile:
    """A ZipFile over a path or bytes, with its member table checked (count, duplicates, declared sizes).

    ``member_limits=False``: no limit on the declared sizes, for archives whose members are streamed
    (read a bounded slice at a time, never whole: :class:`hwsim.data.LazyImages`)."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source)
        infos = zf.infolist()
    except ZIP_ERRORS as e:
        raise HwsimError(f"{where}: not a valid {what} (not a zip archive, or truncated: {type(e).__name__}: {e})") from None
    if len(infos) > MAX_MEMBERS:
        zf.close()
        raise HwsimError(f"{where}: {len(infos)} members (allowed at most {MAX_MEMBERS})")
    seen: set[str] = set()
    total = 0
    for info in infos:
        if info.filename in seen:
            zf.close()
            raise HwsimError(f"{where}: duplicate member {info.filename!r}")
        seen.add(info.filename)
        if not member_limits:
            continue
        if info.file_size > MAX_MEMBER_BYTES:
            zf.close()
            raise HwsimError(f"{where}: member {info.filename!r} declares {_size(info.file_size)} "
                             f"(allowed at most {_size(MAX_MEMBER_BYTES)} per member)")
        total += info.file_size
    if member_limits and total > MAX_TOTAL_BYTES:
        zf.close()
        raise HwsimError(f"{where}: members declare {_size(total)} in all (allowed at most {_size(MAX_TOTAL_BYTES)})")
    return zf


def read_member(zf: zipfile.ZipFile, name: str, where: str, limit: int = MAX_MEMBER_BYTES) -> bytes:
    """The bytes of member ``name``: never more than its declared size nor ``limit`` (bounded decompression)."""
    try:
        info = zf.getinfo(name)
    except KeyError:
        raise HwsimError(f"{where}: missing member {name!r}") from None
    if info.file_size > limit:
        raise HwsimError(f"{where}: member {name!r} declares {_size(info.file_size)} (allowed at most {_size(limit)})")
    try:
        with zf.open(info) as fh:
            data = fh.read(info.file_size + 1)
    except ZIP_ERRORS as e:
        raise HwsimError(f"{where}: corrupt or truncated member {name!r} ({type(e).__name__}: {e})") from None
    if len(data) != info.file_size:
        raise HwsimError(f"{where}: member {name!r} holds {len(data)} bytes but declares {info.file_size}")
    return data


# ----------------------------------------------------------------------------- .npy
NPY_MAGIC = b"\x93NUMPY"


def parse_npy(buf: bytes, where: str, kinds: str = "fiu") -> np.ndarray:
    """A ``.npy`` image -> array (native byte order, owns its memory), checked before allocation.

    ``kinds``: the allowed numpy dtype kinds ('f' float, 'i' signed, 'u' unsigned integers).
    The header must be ``{'descr': str, 'fortran_order': bool, 'shape': tuple}`` with at most
    :data:`MAX_NDIM` non-negative integer dimensions whose byte count equals the data present.
    """
    dtype, fortran, shape, start = parse_npy_header(buf, len(buf), where, kinds)
    arr = np.frombuffer(buf, dtype=dtype, count=math.prod(shape), offset=start)
    arr = arr.reshape(shape, order="F" if fortran else "C")
    return np.array(arr, dtype=dtype.newbyteorder("="), order="C", copy=True)


NPY_PREFIX_BYTES = 12 + MAX_NPY_HEADER  # enough of a .npy to hold any header this parser accepts


def parse_npy_header(head: bytes, total: int, where: str, kinds: str = "fiu") -> tuple[np.dtype, bool, tuple, int]:
    """The header of a ``.npy`` of ``total`` bytes whose first bytes are ``head`` (at least
    :data:`NPY_PREFIX_BYTES` of them, or all) -> (dtype, fortran_order, shape, offset of the data).

    Checked as :func:`parse_npy` checks it: the shape's byte count must equal ``total`` minus the header.
    """
    buf = head
    if len(buf) < 10 or buf[:6] != NPY_MAGIC:
        raise HwsimError(f"{where}: not a .npy array (bad magic or truncated)")
    major = buf[6]
    if major == 1:
        (hlen,), start = struct.unpack("<H", buf[8:10]), 10
    elif major in (2, 3) and len(buf) >= 12:
        (hlen,), start = struct.unpack("<I", buf[8:12]), 12
    else:
        raise HwsimError(f"{where}: .npy format version {major} (allowed 1, 2, 3)")
    if hlen > MAX_NPY_HEADER or start + hlen > min(len(buf), total):
        raise HwsimError(f"{where}: .npy header of {hlen} bytes (allowed at most {MAX_NPY_HEADER}, within the member)")
    try:
        text = buf[start:start + hlen].decode("utf-8" if major == 3 else "latin1")
        header = ast.literal_eval(text)
    except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError, UnicodeDecodeError) as e:
        raise HwsimError(f"{where}: unreadable .npy header ({type(e).__name__})") from None
    if not isinstance(header, dict) or set(header) != {"descr", "fortran_order", "shape"}:
        raise HwsimError(f"{where}: .npy header must be a dict with keys descr, fortran_order, shape")
    descr, fortran, shape = header["descr"], header["fortran_order"], header["shape"]
    dtype = None
    if isinstance(descr, str) and len(descr) <= 8:
        try:
            dtype = np.dtype(descr)
        except (TypeError, ValueError, SyntaxError):
            dtype = None
    if (dtype is None or dtype.kind not in kinds or dtype.fields is not None or dtype.subdtype is not None
            or dtype.itemsize not in (1, 2, 4, 8)):
        allowed = {"f": "float", "i": "signed int", "u": "unsigned int"}
        why = "object arrays cannot be read without pickle; " if "O" in str(descr) else ""
        raise HwsimError(f"{where}: .npy dtype {str(descr)[:40]!r} ({why}allowed: {', '.join(allowed[k] for k in kinds)} arrays)")
    if not isinstance(fortran, bool):
        raise HwsimError(f"{where}: .npy fortran_order {fortran!r} must be True or False")
    if (not isinstance(shape, tuple) or len(shape) > MAX_NDIM
            or not all(type(s) is int and s >= 0 for s in shape)):
        raise HwsimError(f"{where}: .npy shape {str(shape)[:80]} (allowed: a tuple of at most {MAX_NDIM} "
                         "non-negative integers)")
    count = math.prod(shape)
    data_len = total - start - hlen
    if count * dtype.itemsize != data_len:
        raise HwsimError(f"{where}: .npy shape {shape} of {dtype} needs {count * dtype.itemsize} bytes, "
                         f"the member holds {data_len}")
    return dtype, fortran, shape, start + hlen


def read_npz(source: str | os.PathLike | bytes, where: str, kinds: str = "fiu") -> dict[str, np.ndarray]:
    """Every ``<key>.npy`` member of an ``.npz`` (np.savez layout) as {key: array}, each checked by :func:`parse_npy`."""
    with open_zip(source, where) as zf:
        out: dict[str, np.ndarray] = {}
        for info in zf.infolist():
            name = info.filename
            if not name.endswith(".npy"):
                raise HwsimError(f"{where}: member {name!r} is not a .npy array (an .npz holds <name>.npy members)")
            out[name[:-4]] = parse_npy(read_member(zf, name, where), f"{where}: member {name!r}", kinds)
    return out


# ----------------------------------------------------------------------------- JSON and text
def _json_path(path: list) -> str:
    """['nodes', (0, 'conv1'), 'attrs', 'padding', 3] -> "nodes[0] ('conv1').attrs.padding[3]"."""
    out = ""
    for k in path:
        if isinstance(k, tuple):
            out += f"[{k[0]}] ({k[1]!r})"
        else:
            out += f"[{k}]" if isinstance(k, int) else (f".{k}" if out else str(k))
    return out or "(the document)"


def _check_json_numbers(doc: Any) -> None:
    """Every number finite and every integer within +-2^53; the error names the JSON path."""
    stack: list[tuple[Any, list]] = [(doc, [])]
    while stack:
        v, path = stack.pop()
        if isinstance(v, dict):
            stack.extend((x, path + [k]) for k, x in v.items())
        elif isinstance(v, list):  # list items that carry a name are called by it
            stack.extend((x, path + [(i, x["name"]) if isinstance(x, dict) and isinstance(x.get("name"), str) else i])
                         for i, x in enumerate(v))
        elif isinstance(v, float) and not math.isfinite(v):
            raise HwsimError(f"{_json_path(path)} = {v} is not a finite number")
        elif isinstance(v, int) and not isinstance(v, bool) and abs(v) > MAX_JSON_INT:
            raise HwsimError(f"{_json_path(path)} = {str(v)[:30]}{'...' if len(str(v)) > 30 else ''} is out of range "
                             "(integers must lie within +-2^53)")


def load_json(raw: bytes, where: str) -> Any:
    """Parse a JSON document: UTF-8, at most :data:`MAX_JSON_BYTES`, numbers finite, integers within +-2^53.

    ``where`` is a message prefix ending in a verb, e.g. "model.hwsim: graph.json is"."""
    if len(raw) > MAX_JSON_BYTES:
        raise HwsimError(f"{where} {_size(len(raw))} of JSON (allowed at most {_size(MAX_JSON_BYTES)})")
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError, ValueError) as e:
        raise HwsimError(f"{where} not valid JSON ({str(e)[:120]})") from None
    try:
        _check_json_numbers(doc)
    except HwsimError as e:
        raise HwsimError(f"{where} not valid: {e}") from None
    return doc


def read_bytes(path: str | os.PathLike, where: str | None = None, limit: int = MAX_MEMBER_BYTES,
               what: str = "file") -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes (never reads more than ``limit`` + 1)."""
    p = Path(path)
    where = where or str(p)
    try:
        if not p.is_file():
            raise HwsimError(f"{where}: no such file")
        with open(p, "rb") as fh:
            raw = fh.read(limit + 1)
    except (OSError, ValueError) as e:  # ValueError: a NUL byte in the path
        raise HwsimError(f"{where}: cannot read ({getattr(e, 'strerror', None) or e})") from None
    if len(raw) > limit:
        raise HwsimError(f"{where}: larger than {_size(limit)} (the limit for a {what})")
    return raw


def read_head(path: str | os.PathLike, n: int, where: str | None = None) -> bytes:
    """The first ``n`` bytes of a regular file (fewer if it is shorter): magic numbers."""
    p = Path(path)
    where = where or str(p)
    try:
        if not p.is_file():
            raise HwsimError(f"{where}: no such file")
        with open(p, "rb") as fh:
            return fh.read(n)
    except (OSError, ValueError) as e:
        raise HwsimError(f"{where}: cannot read ({getattr(e, 'strerror', None) or e})") from None


def read_text(path: str | os.PathLike, where: str | None = None, limit: int = MAX_TEXT_BYTES) -> str:
    """A UTF-8 text file (at most ``limit`` bytes) as str."""
    where = where or str(path)
    return decode_utf8(read_bytes(path, where, limit, "text file"), where)


def decode_utf8(raw: bytes, where: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise HwsimError(f"{where}: not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start})") from None


def check_path_usable(path: str, where: str) -> None:
    """A path the OS can look up (no NUL byte, not too long), else a one-line error."""
    try:
        os.stat(path)
    except FileNotFoundError:
        pass
    except (OSError, ValueError) as e:
        if isinstance(e, ValueError) or e.errno in (36,):  # ENAMETOOLONG, embedded NUL
            raise HwsimError(f"{where}: unusable path ({getattr(e, 'strerror', None) or e})") from None


def check_input_file(path: str | os.PathLike, where: str, what: str = "file") -> Path:
    """``path`` as a Path if it names a readable regular file, else a one-line error."""
    try:
        p = Path(path).expanduser()
        ok = p.is_file()
        exists = ok or p.exists()
    except (OSError, ValueError) as e:  # a NUL byte, a name too long
        raise HwsimError(f"{where}: unusable path ({type(e).__name__}: {e})") from None
    if not ok:
        raise HwsimError(f"{where}: {'is not a file (a ' + what + ' is a file)' if exists else 'no such ' + what}")
    return p


# ----------------------------------------------------------------------------- outputs
_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask (read by setting and restoring it, under a lock)."""
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def _dir_writable(d: Path) -> str | None:
    """None if a file can be created in directory ``d``, else why not."""
    try:
        st = d.stat()
    except OSError as e:
        return f"directory {str(d)!r} does not exist" if isinstance(e, FileNotFoundError) else f"directory {str(d)!r}: {e.strerror}"
    if not stat.S_ISDIR(st.st_mode):
        return f"{str(d)!r} is not a directory"
    if not st.st_mode & 0o222 or not os.access(d, os.W_OK | os.X_OK):
        return f"directory {str(d)!r} is read-only"
    try:  # the honest test: create (and remove) a file there
        fd, tmp = tempfile.mkstemp(dir=d, prefix=".hwsim-probe.")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        return f"cannot create files in {str(d)!r} ({e.strerror or e})"
    return None


def check_output(path: str | os.PathLike | None, option: str = "--out",
                 suffixes: tuple[str, ...] | None = None) -> Path | None:
    """Before any work: ``path`` can be written as a file (its directory exists and is writable; it is
    not a directory nor a read-only file; its extension is one of ``suffixes``)."""
    if path is None:
        return None
    p = Path(path)
    try:
        if p.is_dir():
            raise HwsimError(f"{option} {path}: is a directory (give a file name)")
        if suffixes is not None and p.suffix.lower() not in suffixes:
            raise HwsimError(f"{option} {path}: unsupported extension {p.suffix or '(none)'!r} (allowed: {', '.join(suffixes)})")
        if p.exists():
            st = p.stat()
            if not stat.S_ISREG(st.st_mode):
                raise HwsimError(f"{option} {path}: exists and is not a regular file")
            if not st.st_mode & 0o222 or not os.access(p, os.W_OK):
                raise HwsimError(f"{option} {path}: the file is read-only")
    except (OSError, ValueError) as e:
        raise HwsimError(f"{option} {path}: unusable path ({type(e).__name__}: {e})") from None
    why = _dir_writable(p.parent)
    if why:
        raise HwsimError(f"{option} {path}: {why}")
    return p


def check_output_dir(path: str | os.PathLike, option: str = "--out") -> Path:
    """Before any work: ``path`` is a directory that does not exist yet (or is empty) in a writable parent."""
    p = Path(path)
    try:
        if p.exists() and (not p.is_dir() or any(p.iterdir())):
            raise HwsimError(f"{option} {path}: exists and is not an empty directory")
    except OSError as e:
        raise HwsimError(f"{option} {path}: unusable path ({e.strerror or e})") from None
    why = _dir_writable(p.parent if p.parent != p else p)
    if why:
        raise HwsimError(f"{option} {path}: {why}")
    return p


def atomic_write(path: str | os.PathLike, data: str | bytes | Callable[[io.BufferedWriter], None]) -> None:
    """Write a file completely or not at all (temporary sibling + rename), mode 0o666 & ~umask.

    ``data``: text (UTF-8), bytes, or a function that writes into the open binary file."""
    path = Path(path)
    why = _dir_writable(path.parent)
    if why:
        raise HwsimError(f"{path}: {why}")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp creates 0600; a user file gets the umask
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def make_output_dir_tmp(out: Path) -> Path:
    """A temporary sibling directory of ``out`` with mode 0o777 & ~umask (mkdtemp gives 0o700); rename it to ``out`` when done."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    os.chmod(tmp, 0o777 & ~current_umask())
    return tmp
