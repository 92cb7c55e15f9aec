"""Write a compiled :class:`~hwsim.compile.QuantizedGraph` as an ONNX model of ONNX Runtime's int8 ops
(QOperator, the default) or in ONNX's QDQ layout (``format="qdq"``, :func:`_as_qdq`).

``to_onnx(qg)`` emits the integer graph hwsim executes, node for node, as the operators ONNX
Runtime's CPU execution provider runs in integers (the ops its own quantizer emits), so that ORT's
output codes can be compared with :func:`hwsim.execute.run_integer` (tests/test_onnx_export.py):

| hwsim layer | ONNX node(s) |
|---|---|
| graph input | the 8-bit codes themselves (``float_input=True``: a float input + ``QuantizeLinear``) |
| ``conv2d`` | ``QLinearConv`` (groups, pads, strides, dilations; int32 bias) |
| ``linear`` | ``Reshape [N, K, 1, 1]`` -> 1x1 ``QLinearConv`` (int32 bias) -> ``Reshape [N, M]``; without a bias and with per-column weight zero points ``QLinearMatMul`` |
| fused ReLU / ReLU6, standalone relu / relu6 | nothing when the clamp is the whole uint8 range (the requant saturates to it), else ``Clip`` on uint8 |
| ``maxpool2d`` | ``MaxPool`` on uint8 |
| ``avgpool2d`` | ``com.microsoft.QLinearAveragePool`` (count_include_pad = 1) |
| ``global_avgpool`` | ``com.microsoft.QLinearGlobalAveragePool`` |
| ``add`` | ``com.microsoft.QLinearAdd`` |
| ``concat`` | ``com.microsoft.QLinearConcat`` (only when every input already has the output grid: a copy) |
| ``mul`` | ``com.microsoft.QLinearMul`` (mul_form ``onnxruntime``) |
| ``mean`` | ``com.microsoft.QLinearGlobalAveragePool`` (mean_form ``onnxruntime``, keepdims) |
| ``sigmoid`` in ORT's form | ``com.microsoft.QLinearSigmoid`` |
| any other table activation (hardswish, hardsigmoid, silu, tanh; any form) | ``Cast`` (+ ``Add 128`` on int8 codes) -> ``Gather`` on its 256-entry table |
| ``flatten`` | ``Flatten`` (axis 1) |
| graph output | its uint8 codes and ``DequantizeLinear`` of them (``<output>::dequantized``) |

Activations are uint8 [0, 255] or, with ``activations.signed``, int8 [-128, 127] (QOperator only: with int8
activations ORT 1.32 leaves some QDQ Convs in float). ONNX value names are hwsim's tensor names (codes on hwsim's grids); helper values get
``<layer>::...`` names. Scales are written as float32 (hwsim's requant rounds them so too).

What ORT computes for each op, and which hwsim setting is the same arithmetic, is in
``docs/semantics.md`` (section 11). Anything the export cannot write as ORT's arithmetic (activations
not on an 8-bit grid, a requant other than float32 / half_even / zero point after /
sequential multiplier, an add other than ``add_form = "ratio_fma"``, non-int32 accumulators that are
not certified overflow-free, ...) raises a one-line :class:`~hwsim.errors.HwsimError` naming the layer.
"""

from __future__ import annotations

import numpy as np

from hwsim import ops
from hwsim.compile import QLayer, QuantizedGraph
from hwsim.errors import HwsimError
from hwsim.graph import infer_shapes

OPSET = 13
MS_DOMAIN = "com.microsoft"
U8 = (0, 255)
S8 = (-128, 127)
INT32 = (-(2**31), 2**31 - 1)


def _onnx():
    try:
        import onnx
    except ImportError:  # pragma: no cover - depends on the environment
        raise HwsimError("exporting to ONNX needs the onnx package: pip install onnx") from None
    return onnx


def _pair(v):
    return tuple(v) if isinstance(v, (list, tuple)) else (v, v)


class _Writer:
    def __init__(self, qg: QuantizedGraph):
        self.qg = qg
        self.nodes = []
        self.inits = []
        self.names: set[str] = set()
        self.values: dict[str, np.ndarray] = {}  # initializer name -> its array
        self.ms = False

    # -------------------------------------------------------------- constants
    def const(self, name: str, value, dtype) -> str:
        if name not in self.names:
            from onnx import numpy_helper

            self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
            self.names.add(name)
            self.values[name] = np.asarray(value, dtype=dtype)
        return name

    def grid(self, tensor: str, layer: str | None) -> tuple[str, str]:
        """(scale, zero point) initializers of an 8-bit activation tensor (``layer`` None: the graph input)."""
        g = self.u8_grid(tensor, layer)
        return (self.const(f"{tensor}::scale", np.float32(g.scale), np.float32),
                self.const(f"{tensor}::zero_point", g.zero_point, _np_type(g)))

    def u8_grid(self, tensor: str, layer: str | None):
        """The grid of a tensor, checked to be uint8 [0, 255] or int8 [-128, 127] (one type in the whole graph: ONNX
        Runtime's QLinear kernels take inputs and outputs of one type) with a positive float32 scale."""
        where = f"layer '{layer}'" if layer is not None else "graph input"
        g = self.qg.grids.get(tensor)
        if g is None:
            raise HwsimError(f"{where}: tensor '{tensor}' has no integer grid (weight-only profile?)")
        if (g.qmin, g.qmax) != (S8 if g.signed else U8) or g.bits != 8:
            raise HwsimError(f"{where}: tensor '{tensor}' is on the grid [{g.qmin}, {g.qmax}] "
                             f"({g.bits}-bit {'signed' if g.signed else 'unsigned'}); the ONNX export needs uint8 [0, 255] "
                             "or int8 [-128, 127] (activations.bits = 8, full range)")
        first = self.qg.grids[self.qg.input_name]
        if g.signed != first.signed:
            raise HwsimError(f"{where}: tensor '{tensor}' is {'signed' if g.signed else 'unsigned'} but the input "
                             "is not; ONNX Runtime's QLinear ops take one activation type (activations.signed)")
        s = np.float32(g.scale)
        if not (np.isfinite(s) and s > 0):
            raise HwsimError(f"{where}: tensor '{tensor}' scale {g.scale!r} is not a positive float32")
        return g

    def node(self, op: str, inputs: list[str], outputs: list[str], name: str, ms: bool = False, **attrs):
        from onnx import helper

        self.nodes.append(helper.make_node(op, inputs, outputs, name=name, domain=MS_DOMAIN if ms else "", **attrs))
        self.ms = self.ms or ms

    def clamp(self, lay: QLayer, src: str, lo: int, hi: int) -> None:
        """``src`` (already saturated to its 8-bit type) -> lay.output clamped to [lo, hi] (Clip on the codes)."""
        t = _np_type(self.qg.grids[lay.output])
        self.node("Clip", [src, self.const(f"{lay.name}::clip_min", lo, t),
                           self.const(f"{lay.name}::clip_max", hi, t)], [lay.output], f"{lay.name}::clip")

    def full_range(self, tensor: str) -> tuple[int, int]:
        """The 8-bit range of a tensor's codes: [0, 255] or [-128, 127]."""
        return S8 if self.qg.grids[tensor].signed else U8

    def out_name(self, lay: QLayer) -> tuple[str, tuple[int, int] | None]:
        """Name the producing node writes to, and the extra clamp (None when the 8-bit saturation is it)."""
        full = self.full_range(lay.output)
        lo, hi = lay.clamp if lay.clamp is not None else full
        if not (full[0] <= lo <= hi <= full[1]):
            raise HwsimError(f"layer '{lay.name}': output clamp [{lo}, {hi}] is outside [{full[0]}, {full[1]}]")
        if (lo, hi) == full:
            return lay.output, None
        return f"{lay.name}::unclamped", (lo, hi)

    # -------------------------------------------------------------- checks
    @staticmethod
    def check_requant(lay: QLayer) -> None:
        r = lay.requant
        mac_form = lay.profile.requant.mac_form if lay.profile is not None else "integer"
        if mac_form != "integer":  # ORT runs it from a QDQ model with graph optimizations off, not from QLinear ops
            raise HwsimError(f"layer '{lay.name}': requant.mac_form = {mac_form!r} (ONNX Runtime's QDQ float path, "
                             "optimizations off); the export writes ORT's integer kernels: allowed 'integer'")
        want = dict(mode="float32", rounding="half_even", zero_point="after", multiplier_order="sequential")
        for k, v in want.items():
            if getattr(r, k) != v:
                raise HwsimError(f"layer '{lay.name}': requant.{k} = {getattr(r, k)!r}; ONNX Runtime's "
                                 f"QLinearConv / QLinearMatMul compute requant.{k} = {v!r}")
        if getattr(lay.requant_params, "bias_term", None) is not None:
            raise HwsimError(f"layer '{lay.name}': bias.form = {lay.profile.bias.form!r} (a float bias) has no ONNX "
                             "Runtime equivalent; ORT adds an int32 bias to the accumulator (bias.form = 'int32')")

    @staticmethod
    def check_accumulator(lay: QLayer) -> None:
        a = lay.accumulator
        int32_wrap = (a is not None and a.bits == 32 and a.overflow == "wrap" and a.rows is None
                      and a.partial_bits is None)
        certified = lay.certificate is not None and bool(np.all(lay.certificate.certified))
        if not (int32_wrap or certified):
            raise HwsimError(f"layer '{lay.name}': accumulator {a} is not ONNX Runtime's int32 and the layer is "
                             "not certified overflow-free; allowed: accumulator.bits = 32, wrap, no rows / partial_bits")

    # -------------------------------------------------------------- layers
    def weights(self, lay: QLayer, per_column_ok: bool):
        """(w, w_scale, w_zero_point) arrays for ONNX: int8 (signed weights) or uint8, scales float32."""
        signed = lay.profile.weights.signed if lay.profile is not None else bool(np.min(lay.w_q) < 0)
        dtype, (lo, hi) = (np.int8, (-128, 127)) if signed else (np.uint8, U8)
        w = np.asarray(lay.w_q, np.int64)
        cout = w.shape[0]
        zw = np.broadcast_to(np.asarray(lay.w_zero_point, np.int64).reshape(-1), (cout,))
        if w.min() < lo or w.max() > hi or zw.min() < lo or zw.max() > hi:
            raise HwsimError(f"layer '{lay.name}': weights or their zero points leave the {np.dtype(dtype).name} range "
                             f"[{lo}, {hi}]")
        sw = np.broadcast_to(np.asarray(lay.w_scale, np.float64).reshape(-1), (cout,)).astype(np.float32)
        if not (np.all(np.isfinite(sw)) and np.all(sw > 0)):
            raise HwsimError(f"layer '{lay.name}': weight scales are not positive float32 numbers")
        if not per_column_ok and np.any(zw != zw[0]):
            raise HwsimError(f"layer '{lay.name}': per-channel weight zero points differ; ONNX Runtime's QLinearConv "
                             "needs one weight zero point")
        if np.all(sw == sw[0]) and np.all(zw == zw[0]):
            return w.astype(dtype), sw[:1].reshape(()), zw[:1].reshape(()).astype(dtype)
        return w.astype(dtype), sw, zw.astype(dtype)

    def bias(self, lay: QLayer, cout: int) -> np.ndarray:
        b = np.zeros(cout, np.int64) if lay.bias_q is None else np.asarray(lay.bias_q, np.int64).reshape(-1)
        if b.min() < INT32[0] or b.max() > INT32[1]:
            raise HwsimError(f"layer '{lay.name}': the integer bias leaves int32 (bias.bits > 32); ONNX Runtime's "
                             "QLinearConv takes an int32 bias")
        return b.astype(np.int32)

    def conv_like(self, lay: QLayer, x: str, y: str, w, sw, zw, bias, attrs: dict) -> None:
        sx, zx = self.grid(lay.inputs[0], lay.name)
        sy, zy = self.grid(lay.output, lay.name)
        n = lay.name
        ins = [x, sx, zx, self.const(f"{n}::weight", w, w.dtype), self.const(f"{n}::weight_scale", sw, np.float32),
               self.const(f"{n}::weight_zero_point", zw, zw.dtype), sy, zy,
               self.const(f"{n}::bias", bias, np.int32)]
        self.node("QLinearConv", ins, [y], n, **attrs)

    def conv2d(self, lay: QLayer) -> None:
        self.check_requant(lay)
        self.check_accumulator(lay)
        w, sw, zw = self.weights(lay, per_column_ok=False)
        a = lay.attrs
        pt, pb, pl, pr = tuple(a.get("padding", (0, 0, 0, 0)))
        out, extra = self.out_name(lay)
        self.conv_like(lay, lay.inputs[0], out, w, sw, zw, self.bias(lay, w.shape[0]),
                       dict(strides=list(_pair(a.get("stride", 1))), pads=[pt, pl, pb, pr],
                            dilations=list(_pair(a.get("dilation", 1))), group=int(a.get("groups", 1)),
                            kernel_shape=list(w.shape[2:])))
        if extra:
            self.clamp(lay, out, *extra)

    def linear(self, lay: QLayer) -> None:
        self.check_requant(lay)
        self.check_accumulator(lay)
        n = lay.name
        zw_raw = np.asarray(lay.w_zero_point, np.int64).reshape(-1)
        bias = self.bias(lay, lay.w_q.shape[0])
        out, extra = self.out_name(lay)
        shape2 = self.const(f"{n}::shape_2d", [0, -1], np.int64)
        if not bias.any() and np.any(zw_raw != zw_raw[0]):
            # per-column weight zero points: QLinearMatMul (no bias input, none needed)
            w, sw, zw = self.weights(lay, per_column_ok=True)
            sx, zx = self.grid(lay.inputs[0], n)
            sy, zy = self.grid(lay.output, n)
            self.node("Reshape", [lay.inputs[0], shape2], [f"{n}::x2d"], f"{n}::flatten_in")
            ins = [f"{n}::x2d", sx, zx, self.const(f"{n}::weight_t", np.ascontiguousarray(w.T), w.dtype),
                   self.const(f"{n}::weight_scale", sw, np.float32), self.const(f"{n}::weight_zero_point", zw, zw.dtype),
                   sy, zy]
            self.node("QLinearMatMul", ins, [out], n)
        else:
            # linear with an int32 bias = a 1x1 QLinearConv on [N, K, 1, 1] (ORT adds the bias in int32
            # before the float requant, as hwsim does)
            w, sw, zw = self.weights(lay, per_column_ok=False)
            self.node("Reshape", [lay.inputs[0], self.const(f"{n}::shape_4d", [0, -1, 1, 1], np.int64)],
                      [f"{n}::x4d"], f"{n}::to_4d")
            self.conv_like(lay, f"{n}::x4d", f"{n}::y4d", w.reshape(w.shape[0], -1, 1, 1), sw, zw, bias,
                           dict(kernel_shape=[1, 1]))
            self.node("Reshape", [f"{n}::y4d", shape2], [out], f"{n}::to_2d")
        if extra:
            self.clamp(lay, out, *extra)

    def table(self, lay: QLayer) -> None:
        """A lookup-table activation (any form: hwsim.ops.activation) as ONNX Gather on its 256-entry constant
        table: ``Cast`` of the codes to int32 indices (``Add`` 128 on int8 codes: index = code - qmin), ``Gather``
        of the entries (clamped to the layer's output range) — ORT copies them, so any table is exact."""
        from onnx import TensorProto

        n, x = lay.name, lay.inputs[0]
        gi = self.u8_grid(x, n)
        go = self.u8_grid(lay.output, n)
        lo, hi = lay.clamp
        t = np.clip(np.asarray(lay.table, np.int64), lo, hi)
        if int(lay.table_qmin) != gi.qmin or t.size != 256 or t.min() < go.qmin or t.max() > go.qmax:
            raise HwsimError(f"layer '{n}': table of {t.size} entries from code {lay.table_qmin} (the export needs "
                             "256 entries indexed by the 8-bit input codes)")
        idx = f"{n}::index"
        self.node("Cast", [x], [idx if gi.qmin == 0 else f"{n}::code"], f"{n}::to_index", to=TensorProto.INT32)
        if gi.qmin != 0:
            self.node("Add", [f"{n}::code", self.const(f"{n}::offset", -gi.qmin, np.int32)], [idx], f"{n}::offset")
        self.node("Gather", [self.const(f"{n}::table", t, _np_type(go)), idx], [lay.output], n, axis=0)

    def check_pool_rounding(self, lay: QLayer) -> None:
        r = lay.profile.requant.rounding if lay.profile is not None else "half_even"
        if r != "half_even":
            raise HwsimError(f"layer '{lay.name}': average pooling with requant.rounding = {r!r}; ONNX Runtime's "
                             "quantized average pools round half to even")

    def layer(self, lay: QLayer) -> None:
        """Emit one layer: its op spec's ``onnx_export`` (hwsim/ops/<op>.py), which uses the helpers above."""
        ops.get(lay.op).onnx_export(self, lay)


def _np_type(g):
    """numpy type of a grid's 8-bit codes."""
    return np.int8 if g.signed else np.uint8


# QOperator node -> (float op, [(input index, scale index, zero point index)] of its integer activations, output
# (scale, zero point) indices, attributes it drops); the weights and the bias of QLinearConv are handled apart
_QDQ = {
    "QLinearConv": ("Conv", [(0, 1, 2)], (6, 7), ()),
    "QLinearMatMul": ("MatMul", [(0, 1, 2)], (6, 7), ()),
    "QLinearAdd": ("Add", [(0, 1, 2), (3, 4, 5)], (6, 7), ()),
    "QLinearMul": ("Mul", [(0, 1, 2), (3, 4, 5)], (6, 7), ()),
    "QLinearGlobalAveragePool": ("GlobalAveragePool", [(0, 1, 2)], (3, 4), ("channels_last",)),
    "QLinearAveragePool": ("AveragePool", [(0, 1, 2)], (3, 4), ("channels_last",)),
    "QLinearSigmoid": ("Sigmoid", [(0, 1, 2)], (3, 4), ()),
}


def _as_qdq(w: _Writer) -> list:
    """The QOperator nodes ``w`` wrote, rewritten as ONNX's QDQ layout: every QLinear op becomes
    DequantizeLinear (each integer input; the weights from their int8 initializer along axis 0, the int32 bias
    with scale fl32(s_x * s_w)) -> the float op -> QuantizeLinear (its output grid), as
    onnxruntime.quantization's QuantFormat.QDQ writes a model. ONNX Runtime with graph optimizations on fuses
    each group back into the same QLinear kernel (the integers ``to_onnx`` checks); with them off it runs the
    float op (docs/semantics.md, section 11). Ops already on the codes (MaxPool, Flatten, Reshape, Clip,
    Cast / Gather tables, QuantizeLinear of the input, DequantizeLinear of the output) stay as they are."""
    from onnx import helper

    out = []

    def dq(node, i: int, si: int, zi: int, k: int) -> str:
        name = f"{node.name}::dq{k}"  # one DequantizeLinear per consumer, as quantize_static writes them
        out.append(helper.make_node("DequantizeLinear", [node.input[i], node.input[si], node.input[zi]], [name],
                                    name=name))
        return name

    for node in w.nodes:
        if node.op_type == "QLinearConcat":
            ins = [dq(node, i, i + 1, i + 2, k) for k, i in enumerate(range(2, len(node.input), 3))]
            spec = ("Concat", None, (0, 1), ())
        elif node.op_type in _QDQ:
            spec = _QDQ[node.op_type]
            ins = [dq(node, i, si, zi, k) for k, (i, si, zi) in enumerate(spec[1])]
        else:
            out.append(node)
            continue
        op, _, (so, zo), drop = spec
        if node.op_type in ("QLinearConv", "QLinearMatMul"):
            wn, sw, zw = node.input[3:6]
            axis = 0 if node.op_type == "QLinearConv" else 1  # MatMul weights are [in, out]: columns
            ins.append(f"{node.name}::w")
            out.append(helper.make_node("DequantizeLinear", [wn, sw, zw], [ins[-1]], name=ins[-1],
                                        **({"axis": axis} if w.values[sw].size > 1 else {})))
            if node.op_type == "QLinearConv" and len(node.input) > 8:
                sb = w.const(f"{node.name}::bias_scale", (np.float32(w.values[node.input[1]])
                                                         * w.values[sw].astype(np.float32)).astype(np.float32),
                             np.float32)
                zb = w.const(f"{node.name}::bias_zero_point", np.zeros(w.values[sb].shape, np.int32), np.int32)
                ins.append(f"{node.name}::b")
                out.append(helper.make_node("DequantizeLinear", [node.input[8], sb, zb], [ins[-1]], name=ins[-1],
                                            **({"axis": 0} if w.values[sb].size > 1 else {})))
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute if a.name not in drop}
        f = f"{node.name}::float"
        out.append(helper.make_node(op, ins, [f], name=node.name, **attrs))
        out.append(helper.make_node("QuantizeLinear", [f, node.input[so], node.input[zo]], [node.output[0]],
                                    name=f"{node.name}::quantize"))
    return out


FORMATS = ("qoperator", "qdq")


def onnxruntime_pool_form(lay: QLayer, input_hw: tuple[int, int]) -> str:
    """The :func:`hwsim.ops.avg_pool2d` / :func:`~hwsim.ops.global_avg_pool` ``form`` that is ONNX Runtime's
    arithmetic for this layer as exported (``scale`` = the layer's grid scale).

    QLinearGlobalAveragePool (MLAS): "float32_multiplier". QLinearAveragePool: "float32_dequantize",
    except a window covering the whole unpadded plane, which ORT hands to the global kernel. hwsim's
    default ("exact") differs only on ties S/n = q + 1/2 (n even): the multiplier form is "exact" when n is
    a power of two; the dequantize form adds z before rounding, so with an odd z its ties go the other way.
    """
    form = getattr(ops.get(lay.op), "onnxruntime_form", None)
    if form is None:
        raise HwsimError(f"layer '{lay.name}': op '{lay.op}' is not an average pool")
    return form(lay, input_hw)


def to_onnx(qg: QuantizedGraph, *, float_input: bool = False, intermediate_outputs: bool = False,
            batch: int | str = "N", format: str = "qoperator"):
    """The integer graph of ``qg`` as an ``onnx.ModelProto`` of ONNX Runtime's quantized CPU ops.

    The graph input is ``qg.input_name`` holding uint8 codes on the input grid (what
    :meth:`~hwsim.compile.Grid.quantize` gives; hwsim quantizes in float64, ORT's QuantizeLinear in
    float32, so only codes make the comparison exact); ``float_input=True`` instead takes normalised
    float32 images (``<input>::float``) through ``QuantizeLinear``. Outputs: ``qg.output_name`` (uint8
    codes) and ``<output>::dequantized`` (float32); with ``intermediate_outputs`` also every layer's
    output tensor (uint8 codes, hwsim's names; with ``float_input`` the input codes too) so each can be
    compared with ``run_integer``.
    ``batch``: the batch dimension (a name = dynamic). ``format``: "qoperator" (ONNX Runtime's QLinear ops) or
    "qdq" (DequantizeLinear -> float op -> QuantizeLinear, :func:`_as_qdq`; the same integers with ORT's graph
    optimizations on).
    """
    onnx = _onnx()
    from onnx import TensorProto, helper

    if format not in FORMATS:
        raise HwsimError(f"ONNX export format {format!r}: allowed {', '.join(map(repr, FORMATS))}")
    if qg.weight_only:
        raise HwsimError(f"profile '{qg.profile.name}' is weight-only (float activations): nothing integer to export")
    w = _Writer(qg)
    inp = qg.input_name
    spec = qg.model.inputs[0]
    shape = [batch, *spec.shape]
    sx, zx = w.grid(inp, None)
    code = TensorProto.INT8 if qg.grids[inp].signed else TensorProto.UINT8
    if float_input:
        graph_in = helper.make_tensor_value_info(f"{inp}::float", TensorProto.FLOAT, shape)
        w.node("QuantizeLinear", [f"{inp}::float", sx, zx], [inp], f"{inp}::quantize")
    else:
        graph_in = helper.make_tensor_value_info(inp, code, shape)
    for lay in qg.layers:
        w.layer(lay)
    if format == "qdq" and qg.grids[inp].signed:
        # measured (ORT 1.32, x86-64 with VNNI): with int8 activations ORT fuses only some QDQ Convs (3 of 9 on
        # ResNet-8, quantize_static's own QInt8 QDQ model too) and runs the others as float Conv
        raise HwsimError(f"profile '{qg.profile.name}': format 'qdq' with int8 activations (activations.signed = "
                         "true): ONNX Runtime fuses only some int8-activation QDQ Convs and runs the rest in float, "
                         "not these integers; use format 'qoperator'")
    out = qg.output_name
    so, zo = w.grid(out, qg.layers[-1].name)
    w.node("DequantizeLinear", [out, so, zo], [f"{out}::dequantized"], f"{out}::dequantize")
    shapes = infer_shapes(qg.model)  # per sample; hwsim's tensors have the ONNX layout

    def info(name, elem, tensor):
        return helper.make_tensor_value_info(name, elem, [batch, *shapes[tensor]])

    outputs = [info(out, code, out), info(f"{out}::dequantized", TensorProto.FLOAT, out)]
    if intermediate_outputs:
        if float_input:  # the codes QuantizeLinear made
            outputs.append(info(inp, code, inp))
        outputs += [info(lay.output, code, lay.output) for lay in qg.layers if lay.output != out]
    nodes = _as_qdq(w) if format == "qdq" else w.nodes
    graph = helper.make_graph(nodes, str(qg.model.metadata.get("arch", "hwsim")), [graph_in], outputs, w.inits)
    ms = any(n.domain == MS_DOMAIN for n in nodes)
    opsets = [helper.make_opsetid("", OPSET)] + ([helper.make_opsetid(MS_DOMAIN, 1)] if ms else [])
    model = helper.make_model(graph, opset_imports=opsets, producer_name="hwsim",
                              doc_string=f"hwsim integer graph ({format}), profile {qg.profile.name}")
    model.ir_version = 8  # opset 13; ONNX Runtime >= 1.10 reads it
    onnx.checker.check_model(model)
    return model
