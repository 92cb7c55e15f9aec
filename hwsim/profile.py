"""Hardware profiles: one frozen dataclass, loaded from TOML.

A profile fixes every choice that changes the integers a network produces: tensor formats,
accumulator, requantization, bias, BatchNorm handling, layer overrides. Built-ins ship in
``hwsim/profiles/*.toml``; a user profile is a path and may start with
``extends = "<built-in>"`` so it states only what differs; ``--set key=value`` overrides a
single field on the command line. Unknown keys and out-of-range values raise
:class:`~hwsim.errors.HwsimError` naming the key, the value and what is allowed.

Every field is documented in ``SCHEMA`` below (key -> allowed values, meaning) and listed by
``hwsim profiles show NAME``.
"""

from __future__ import annotations

import copy
import dataclasses
import fnmatch
import json
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from hwsim import safeio
from hwsim.errors import HwsimError

ROUNDING_MODES = ("half_even", "half_away", "half_up", "floor", "trunc", "stochastic")
TIE_RULES = ("half_even", "half_away", "half_up")
OP_KINDS = ("conv", "depthwise", "linear", "add", "mul", "concat", "pool", "activation")
UNBOUNDED = None


# ----------------------------------------------------------------------------- schema
class _Key:
    """One profile key: its kind, allowed values and a one-line meaning."""

    def __init__(self, kind, allowed=None, lo=None, hi=None, doc="", unbounded_ok=False, none_word="unbounded"):
        self.kind, self.allowed, self.lo, self.hi = kind, allowed, lo, hi
        self.doc, self.unbounded_ok = doc, unbounded_ok
        # the spelling of None for this key ("unbounded" accumulator, "profile" = the profile's own bits);
        # "unbounded", "none" and 0 stay accepted everywhere (older profiles)
        self.none_word = none_word

    def describe(self) -> str:
        if self.kind == "choice":
            return "one of " + ", ".join(repr(a) for a in self.allowed)
        if self.kind == "bool":
            return "true or false"
        if self.kind == "int":
            s = f"an integer in [{self.lo}, {self.hi}]"
            return s + (f' or "{self.none_word}"' if self.unbounded_ok else "")
        if self.kind == "float":
            return f"a number in [{self.lo}, {self.hi}]"
        if self.kind == "ties":
            return "a list of two tie rules, each one of " + ", ".join(TIE_RULES)
        if self.kind == "intset":
            return "one of " + ", ".join(str(a) for a in self.allowed)
        return "a string"

    def parse(self, key: str, value: Any, where: str) -> Any:
        """Validate ``value`` (TOML value or a --set string) and return the typed value."""
        v = value
        bad = HwsimError(f"{where}: invalid value {value!r} for '{key}': allowed {self.describe()}")
        if self.kind == "choice":
            if v not in self.allowed:
                raise bad
            return v
        if self.kind == "bool":
            if isinstance(v, bool):
                return v
            if isinstance(v, str) and v.lower() in ("true", "false"):
                return v.lower() == "true"
            raise bad
        if self.kind in ("int", "intset"):
            if self.unbounded_ok and (v in ("unbounded", "none", self.none_word, "0") or (v == 0 and not isinstance(v, bool))):
                return UNBOUNDED
            if isinstance(v, str):
                try:
                    v = int(v)
                except ValueError:
                    raise bad from None
            if isinstance(v, bool) or not isinstance(v, int):
                raise bad
            if self.kind == "intset" and v not in self.allowed:
                raise bad
            if self.kind == "int" and not (self.lo <= v <= self.hi):
                raise bad
            return v
        if self.kind == "float":
            if isinstance(v, str):
                try:
                    v = float(v)
                except ValueError:
                    raise bad from None
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (self.lo <= v <= self.hi):
                raise bad
            return float(v)
        if self.kind == "ties":
            if isinstance(v, str):
                v = [t.strip() for t in v.strip("[]").replace('"', "").replace("'", "").split(",")]
            if not isinstance(v, (list, tuple)) or len(v) != 2 or any(t not in TIE_RULES for t in v):
                raise bad
            return tuple(v)
        if not isinstance(v, str):
            raise bad
        return v


_FMT = {
    "bits": _Key("int", lo=2, hi=16, doc="bit width of the integer grid"),
    "signed": _Key("bool", doc="signed (two's complement) or unsigned integers"),
    "symmetric": _Key("bool", doc="zero point fixed at 0 (symmetric) or an integer zero point"),
    "narrow": _Key("bool", doc="symmetric signed grid without the most negative value"),
    "scale": _Key("choice", ("float", "pow2"), doc="scale kind: any float, or a power of two"),
    "pow2_rounding": _Key("choice", ("nearest", "ceil"), doc="how a float scale becomes 2^n (log2 rounded)"),
}
SCHEMA: dict[str, _Key] = {
    "name": _Key("str", doc="profile name"),
    "description": _Key("str", doc="one line about the hardware this models"),
    "engine": _Key("str", doc="the inference engine whose integers this profile reproduces (ONNX Runtime, PyTorch, LiteRT, TOSA); empty for design-space profiles. Groups `hwsim profiles`; not inherited through 'extends'"),
    "ranges": _Key("choice", ("auto", "calibrate", "given"),
                   doc="where grids, integer weights and biases come from: 'auto' keeps a model's given quantization (an imported int8 model) and calibrates a float model; 'given' requires one; 'calibrate' re-quantizes the (dequantized) float graph"),
    "batchnorm": _Key("choice", ("fold", "scale"),
                      doc="fold BN into weights before quantization (WP eq. 11-12) or absorb it into the requant multiplier (WP eq. 41)"),
    **{f"weights.{k}": v for k, v in _FMT.items()},
    "weights.granularity": _Key("choice", ("per_tensor", "per_channel"), doc="one scale per tensor or per output channel"),
    "weights.range": _Key("choice", ("minmax", "mse", "lsq"), doc="weight range setting (lsq: the model's learned LSQ steps; batchnorm = scale unless trained with --qat-bn fold); PTQ methods: --ptq"),
    "weights.step_scale": _Key("float", lo=0.01, hi=100.0, doc="multiply every weight step size by this factor (sweeps)"),
    **{f"activations.{k}": v for k, v in _FMT.items()},
    "activations.dtype": _Key("choice", ("int", "float"), doc="'float' = weight-only policy: float32 activations, dequantized integer weights"),
    "activations.range": _Key("choice", ("minmax", "mse", "percentile", "lsq"), doc="activation range setting on the calibration set (lsq: the learned LSQ input steps; other tensors min-max)"),
    "activations.step_scale": _Key("float", lo=0.01, hi=100.0, doc="multiply every activation step size by this factor (sweeps)"),
    "activations.input_division": _Key("choice", ("float64", "float32", "torch", "inductor", "tflite_reference", "tflite_optimized", "xnnpack"), doc="the input quantizer round(x / scale): x / scale in float64, or in float32 as ONNX QuantizeLinear (ONNX Runtime), or torch.quantize_per_tensor's round(fl32(fma(x, fl32(1/scale), zero_point))) (PyTorch on x86), or torch.compile's x86 lowering of pt2e's quantize_per_tensor, round(fl32(x * fl32(1/scale))) + zero_point, or LiteRT's QUANTIZE: reference round_half_away(fl32(x / scale)), optimized (blocks of 8 values: round_half_even(fl32(x * fl32(1/scale))), the n mod 8 rest: round_half_away(x / scale) in double), XNNPACK round_half_even(fl32(x * fl32(1/scale)))"),
    "activations.percentile": _Key("float", lo=50.0, hi=100.0, doc="percentile for range = 'percentile'"),
    "accumulator.bits": _Key("int", lo=8, hi=64, unbounded_ok=True, doc="accumulator width A (signed)"),
    "accumulator.overflow": _Key("choice", ("wrap", "saturate"), doc="accumulator overflow policy, applied after every chunk add"),
    "accumulator.rows": _Key("int", lo=1, hi=1 << 30, unbounded_ok=True, doc="MAC-array rows R: reduction chunk size (unbounded = whole reduction)"),
    "accumulator.partial_bits": _Key("int", lo=4, hi=64, unbounded_ok=True, doc="partial-sum register width P for each chunk sum"),
    "accumulator.partial_overflow": _Key("choice", ("wrap", "saturate"), doc="partial-sum overflow policy"),
    "requant.mode": _Key("choice", ("float32", "fixed", "pow2"), doc="float32 multiply (fbgemm/ORT), Q31 fixed point (gemmlowp/TFLite) or shift"),
    "requant.rounding": _Key("choice", ROUNDING_MODES, doc="rounding of float32 and pow2 requantization"),
    "requant.fixed_rounding": _Key("choice", ("double", "single"), doc="gemmlowp double rounding or TFLITE_SINGLE_ROUNDING"),
    "requant.fixed_ties": _Key("ties", doc="tie rule of the two rounding steps of fixed requant"),
    "requant.multiplier_bits": _Key("intset", (31, 15), doc="fixed-point multiplier width (15 = TOSA scale32=false)"),
    "requant.zero_point": _Key("choice", ("after", "before"), doc="float32 requant: output zero point added after or before rounding"),
    "requant.multiplier_order": _Key("choice", ("sequential", "fused"), doc="float32 M = fl32(fl32(sx*sw)/sy) or fl32(sx*sw/sy)"),
    "requant.fixed_product": _Key("choice", ("float64", "float32"), doc="fixed: real multiplier s_x*s_w/s_y in float64, or fl32(s_x*s_w)/s_y (TFLite per-tensor FULLY_CONNECTED)"),
    "requant.pool_form": _Key("choice", ("exact", "onnxruntime", "inductor", "float32_mlas"), doc="average pools: exact integer mean rounded, or ONNX Runtime's float32 QLinear(Global)AveragePool arithmetic, or torch.compile's x86 kernel (global pools: float32 sum of fl32(s (x - z)), / H*W, times fl32(1/s_y), rounded, + z_y); float32_mlas: ONNX Runtime's QDQ float path (optimizations off) for global_avgpool, DequantizeLinear -> MLAS float32 GlobalAveragePool (4 lanes) -> QuantizeLinear (hwsim.mlas)"),
    "requant.add_form": _Key("choice", ("dequantize", "ratio_fma", "xnnpack", "onednn_sum", "float32"), doc="float32 add: PyTorch's dequantize-add-requantize or ONNX Runtime QLinearAdd's ratio + FMA form; xnnpack (any mode): XNNPACK's qs8 add, 20-bit fixed-point multipliers of fl32(s_a/s_y), fl32(s_b/s_y), sum rounded half up; onednn_sum: oneDNN's conv with a sum post-op (torch.compile x86 int8): an operand that is a conv output on the add's own grid is that conv's accumulator, y = round(fl32(fma(fl32(r - z_r), s_r, fl32(fl32(acc) * S) + b) * D) + z_y); other adds as dequantize; float32 (any mode): ONNX Runtime's QDQ float path, QuantizeLinear(fl32(DequantizeLinear(a) + DequantizeLinear(b))) (hwsim.mlas)"),
    "requant.mac_form": _Key("choice", ("integer", "float32_mlas"), doc="conv2d / linear: integer accumulator + requant (the accumulator and requant keys), or float32_mlas = ONNX Runtime's QDQ float path (graph optimizations off): DequantizeLinear of inputs, weights and int32 bias, MLAS's float32 Conv / Gemm in their summation orders (FMA chains in K blocks, four-at-a-time and 8-lane kernels; a Gemm of one row takes another kernel), QuantizeLinear (hwsim.mlas; docs/semantics.md 17)"),
    "requant.activation_form": _Key("choice", ("exact", "torch", "tflite", "onnxruntime", "inductor"), doc="sigmoid, hardsigmoid, hardswish, silu, tanh tables: exact (correctly rounded f(d)/s), or the engine's arithmetic where it has a kernel for f (torch: PyTorch quantized CPU kernels; tflite: LOGISTIC / TANH tables, int8 HARD_SWISH fixed point; onnxruntime: QLinearSigmoid, QDQ HardSigmoid / HardSwish; inductor: torch's tables, and a hardswish on a conv / linear output read by nothing else fused with it as torch.compile x86 runs it, the MAC's float output recomputed from its accumulators, oneDNN's hard-swish post-op or the C++ one, hwsim.ops.activation.HardswishSpec); exact elsewhere (docs/semantics.md 12)"),
    "requant.activation_rounding": _Key("choice", ("requant", "half_even", "half_away", "half_up", "floor", "trunc"), doc="rounding of the exact activation tables (requant = requant.rounding; stochastic gives half_even: a table holds one value per input)"),
    "requant.mul_form": _Key("choice", ("requant", "torch", "onnxruntime", "float32", "inductor"), doc="mul's multiplier s_a*s_b/s_y: as the profile forms requant multipliers, PyTorch quantized::mul's fl32(fl32(s_a*s_b)*fl32(1/s_y)), or ONNX Runtime QLinearMul's (sequential, zero point before rounding); float32: ONNX Runtime's QDQ float path, QuantizeLinear(fl32(DequantizeLinear(a) * DequantizeLinear(b))) (hwsim.mlas); inductor: torch.compile x86's squeeze-excite, a mul of a conv (+ relu) or fused hard-swish output and a hardsigmoid of a conv output, both recomputed in float from their accumulators, round(fl32(fl32(x * fl32(clip(fl32(g + 3), 0, 6) / 6)) * fl32(1/s_y))) + z_y, the x conv's own output quantized the same way (zero point after); other muls as torch (hwsim.ops.mul.se_operands)"),
    "requant.mean_form": _Key("choice", ("exact", "torch", "onnxruntime", "tflite_reference", "tflite_optimized", "xnnpack"), doc="mean over H, W: exact integer mean rounded, PyTorch's raw-sum mean, ONNX Runtime's QLinearGlobalAveragePool, TFLite MEAN reference / optimized kernel, XNNPACK's qs8 mean (float32 scale and zero point)"),
    "requant.avgpool_form": _Key("choice", ("exact", "torch", "tflite", "onnxruntime"), doc="avgpool2d with count_include_pad = false: exact mean over the taps inside the image, PyTorch's / TFLite's raw-sum division (half even / half away), ONNX Runtime's QLinearAveragePool float32 arithmetic"),
    "requant.add_vector_width": _Key("int", lo=1, hi=1024, unbounded_ok=True, none_word="none",
                                     doc="fixed add: TFLite's optimized ADD, whose vector loop (width V = 16) covers the first n - n mod V elements of each image in NHWC order and rounds each input term once (ops.add vector_width); none = the scalar arithmetic everywhere"),
    "requant.block_channels": _Key("int", lo=1, hi=1 << 16, unbounded_ok=True, none_word="none",
                                   doc="fixed conv/linear requant: the first C - C mod V output channels (vector blocks of V, e.g. LiteRT's optimized DEPTHWISE_CONV_2D: 8) rounded with requant.block_ties, the rest with requant.fixed_ties; none = every channel with fixed_ties"),
    "requant.block_ties": _Key("ties", doc="tie rules of the channels in vector blocks (requant.block_channels)"),
    "requant.fixed_form": _Key("choice", ("multiplier", "float64"), doc="fixed conv/linear requant: the integer multiplier (QuantizeMultiplier + MultiplyByQuantizedMultiplier, default), or float64 = LiteRT's reference FULLY_CONNECTED: y = round_half_away(acc * M), M = s_x*s_w[c]/s_y in double, no integer multiplier"),
    "requant.seed": _Key("int", lo=0, hi=2**31 - 1, doc="seed of stochastic rounding"),
    "bias.bits": _Key("int", lo=8, hi=64, doc="bias width (quantized at s_x*s_w)"),
    "bias.rounding": _Key("choice", ROUNDING_MODES[:-1], doc="rounding of the bias to integers"),
    "bias.form": _Key("choice", ("int32", "float32", "onednn", "onednn_vnni", "onednn_combined", "onednn_sequential"), doc="int32: integer bias loaded into the accumulator first; float32: PyTorch fbgemm's float bias, fl32(b / fl32(s_x*s_w)) added to fl32(acc) before the multiply (requant.mode float32); onednn: PyTorch's x86-engine convolution through oneDNN on an AMX CPU, fl32(fl32(acc) * fl32(s_x*s_w)) + b, times fl32(1/s_y), z_y added before rounding (requant.mode float32, requant.zero_point before; ops.make_onednn_requant_params); onednn_vnni: the same engine on an AVX512-VNNI CPU without AMX, fl32(fl32(fl32(acc) * s_x) * s_w) + b, then as onednn; onednn_combined / onednn_sequential: oneDNN as torch.compile's x86 int8 lowering calls it (pt2e models), fl32(fl32(acc) * fl32(s_x*s_w)) + b (AMX kernels) / fl32(fl32(fl32(acc) * s_x) * s_w) + b (non-AMX kernels: depthwise, small matmuls), then as onednn"),
    "first_layer.bits": _Key("int", lo=2, hi=16, unbounded_ok=True, none_word="profile",
                             doc='weights + input bits of the first layer ("profile" = the profile\'s weights/activations bits; "unbounded" is the old spelling)'),
    "last_layer.bits": _Key("int", lo=2, hi=16, unbounded_ok=True, none_word="profile",
                            doc='weights + input/output bits of the last layer ("profile" = the profile\'s bits; "unbounded" is the old spelling)'),
    "calibration.images": _Key("int", lo=1, hi=1 << 20, doc="calibration images (from the train split)"),
    "calibration.seed": _Key("int", lo=0, hi=2**31 - 1, doc="seed of the calibration subset"),
}
_OVERRIDE_SELECTORS = {"match": "fnmatch pattern on the layer name", "op": "op kind: " + ", ".join(OP_KINDS),
                       "position": "first or last MAC layer (conv/linear) of the model",
                       "max_groups": "layers with at most this many groups (a convolution's groups; other ops: 1)"}
POSITIONS = ("first", "last")


# ----------------------------------------------------------------------------- dataclasses
@dataclass(frozen=True)
class TensorFormat:
    """An integer grid: bits, signedness, zero point, granularity, scale kind."""

    bits: int = 8
    signed: bool = True
    symmetric: bool = True
    narrow: bool = False
    scale: str = "float"
    pow2_rounding: str = "nearest"
    granularity: str = "per_tensor"
    range: str = "minmax"
    percentile: float = 99.99
    step_scale: float = 1.0
    dtype: str = "int"
    input_division: str = "float64"  # activations only: the input quantizer's division (Float32DivisionGrid)

    @property
    def qmin(self) -> int:
        if not self.signed:
            return 0
        return -(2 ** (self.bits - 1)) + (1 if self.narrow else 0)

    @property
    def qmax(self) -> int:
        return 2**self.bits - 1 if not self.signed else 2 ** (self.bits - 1) - 1


@dataclass(frozen=True)
class AccumulatorSpec:
    bits: int | None = 32
    overflow: str = "saturate"
    rows: int | None = None
    partial_bits: int | None = None
    partial_overflow: str = "saturate"


@dataclass(frozen=True)
class RequantSpec:
    mode: str = "float32"
    rounding: str = "half_even"
    fixed_rounding: str = "double"
    fixed_ties: tuple = ("half_up", "half_away")  # gemmlowp: SRDHM ties toward +inf, RDBPOT away from 0
    multiplier_bits: int = 31
    fixed_product: str = "float64"
    zero_point: str = "after"
    multiplier_order: str = "sequential"
    add_form: str = "dequantize"
    pool_form: str = "exact"
    activation_form: str = "exact"
    activation_rounding: str = "requant"
    mul_form: str = "requant"
    mean_form: str = "exact"
    avgpool_form: str = "exact"
    add_vector_width: int | None = None
    block_channels: int | None = None
    block_ties: tuple = ("half_up", "half_up")  # NEON VQRDMULH + VRSHL (NEON_2_SSE on x86-64)
    fixed_form: str = "multiplier"
    mac_form: str = "integer"
    seed: int = 0


@dataclass(frozen=True)
class BiasSpec:
    bits: int = 32
    rounding: str = "half_even"
    form: str = "int32"


@dataclass(frozen=True)
class LayerBits:
    bits: int | None = None


@dataclass(frozen=True)
class CalibrationSpec:
    images: int = 256
    seed: int = 0


@dataclass(frozen=True)
class Override:
    """Fields (dotted keys) that apply to layers whose name matches ``match`` and/or op kind ``op``."""

    match: str | None
    op: str | None
    settings: tuple  # ((dotted_key, value), ...)
    position: str | None = None  # "first" / "last": the model's first / last MAC layer
    max_groups: int | None = None  # a convolution with more groups is not selected (PyTorch x86: > 100 -> fbgemm)

    def applies(self, layer: str, op_kind: str, position: str | None = None, groups: int = 1) -> bool:
        if self.match is not None and not fnmatch.fnmatchcase(layer, self.match):
            return False
        if self.op is not None and self.op != op_kind:
            return False
        if self.position is not None and self.position != position:
            return False
        if self.max_groups is not None and groups > self.max_groups:
            return False
        return True


@dataclass(frozen=True)
class Profile:
    """A hardware profile. Frozen: pass it explicitly; derive variants with :meth:`with_settings`."""

    name: str = "custom"
    description: str = ""
    engine: str = ""  # the engine reproduced bit for bit ("" = a design-space profile); groups `hwsim profiles`
    batchnorm: str = "fold"
    ranges: str = "auto"  # hwsim.given: keep a model's given quantization (auto / given) or calibrate
    weights: TensorFormat = field(default_factory=lambda: TensorFormat(granularity="per_channel", narrow=True))
    activations: TensorFormat = field(default_factory=lambda: TensorFormat(signed=True, symmetric=False))
    accumulator: AccumulatorSpec = field(default_factory=AccumulatorSpec)
    requant: RequantSpec = field(default_factory=RequantSpec)
    bias: BiasSpec = field(default_factory=BiasSpec)
    first_layer: LayerBits = field(default_factory=LayerBits)
    last_layer: LayerBits = field(default_factory=LayerBits)
    calibration: CalibrationSpec = field(default_factory=CalibrationSpec)
    overrides: tuple = ()

    @property
    def weight_only(self) -> bool:
        return self.activations.dtype == "float"

    def with_settings(self, settings: dict[str, Any], where: str = "--set") -> "Profile":
        """A copy with dotted-key settings applied (values validated as in a TOML file)."""
        data = to_dict(self)
        changed = []
        for key, value in settings.items():
            v = _parse_key(key, value, where)
            _set_dotted(data, key, v)
            if key not in ("name", "description", "engine"):
                changed.append(f"{key}={_fmt_value(key, v)}")
        if changed and "description" not in settings:  # the old description no longer tells the whole story
            data["description"] = f"{self.description} [changed by {where}: {', '.join(changed)}]".lstrip()
        return _from_dict(data, where)

    def for_layer(self, layer: str, op_kind: str, position: str | None = None, groups: int = 1) -> "Profile":
        """The profile as seen by one layer: overrides whose selector matches are applied in order.

        ``position`` is "first" / "last" for the model's first / last MAC layer, else None; ``groups`` a
        convolution's groups (1 for other ops).
        """
        hits = [o for o in self.overrides if o.applies(layer, op_kind, position, groups)]
        if not hits:
            return self
        data = to_dict(self)
        for o in hits:
            for key, value in o.settings:
                _set_dotted(data, key, value)
        return _from_dict(data, f"profile {self.name!r} override")

    def describe(self) -> str:
        """A short one-line summary (W/A bits, scales, accumulator, requant)."""
        a = self.activations
        act = "FP" if self.weight_only else f"{a.bits}"
        acc = self.accumulator
        accs = "exact" if acc.bits is None else f"{acc.bits}b {acc.overflow}"
        if acc.partial_bits is not None:
            accs += f", {acc.partial_bits}b partial {acc.partial_overflow}"
        if acc.rows is not None:
            accs += f", R={acc.rows}"
        r = self.requant
        if r.mac_form != "integer":  # conv / linear in float32 (ORT's QDQ float path), no integer accumulator
            accs = r.mac_form
        req = requant_summary(r) + ("" if r.mode == "fixed" or r.add_form == "dequantize" else f", add:{r.add_form}")
        extra = "" if self.bias.form == "int32" else f" bias:{self.bias.form}"
        for pos in ("first", "last"):
            b = getattr(self, f"{pos}_layer").bits
            extra += "" if b is None else f" {pos}:{b}b"
        return (f"W{self.weights.bits}A{act} w:{self.weights.granularity}/{self.weights.scale} "
                f"acc:{accs} requant:{req}{extra}")


def requant_summary(r) -> str:
    """'fixed Q31/double(half_up,half_away)' or 'float32/half_even': a profile's [requant] section or a
    compiled layer's :class:`hwsim.ops.Requant` (per-layer overrides), as `hwsim profiles` and `inspect` show it."""
    if r.mode == "fixed":
        ties = r.fixed_ties[1] if r.fixed_rounding == "single" else ",".join(r.fixed_ties)
        return f"fixed Q{r.multiplier_bits}/{r.fixed_rounding}({ties})"
    return f"{r.mode}/{r.rounding}"


_SECTIONS = {
    "weights": TensorFormat, "activations": TensorFormat, "accumulator": AccumulatorSpec,
    "requant": RequantSpec, "bias": BiasSpec, "first_layer": LayerBits, "last_layer": LayerBits,
    "calibration": CalibrationSpec,
}


def to_dict(p: Profile) -> dict:
    """Profile -> nested plain dict (TOML/JSON friendly; ``None`` means unbounded)."""
    d = dataclasses.asdict(p)
    d["overrides"] = [
        {**({"match": o.match} if o.match else {}), **({"op": o.op} if o.op else {}),
         **({"position": o.position} if o.position else {}),
         **({"max_groups": o.max_groups} if o.max_groups is not None else {}), **dict(o.settings)}
        for o in p.overrides
    ]
    return d


def flat_items(p: Profile) -> list[tuple[str, Any]]:
    """[(dotted key, value)] for every schema key: what ``profiles show`` prints."""
    d = to_dict(p)
    out = []
    for key in SCHEMA:
        cur: Any = d
        for part in key.split("."):
            cur = cur[part]
        out.append((key, cur))
    return out


def _fmt_value(key: str, v: Any) -> str:
    """A validated value as a user writes it (None -> the key's word for it)."""
    if v is None:
        return SCHEMA[key].none_word if key in SCHEMA else "unbounded"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return ",".join(str(x) for x in v)
    return str(v)


def _set_dotted(d: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    for part in parts[:-1]:
        d = d.setdefault(part, {})
    d[parts[-1]] = value


def _parse_key(key: str, value: Any, where: str) -> Any:
    if key not in SCHEMA:
        sections = sorted({k.split(".")[0] for k in SCHEMA})
        raise HwsimError(f"{where}: unknown profile key '{key}' (known sections: {', '.join(sections)}; "
                         f"'hwsim profiles show NAME' lists every key)")
    return SCHEMA[key].parse(key, value, where)


def _from_dict(d: dict, where: str) -> Profile:
    kw: dict[str, Any] = {}
    for name in ("name", "description", "engine", "batchnorm", "ranges"):
        if name in d:
            kw[name] = d[name]
    for sec, cls in _SECTIONS.items():
        if sec in d:
            vals = dict(d[sec])
            for k in ("fixed_ties", "block_ties"):
                if k in vals:
                    vals[k] = tuple(vals[k])
            kw[sec] = cls(**vals)
    ovs = []
    for o in d.get("overrides", ()):
        o = dict(o)
        match, op, pos = o.pop("match", None), o.pop("op", None), o.pop("position", None)
        ovs.append(Override(match, op, tuple(sorted(o.items())), pos, o.pop("max_groups", None)))
    kw["overrides"] = tuple(ovs)
    return Profile(**kw)


def _flatten_toml(d: dict, where: str, prefix: str = "") -> dict[str, Any]:
    """Nested TOML table -> {dotted key: validated value}."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten_toml(v, where, key + "."))
        else:
            out[key] = _parse_key(key, v, where)
    return out


def _parse_override(o: Any, i: int, where: str) -> dict:
    if not isinstance(o, dict):
        raise HwsimError(f"{where}: overrides[{i}] must be a table with 'match', 'op' and/or 'position' and settings")
    o = dict(o)
    sel = {}
    if "match" in o:
        sel["match"] = str(o.pop("match"))
    if "op" in o:
        op = o.pop("op")
        if op not in OP_KINDS:
            raise HwsimError(f"{where}: invalid value {op!r} for 'overrides[{i}].op': allowed one of {', '.join(OP_KINDS)}")
        sel["op"] = op
    if "position" in o:
        pos = o.pop("position")
        if pos not in POSITIONS:
            raise HwsimError(f"{where}: invalid value {pos!r} for 'overrides[{i}].position': allowed first or last")
        sel["position"] = pos
    if "max_groups" in o:
        mg = o.pop("max_groups")
        if isinstance(mg, bool) or not isinstance(mg, int) or mg < 1:
            raise HwsimError(f"{where}: invalid value {mg!r} for 'overrides[{i}].max_groups': allowed an integer >= 1")
        sel["max_groups"] = mg
    if not sel:
        raise HwsimError(f"{where}: overrides[{i}] needs a selector: 'match' (layer-name pattern), 'op' "
                         f"({', '.join(OP_KINDS)}) or 'position' (first, last)")
    settings = _flatten_toml(o, f"{where} overrides[{i}]")
    for key in settings:
        if key.split(".")[0] in ("name", "description", "engine", "ranges", "calibration", "first_layer", "last_layer"):
            raise HwsimError(f"{where}: key '{key}' cannot be overridden per layer")
    return {**sel, **settings}


# ----------------------------------------------------------------------------- loading
def builtin_names() -> list[str]:
    files = resources.files("hwsim") / "profiles"
    return sorted(p.name[:-5] for p in files.iterdir() if p.name.endswith(".toml"))


def _read_toml(text: str, where: str) -> dict:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise HwsimError(f"{where}: not valid TOML: {e}") from None


MAX_EXTENDS_DEPTH = 16  # 'extends' chain length


def _resolve(name_or_path: str, seen: tuple = (), base_dir: Path | None = None) -> tuple[dict, str]:
    """Load a profile's raw settings (with ``extends`` resolved) as a nested dict.

    A path in ``extends`` is relative to the directory of the file that says it (``base_dir``)."""
    if not isinstance(name_or_path, str) or not name_or_path or "\0" in name_or_path or len(name_or_path) > 4096:
        raise HwsimError(f"profile {str(name_or_path)[:80]!r}: not a profile name or path "
                         f"(built-in profiles: {', '.join(builtin_names())})")
    path = Path(name_or_path).expanduser()
    if base_dir is not None and not path.is_absolute():
        path = base_dir / path
    if name_or_path in builtin_names():
        where = f"built-in profile {name_or_path!r}"
        text = (resources.files("hwsim") / "profiles" / f"{name_or_path}.toml").read_text(encoding="utf-8")
    else:
        try:
            looks_like_path = path.suffix == ".toml" or path.exists() or "/" in name_or_path
        except OSError as e:  # a name too long for the file system
            raise HwsimError(f"profile {name_or_path[:80]!r}: unusable path ({e.strerror or e})") from None
        if not looks_like_path:
            raise HwsimError(f"unknown profile {name_or_path!r}: choose one of {', '.join(builtin_names())} or give a .toml path")
        where = str(path)
        try:
            is_file = path.is_file()
        except OSError as e:
            raise HwsimError(f"{where}: unusable path ({e.strerror or e})") from None
        if not is_file:
            raise HwsimError(f"{where}: profile file not found (built-in profiles: {', '.join(builtin_names())})")
        text = safeio.read_text(path, where)
    if where in seen:
        raise HwsimError(f"{where}: 'extends' forms a cycle: {' -> '.join(seen + (where,))}")
    if len(seen) >= MAX_EXTENDS_DEPTH:
        raise HwsimError(f"{where}: 'extends' chain longer than {MAX_EXTENDS_DEPTH} profiles")
    raw = _read_toml(text, where)
    base: dict = {}
    parent = raw.pop("extends", None)
    if parent is not None:
        if not isinstance(parent, str):
            raise HwsimError(f"{where}: 'extends' must be a profile name or path, got {str(parent)[:80]!r}")
        base, _ = _resolve(parent, seen + (where,), None if where.startswith("built-in") else path.parent)
        base.pop("name", None)
        base.pop("description", None)  # the parent's words describe the parent, not this profile
        base.pop("engine", None)  # a variant of an engine's profile is no longer that engine
    overrides = raw.pop("overrides", None)
    flat = _flatten_toml(raw, where)
    data = copy.deepcopy(base)
    for k, v in flat.items():
        _set_dotted(data, k, v)
    if overrides is not None:
        if not isinstance(overrides, list):
            raise HwsimError(f"{where}: 'overrides' must be an array of tables ([[overrides]])")
        data["overrides"] = list(data.get("overrides", [])) + [_parse_override(o, i, where) for i, o in enumerate(overrides)]
    if "name" not in data:
        data["name"] = path.stem if where == str(path) else name_or_path
    if "description" not in data and parent is not None:
        changes = [f"{k}={_fmt_value(k, v)}" for k, v in flat.items() if k not in ("name", "description", "engine")]
        if overrides:
            changes.append(f"{len(overrides)} per-layer override(s)")
        data["description"] = f"extends {parent}" + (f"; {', '.join(changes)}" if changes else "")
    return data, where


def load_profile(name_or_path: str, settings: dict[str, Any] | None = None) -> Profile:
    """Load a built-in profile by name or a TOML file by path, then apply ``settings`` (--set)."""
    data, where = _resolve(name_or_path)
    base = _from_dict(to_dict(Profile()) | _merge_defaults(data), where)
    if settings:
        base = base.with_settings(settings)
    return base


def _merge_defaults(data: dict) -> dict:
    """Nested merge of ``data`` onto the defaults of :class:`Profile`."""
    out = to_dict(Profile())
    for k, v in data.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = {**out[k], **v}
        else:
            out[k] = v
    return out


def parse_set_options(items: tuple[str, ...] | list[str]) -> dict[str, str]:
    """``["accumulator.bits=16", ...]`` -> {key: raw value} (validated when applied)."""
    out = {}
    for item in items:
        if "=" not in item:
            raise HwsimError(f"--set {item!r}: expected KEY=VALUE, e.g. accumulator.bits=16")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def profile_toml(p: Profile) -> str:
    """Render a profile as TOML (round-trips through :func:`load_profile`)."""
    def fmt(v, key=""):
        if v is None:
            return f'"{SCHEMA[key].none_word if key in SCHEMA else "unbounded"}"'
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):  # a TOML basic string: JSON's escapes (\", \\, \n, \uXXXX) are TOML's
            return json.dumps(v, ensure_ascii=False)
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(fmt(x) for x in v) + "]"
        return repr(v)

    d = to_dict(p)
    lines = [f"name = {fmt(d['name'])}", f"description = {fmt(d['description'])}", f"engine = {fmt(d['engine'])}",
             f"batchnorm = {fmt(d['batchnorm'])}", f"ranges = {fmt(d['ranges'])}"]
    for sec in _SECTIONS:
        lines.append(f"\n[{sec}]")
        for k, v in d[sec].items():
            if f"{sec}.{k}" in SCHEMA:
                lines.append(f"{k} = {fmt(v, f'{sec}.{k}')}")
    for o in d["overrides"]:
        lines.append("\n[[overrides]]")
        for k, v in o.items():
            lines.append(f'"{k}" = {fmt(v, k)}' if "." in k else f"{k} = {fmt(v)}")
    return "\n".join(lines) + "\n"
