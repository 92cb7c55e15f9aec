"""Vectors of 16 int32 lanes in numba kernels, and the one instruction hwsim needs from them: VPDPBUSD (issue 18).

numba compiles loops to LLVM, which vectorizes simple ones by itself but never emits the int8 dot-product
instruction of AVX-512 VNNI. This module gives numba a value type :data:`v16` (LLVM ``<16 x i32>``, one zmm
register) and a few operations on it as numba intrinsics, so that a kernel written in numba keeps a register
tile of accumulators and issues ``vpdpbusd`` itself (:func:`hwsim.accumulate.vnni_sat_chunks`):

- :func:`vload` / :func:`vstore`: 16 int32 at ``arr[i:i + 16]`` of a 1-d int32 array (unaligned);
- :func:`vbcast`: ``arr[i]`` in every lane; :func:`vsplat`: an integer in every lane (truncated to 32 bits);
- :func:`vdp`: ``acc + sum_{t<4} u8(a)[4l+t] * s8(b)[4l+t]`` per lane l (VPDPBUSD: unsigned bytes of ``a`` times
  signed bytes of ``b``, four products per lane, added to ``acc`` wrapping at 32 bits: the caller proves no
  lane leaves int32);
- :func:`vadd`, :func:`vclamp` (signed), :func:`vwrap` (two's-complement wrap into ``bits`` bits) and
  :func:`vcount_ne` (how many lanes differ: the event count of a stage).

Nothing here checks bounds: the callers index inside their arrays. :func:`vnni` says whether this process may
use them: the CPU LLVM compiles for has AVX-512 F / BW / VNNI (the flags LLVM itself detected, which is what
the code is compiled for) and ``HWSIM_VNNI`` is not ``0`` (tests set it to compare both paths).
"""

from __future__ import annotations

import functools
import os

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

NEEDS = ("avx512f", "avx512bw", "avx512vnni")  # LLVM's names of the CPU features the intrinsics compile to


class V16(types.Type):
    """16 int32 lanes (LLVM <16 x i32>)."""

    def __init__(self):
        super().__init__(name="V16i32")


v16 = V16()
_I32 = ir.IntType(32)
_VT = ir.VectorType(_I32, 16)


@register_model(V16)
class _V16Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _VT)


@functools.lru_cache(maxsize=1)
def _host_features() -> frozenset:
    from llvmlite import binding

    return frozenset(f[1:] for f in binding.get_host_cpu_features().flatten().split(",") if f.startswith("+"))


def vnni() -> bool:
    """The intrinsics below may run here (every one of NEEDS on the CPU LLVM compiles for; HWSIM_VNNI != "0")."""
    return os.environ.get("HWSIM_VNNI", "1") != "0" and all(f in _host_features() for f in NEEDS)


def _ptr(context, builder, aty, arr, idx):
    a = context.make_array(aty)(context, builder, arr)
    return builder.gep(a.data, [idx])


def _splat(builder, x):
    v = builder.insert_element(ir.Constant(_VT, ir.Undefined), x, ir.Constant(_I32, 0))
    return builder.shuffle_vector(v, ir.Constant(_VT, ir.Undefined), ir.Constant(_VT, [0] * 16))


def _int32_array(arr):
    return isinstance(arr, types.Array) and arr.dtype == types.int32 and arr.ndim == 1


@intrinsic
def vload(typingctx, arr, i):
    """arr[i:i + 16] of a 1-d int32 array."""
    if not (_int32_array(arr) and isinstance(i, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        p = _ptr(context, builder, signature.args[0], args[0], args[1])
        return builder.load(builder.bitcast(p, _VT.as_pointer()), align=4)

    return v16(arr, i), codegen


@intrinsic
def vstore(typingctx, arr, i, v):
    """arr[i:i + 16] = v."""
    if not (_int32_array(arr) and isinstance(i, types.Integer) and v == v16):
        return None

    def codegen(context, builder, signature, args):
        p = _ptr(context, builder, signature.args[0], args[0], args[1])
        builder.store(args[2], builder.bitcast(p, _VT.as_pointer()), align=4)
        return context.get_dummy_value()

    return types.none(arr, i, v), codegen


@intrinsic
def vbcast(typingctx, arr, i):
    """arr[i] (int32) in every lane."""
    if not (_int32_array(arr) and isinstance(i, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        return _splat(builder, builder.load(_ptr(context, builder, signature.args[0], args[0], args[1]), align=4))

    return v16(arr, i), codegen


@intrinsic
def vsplat(typingctx, x):
    """The integer x (its low 32 bits) in every lane."""
    if not isinstance(x, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        x = args[0]
        w = x.type.width
        x = builder.trunc(x, _I32) if w > 32 else (builder.sext(x, _I32) if w < 32 else x)
        return _splat(builder, x)

    return v16(x), codegen


@intrinsic
def vdp(typingctx, acc, a, b):
    """acc + (four u8(a) x s8(b) byte products per lane): VPDPBUSD, wrapping at 32 bits."""
    if not (acc == v16 and a == v16 and b == v16):
        return None

    def codegen(context, builder, signature, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_VT, [_VT, _VT, _VT]),
                                            "llvm.x86.avx512.vpdpbusd.512")
        return builder.call(fn, list(args))

    return v16(v16, v16, v16), codegen


@intrinsic
def vadd(typingctx, a, b):
    """a + b per lane (wrapping)."""
    if not (a == v16 and b == v16):
        return None

    def codegen(context, builder, signature, args):
        return builder.add(*args)

    return v16(v16, v16), codegen


@intrinsic
def vclamp(typingctx, v, lo, hi):
    """min(max(v, lo), hi) per lane, signed."""
    if not (v == v16 and lo == v16 and hi == v16):
        return None

    def codegen(context, builder, signature, args):
        v, lo, hi = args
        v = builder.select(builder.icmp_signed("<", v, lo), lo, v)
        return builder.select(builder.icmp_signed(">", v, hi), hi, v)

    return v16(v16, v16, v16), codegen


@intrinsic
def vwrap(typingctx, v, lo, mask):
    """((v - lo) & mask) + lo per lane: two's-complement wrap into [lo, lo + mask] (lo = -2^(b-1), mask = 2^b - 1)."""
    if not (v == v16 and lo == v16 and mask == v16):
        return None

    def codegen(context, builder, signature, args):
        v, lo, mask = args
        return builder.add(builder.and_(builder.sub(v, lo), mask), lo)

    return v16(v16, v16, v16), codegen


@intrinsic
def vcount_ne(typingctx, a, b):
    """How many of the 16 lanes of a and b differ (int64)."""
    if not (a == v16 and b == v16):
        return None

    def codegen(context, builder, signature, args):
        bits = builder.bitcast(builder.icmp_signed("!=", *args), ir.IntType(16))
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.IntType(16), [ir.IntType(16)]),
                                            "llvm.ctpop.i16")
        return builder.zext(builder.call(fn, [bits]), ir.IntType(64))

    return types.int64(v16, v16), codegen
