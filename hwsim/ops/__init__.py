"""Public functional API: single-layer integer ops with explicit quantization parameters.

Every op has ``impl="fast"`` (default: numba kernels / exact BLAS / vectorized numpy) and
``impl="reference"`` (``hwsim.reference``, the spec); both give identical integer values. Integer
arrays are int64 at the API, except the fast path's accumulators: int32 where the layer's plan proves
|acc| < 2^31 (``hwsim.kernels.acc_dtype``), the same values. The arithmetic contract is in ``docs/semantics.md``.

- :class:`Accumulator` — the MAC-array accumulator model (A bits, chunk rows R, partial-sum P bits).
- :func:`conv2d`, :func:`linear` -> (accumulators: int64, or int32 where proven, :class:`AccStats`).
- :class:`Requant`, :func:`make_requant_params`, :func:`requantize` -> (y, clipped).
- :func:`max_pool2d`, :func:`avg_pool2d`, :func:`global_avg_pool`, :func:`add`, :func:`concat`.

The package holds one module per op (``conv2d``, ``linear``, ``batchnorm``, ``relu``, ``pool``, ``add``,
``concat``, ``flatten``), each registered by op name in :mod:`hwsim.ops.registry`; the shared integer
core (accumulator model, requantization) is :mod:`hwsim.ops.core`. Importing the package registers
every op; the names below are the public API (and the helpers other modules use), unchanged.
"""

from __future__ import annotations

from hwsim.fixedpoint import ROUNDING_MODES, TIE_RULES  # noqa: F401  (re-exported, as before)
from hwsim.ops.core import (  # noqa: F401
    IMPLS, OVERFLOW_POLICIES, _check_impl, Accumulator, AccStats, _int_array, _pair, _padding, _w_zero_point, _bias,
    conv_output_size, REQUANT_MODES, ADD_FORMS, Requant, RequantParams, _scales, make_requant_params, make_onednn_requant_params,
    _per_channel,
    _shift_left_exact, _fixed_q31_fast, _float32_requant_kernel, _requantize_fast, requantize,
)
from hwsim.ops.conv2d import (  # noqa: F401
    conv2d,
)
from hwsim.ops.linear import (  # noqa: F401
    linear,
)
from hwsim.ops import batchnorm  # noqa: F401  (registers its op)
from hwsim.ops import relu  # noqa: F401  (registers its op)
from hwsim.ops.pool import (  # noqa: F401
    _check_nchw, _pool_geometry, _windows, max_pool2d, POOL_FORMS, onnxruntime_pool_form, pool_multiplier,
    _pool_scale, _pool_index, _pool_float_forms, avg_pool2d, global_avg_pool,
)
from hwsim.ops.add import (  # noqa: F401
    AddParams, add_params, fma_f32, ratio_fma_swaps, ratio_fma_constant, _fixed_mul, fixed_add_vector_input,
    _max_abs, _add_kernel, add,
)
from hwsim.ops.concat import (  # noqa: F401
    concat,
)
from hwsim.ops import flatten  # noqa: F401  (registers its op)
from hwsim.ops import identity  # noqa: F401  (registers its op)
from hwsim.ops import activation  # noqa: F401  (registers sigmoid, hardsigmoid, hardswish, silu, tanh)
from hwsim.ops.activation import apply_table, build_table  # noqa: F401
from hwsim.ops.mul import mul  # noqa: F401  (registers mul)
from hwsim.ops import reduce  # noqa: F401  (registers mean)
from hwsim.ops.reduce import mean_hw  # noqa: F401
from hwsim.ops import registry  # noqa: F401,E402
from hwsim.ops.registry import OpSpec, get, names, register  # noqa: F401,E402
