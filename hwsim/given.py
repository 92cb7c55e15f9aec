"""A given quantization kept as it is (DESIGN.md "Given quantization"): stored form and compile.

An int8 model imported from an engine (``hwsim import model_int8.onnx``) carries its own scales,
zero points, integer weights and int32 biases. :class:`Given` holds them keyed by the hwsim
graph's tensor and node names (the graph itself is the dequantized float model, so the float
reference and the fake-quant mirror still work), and :func:`compile_given` builds the
:class:`~hwsim.compile.QuantizedGraph` from them instead of calibrating:

- from the given quantization: every activation grid (scale, zero point, qmin/qmax of its integer
  type), the integer weights with their per-tensor or per-channel scales and zero points, the int32
  biases — hence every requant input (s_x, s_w, s_y, z_x, z_y);
- from the profile: the accumulator (bits, overflow, rows, partial sums), the requant mode and
  rounding (float32 / fixed / pow2, tie rules, multiplier order, add and pool forms), the input's
  QuantizeLinear division, per-layer overrides.

Whether a profile's grid constraints hold for the given numbers is checked, never repaired: an
activation grid of other bits or signedness, a symmetric profile on zero points != 0, pow2 scales
on float scales, weights outside the profile's weight range (4-bit weights from int8 ones, a narrow
range holding -128), per-channel given weights on a per-tensor profile, a float bias — each is one
line naming the tensor or layer, the given value and the profile key (``--set ranges=calibrate``
re-quantizes the dequantized model instead, explicitly).

The profile key ``ranges`` chooses: ``auto`` (default: keep a model's given quantization when it
has one, else calibrate), ``given`` (require one) or ``calibrate`` (ignore it).

Stored in a ``.hwsim`` file as two extra zip members, written and read by :mod:`hwsim.graph`:
``given.json`` (``{"format": "hwsim-given", "version": 1, engine, source_format, profile, grids,
layers}``) and ``given.npz`` (the integer weights and int32 biases, ``<node>.weight`` /
``<node>.bias``). A file without them is a float model, as before.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import zipfile
from dataclasses import dataclass, field

import numpy as np

from hwsim import ops
from hwsim.errors import HwsimError

GIVEN_JSON = "given.json"
GIVEN_NPZ = "given.npz"
GIVEN_FORMAT = "hwsim-given"
GIVEN_VERSION = 1
RANGES = ("auto", "calibrate", "given")
INT_TYPES = {"int8": (-128, 127), "uint8": (0, 255), "int16": (-32768, 32767), "uint16": (0, 65535)}
# the profile each engine's integers are reproduced by (its default for a model it quantized), by the
# signedness of the model's activation grids
ENGINE_PROFILES = {("onnxruntime", False): "int8-onnxruntime", ("onnxruntime", True): "int8-onnxruntime-s8"}


@dataclass
class Given:
    """The numbers an engine gave a model, keyed by the hwsim graph's names.

    ``grids``: {tensor: {"scale": float (a float32 value), "zero_point": int, "dtype": "uint8" | ...}};
    ``layers``: {conv/linear node: {"w_scale": [float], "w_zero_point": [int], "w_dtype": str}} (one
    value per tensor, or one per output channel); ``arrays``: {"<node>.weight": integers in hwsim's
    layout, "<node>.bias": int32}.
    """

    engine: str
    source_format: str
    profile: str
    grids: dict[str, dict]
    layers: dict[str, dict]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"format": GIVEN_FORMAT, "version": GIVEN_VERSION, "engine": self.engine,
                "source_format": self.source_format, "profile": self.profile, "grids": self.grids,
                "layers": self.layers}

    def summary(self) -> dict:
        """What a report shows of it (JSON data): engine, layout, default profile, counts, digest."""
        return {"engine": self.engine, "source_format": self.source_format, "profile": self.profile,
                "grids": len(self.grids), "integer_layers": len(self.layers), "digest": self.digest()}

    def digest(self) -> str:
        """sha256 of the whole given quantization (what a sweep's task key needs to tell models apart)."""
        h = hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode())
        for k in sorted(self.arrays):
            a = np.ascontiguousarray(self.arrays[k])
            h.update(f"{k}:{a.dtype.str}:{a.shape}".encode())
            h.update(a.tobytes())
        return h.hexdigest()

    def __str__(self) -> str:  # json.dumps(default=str) of metadata: a stable fingerprint, never a truncated repr
        return f"given:{self.digest()}"

    __repr__ = __str__


def given_of(graph) -> Given | None:
    """The given quantization a graph carries (``graph.metadata["given"]``), or None for a float model."""
    g = graph.metadata.get("given") if isinstance(graph.metadata, dict) else None
    return g if isinstance(g, Given) else None


# ----------------------------------------------------------------------------- stored form
def to_members(given: Given) -> dict[str, bytes]:
    """The two zip members of a ``.hwsim`` file that hold ``given``."""
    npz = io.BytesIO()
    with zipfile.ZipFile(npz, "w", zipfile.ZIP_STORED) as zn:
        for key, arr in given.arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
            zn.writestr(key + ".npy", buf.getvalue())
    doc = json.dumps(given.to_json(), indent=1, allow_nan=False)
    return {GIVEN_JSON: doc.encode(), GIVEN_NPZ: npz.getvalue()}


def from_members(doc, arrays: dict[str, np.ndarray], graph, where: str) -> Given:
    """A :class:`Given` from ``given.json`` (parsed) and ``given.npz`` (read), checked against ``graph``;
    one-line HwsimError naming the key and what is allowed."""
    def fail(msg):
        raise HwsimError(f"{where}: {GIVEN_JSON}: {msg}")

    if not isinstance(doc, dict) or doc.get("format") != GIVEN_FORMAT:
        fail(f"format {doc.get('format') if isinstance(doc, dict) else doc!r} is not {GIVEN_FORMAT!r}")
    if doc.get("version") != GIVEN_VERSION:
        fail(f"unsupported version {doc.get('version')!r} (this hwsim reads version {GIVEN_VERSION})")
    keys = {"format", "version", "engine", "source_format", "profile", "grids", "layers"}
    if set(doc) != keys:
        fail(f"keys {sorted(doc)} (expected {sorted(keys)})")
    for k in ("engine", "source_format", "profile"):
        if not isinstance(doc[k], str):
            fail(f"{k} {doc[k]!r} must be a string")
    grids, layers = doc["grids"], doc["layers"]
    if not isinstance(grids, dict) or not isinstance(layers, dict):
        fail("grids and layers must be objects")
    tensors = {graph.inputs[0].name} | {o for n in graph.nodes for o in n.outputs}
    for t, gd in grids.items():
        if t not in tensors:
            fail(f"grid of tensor {t!r}: not a tensor of the graph")
        _check_grid(gd, f"grids[{t!r}]", fail)
    nodes = {n.name: n for n in graph.nodes}
    for name, ld in layers.items():
        n = nodes.get(name)
        if n is None or not ops.get(n.op).mac:
            fail(f"layers[{name!r}]: not a conv2d/linear node of the graph")
        if not isinstance(ld, dict) or set(ld) != {"w_scale", "w_zero_point", "w_dtype"}:
            fail(f"layers[{name!r}] must hold w_scale, w_zero_point, w_dtype")
        w = arrays.get(f"{name}.weight")
        shape = graph.tensors[n.params["weight"]].shape
        if w is None or w.shape != shape or w.dtype.kind not in "iu":
            fail(f"layers[{name!r}]: {GIVEN_NPZ} needs integer '{name}.weight' of shape {list(shape)}")
        if ld["w_dtype"] not in INT_TYPES:
            fail(f"layers[{name!r}].w_dtype {ld['w_dtype']!r} (allowed: {', '.join(INT_TYPES)})")
        lo, hi = INT_TYPES[ld["w_dtype"]]
        if w.size and (int(w.min()) < lo or int(w.max()) > hi):
            fail(f"layers[{name!r}]: weights outside {ld['w_dtype']} [{lo}, {hi}]")
        s, z = ld["w_scale"], ld["w_zero_point"]
        if (not isinstance(s, list) or not isinstance(z, list) or len(s) != len(z) or len(s) not in (1, shape[0])
                or not all(_is_scale(v) for v in s) or not all(_is_int(v) and lo <= v <= hi for v in z)):
            fail(f"layers[{name!r}]: w_scale / w_zero_point must be lists of 1 or {shape[0]} positive finite "
                 f"float32 values / integers in [{lo}, {hi}]")
        b = arrays.get(f"{name}.bias")
        if b is not None and (b.dtype not in (np.int32, np.float32) or b.shape != (shape[0],)
                              or not np.all(np.isfinite(b))):
            fail(f"layers[{name!r}]: '{name}.bias' must be int32 (an int32 bias) or finite float32 (PyTorch's "
                 f"float bias) of shape [{shape[0]}]")
    extra = sorted(k for k in arrays if k.rsplit(".", 1)[0] not in layers)
    if extra:
        raise HwsimError(f"{where}: {GIVEN_NPZ}: array {extra[0]!r} belongs to no given layer")
    return Given(doc["engine"], doc["source_format"], doc["profile"], grids, layers, arrays)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_scale(v) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) and v > 0
            and float(np.float32(v)) == float(v))


def _check_grid(gd, what: str, fail) -> None:
    if not isinstance(gd, dict) or set(gd) != {"scale", "zero_point", "dtype"}:
        fail(f"{what} must hold scale, zero_point, dtype")
    if gd["dtype"] not in INT_TYPES:
        fail(f"{what}.dtype {gd['dtype']!r} (allowed: {', '.join(INT_TYPES)})")
    lo, hi = INT_TYPES[gd["dtype"]]
    if not _is_scale(gd["scale"]):
        fail(f"{what}.scale {gd['scale']!r} (allowed: a positive finite float32 value)")
    if not _is_int(gd["zero_point"]) or not lo <= gd["zero_point"] <= hi:
        fail(f"{what}.zero_point {gd['zero_point']!r} (allowed: an integer in [{lo}, {hi}])")


# ----------------------------------------------------------------------------- compile
def _grid(gd: dict):
    from hwsim.compile import Grid

    lo, hi = INT_TYPES[gd["dtype"]]
    return Grid(float(gd["scale"]), int(gd["zero_point"]), lo, hi, 8 if gd["dtype"].endswith("int8") else 16,
                gd["dtype"].startswith("int"))


def _same_grid(a, b) -> bool:
    """The same integer grid (the input's may be a Float32DivisionGrid: its quantizer is not the grid)."""
    return (a.scale, a.zero_point, a.qmin, a.qmax) == (b.scale, b.zero_point, b.qmin, b.qmax)


def _pow2(v) -> bool:
    m, _ = np.frexp(np.asarray(v, np.float64))
    return bool(np.all(m == 0.5))


def wants_given(model, profile) -> bool:
    """Whether compile keeps ``model``'s given quantization under ``profile`` (its ``ranges`` key)."""
    g = given_of(model)
    if profile.ranges == "given" and g is None:
        raise HwsimError(f"profile {profile.name!r}: ranges = 'given' but the model has no given quantization "
                         "(a float model: use ranges = 'auto' or 'calibrate')")
    return g is not None and profile.ranges != "calibrate"


def check_given(model, profile, recipe=None) -> None:
    """Raise the one-line HwsimError that compiling ``model`` under ``profile`` would raise about its given
    quantization (the ``ranges`` key, a recipe, a constraint the given numbers cannot meet), before any work."""
    if wants_given(model, profile):
        from hwsim.compile import compile_model

        compile_model(model, profile, None, recipe=recipe)


def _check_activation_grid(t: str, gd: dict, fmt, bits: int, profile_name: str) -> None:
    """The profile's activation format must hold the given grid as it is."""
    lo, hi = INT_TYPES[gd["dtype"]]
    g_bits, g_signed = (8 if gd["dtype"].endswith("int8") else 16), gd["dtype"].startswith("int")
    hint = " (--set ranges=calibrate re-quantizes the dequantized model instead)"
    if fmt.dtype == "float":
        raise HwsimError(f"profile {profile_name!r}: activations.dtype = 'float' (weight-only) cannot run the given "
                         f"integer activations{hint}")
    if (bits, fmt.signed) != (g_bits, g_signed):
        raise HwsimError(f"profile {profile_name!r}: tensor {t!r} is given as {gd['dtype']} [{lo}, {hi}] but the "
                         f"profile asks for {'signed' if fmt.signed else 'unsigned'} {bits}-bit activations "
                         f"(activations.bits / activations.signed / first_layer / last_layer){hint}")
    if fmt.symmetric and gd["zero_point"] != 0:
        raise HwsimError(f"profile {profile_name!r}: tensor {t!r} has the given zero point {gd['zero_point']} but "
                         f"activations.symmetric = true{hint}")
    if fmt.scale == "pow2" and not _pow2(gd["scale"]):
        raise HwsimError(f"profile {profile_name!r}: tensor {t!r} has the given scale {gd['scale']!r}, not a power "
                         f"of two, but activations.scale = 'pow2'{hint}")


def _check_weights(name: str, ld: dict, w: np.ndarray, fmt, qmin: int, qmax: int, bits: int,
                   profile_name: str) -> None:
    hint = " (--set ranges=calibrate re-quantizes the dequantized model instead)"
    s, z = np.asarray(ld["w_scale"], np.float64), np.asarray(ld["w_zero_point"], np.int64)
    lo, hi = int(w.min()), int(w.max())
    if lo < qmin or hi > qmax:
        raise HwsimError(f"profile {profile_name!r}: layer {name!r} has given {ld['w_dtype']} weights in [{lo}, {hi}] "
                         f"but the profile's {bits}-bit weight grid is [{qmin}, {qmax}] (weights.bits / narrow / "
                         f"signed, first_layer / last_layer){hint}")
    if fmt.symmetric and z.any():
        raise HwsimError(f"profile {profile_name!r}: layer {name!r} has given weight zero points != 0 but "
                         f"weights.symmetric = true{hint}")
    if fmt.granularity == "per_tensor" and (np.unique(s).size > 1 or np.unique(z).size > 1):
        raise HwsimError(f"profile {profile_name!r}: layer {name!r} has per-channel given weight scales but "
                         f"weights.granularity = 'per_tensor'{hint}")
    if fmt.scale == "pow2" and not _pow2(s):
        raise HwsimError(f"profile {profile_name!r}: layer {name!r} has given weight scales that are not powers of "
                         f"two but weights.scale = 'pow2'{hint}")


def compile_given(model, profile, given: Given | None = None):
    """The QuantizedGraph of ``model`` with its given quantization kept (module docstring); the profile
    supplies the arithmetic. Raises one-line HwsimErrors where the profile cannot hold the given numbers."""
    from hwsim.compile import LayerContext, QuantHooks, QuantizedGraph, fold_graph, input_grid, layer_plan, new_layer

    given = given or given_of(model)
    pname = profile.name
    folded, dead = fold_graph(model, "fold")
    if folded.metadata.get("bn_folded"):
        raise HwsimError(f"model: a BatchNorm after a given-quantized layer ({folded.metadata['bn_folded'][0]!r}); "
                         "an engine's integers never fold one")
    plan = layer_plan(folded, profile, own_grids=frozenset(given.grids))
    input_name, mac_nodes, first, last = plan.input_name, plan.mac_nodes, plan.first, plan.last
    grid_source, act_bits = plan.grid_source, plan.act_bits

    def own_grid(t: str, prof):
        gd = given.grids.get(t)
        if gd is None:
            raise HwsimError(f"model: tensor {t!r} has no given grid (the engine's model quantizes every tensor "
                             "an op computes)")
        _check_activation_grid(t, gd, prof.activations, act_bits(t, prof), pname)
        return _grid(gd)

    # the input's grid: the model's first QuantizeLinear, which may follow value-moving ops (a Flatten): those
    # commute with a monotonic quantizer, so quantizing the input on that grid gives the same integers
    first_q = input_name
    while first_q not in given.grids:
        cons = [n for n in folded.nodes if first_q in n.inputs]
        if len(cons) != 1 or not ops.get(cons[0].op).moves_values:
            break
        first_q = cons[0].outputs[0]
    grids = {input_name: input_grid(own_grid(first_q, profile), profile.activations)}
    reach = {input_name: (grids[input_name].qmin, grids[input_name].qmax)}
    layers = []
    for n in folded.nodes:
        lay = new_layer(n, folded, profile, first, last, len(layers))
        prof, out = lay.profile, lay.output
        position = "first" if n.name == first else "last" if n.name == last else None
        spec = ops.get(n.op)
        src = grids[grid_source(n.inputs[0])] if spec.output_grid == "input" else None
        if src is not None and (out not in given.grids or _same_grid(_grid(given.grids[out]), src)):
            grids[out] = src  # the engine kept the input's grid (max-pool, flatten, ...)
            lo, hi = reach[n.inputs[0]]
            if spec.activation:
                lo, hi = spec.clamp(lo, hi, src)
                lay.clamp = (lo, hi)
            reach[out] = (lo, hi)
            layers.append(lay)
            continue
        if spec.moves_values:
            raise HwsimError(f"model: node {n.name!r} ({n.op}) moves values but its given output grid "
                             f"{given.grids[out]} differs from its input's; hwsim's {n.op} keeps the grid")
        g = own_grid(out, prof)
        grids[out] = g
        lo, hi = g.qmin, g.qmax
        if lay.activation:
            lo, hi = ops.get(lay.activation).clamp(lo, hi, g)
        lay.clamp = (lo, hi)
        reach[out] = (lo, hi)
        if spec.mac:
            _given_mac(lay, n, folded, given, prof, profile, position, grids, reach, pname)
            from hwsim.ops.mul import inductor_float_output  # issue 17: a float-output conv's C++ quantize

            inductor_float_output(lay, n, LayerContext(folded, profile, prof, grids, reach, False, QuantHooks(), True,
                                                       position))
        else:
            spec.compile(lay, n, LayerContext(folded, profile, prof, grids, reach, False, QuantHooks(), True, position))
        if lay.requant is not None and lay.requant.rounding == "stochastic":
            lay.requant = dataclasses.replace(lay.requant, seed=lay.rounding_seed)
        layers.append(lay)
    missing = sorted(set(given.layers) - {n.name for n in mac_nodes})
    if missing:
        raise HwsimError(f"model: given layer {missing[0]!r} is not a conv2d/linear node of the graph")
    qg = QuantizedGraph(model=folded, profile=profile, grids=grids, layers=layers, input_name=input_name,
                        output_name=folded.outputs[0], dead_channels=dead, reach=reach, recipe="given")
    qg.notes.append(f"given quantization kept ({given.engine}, {given.source_format}): scales, zero points, "
                    f"integer weights and biases as the model gives them; arithmetic from profile {pname!r}")
    return qg


def _given_mac(lay, n, folded, given: Given, prof, profile, position, grids, reach, pname: str) -> None:
    """A conv2d/linear layer from the given integers (weights, scales, zero points, int32 bias)."""
    from hwsim.compile import ONEDNN_FORMS, _accumulator, _requant, finish_linear, int_grid

    ld = given.layers.get(n.name)
    if ld is None:
        raise HwsimError(f"model: layer {n.name!r} has no given weights")
    w = np.asarray(given.arrays[f"{n.name}.weight"], np.int64)
    cout = w.shape[0]
    bits = prof.weights.bits
    if position == "first" and profile.first_layer.bits:
        bits = profile.first_layer.bits
    if position == "last" and profile.last_layer.bits:
        bits = profile.last_layer.bits
    qmin, qmax = int_grid(prof.weights, bits)
    _check_weights(n.name, ld, w, prof.weights, qmin, qmax, bits, pname)
    b = given.arrays.get(f"{n.name}.bias")
    float_bias = b is not None and np.asarray(b).dtype == np.float32  # PyTorch's: bias() stays a float
    forms = ("float32",) + ONEDNN_FORMS if float_bias else ("int32",)
    if prof.bias.form not in forms:
        raise HwsimError(f"profile {pname!r}: bias.form = {prof.bias.form!r} cannot hold layer {n.name!r}'s given "
                         f"{'float32' if float_bias else 'int32'} bias (allowed here: {' or '.join(map(repr, forms))})")
    scale = np.broadcast_to(np.asarray(ld["w_scale"], np.float64), (cout,)).copy()
    zp = np.broadcast_to(np.asarray(ld["w_zero_point"], np.int64), (cout,)).copy()
    bias_q = np.zeros(cout, np.int64) if b is None or float_bias else np.asarray(b, np.int64)
    lay.w_q = w
    lay.w_qmin, lay.w_qmax = qmin, qmax
    lay.w_zero_point = zp if zp.any() else 0
    lay.w_scale = scale
    # the float bias the given integers stand for (weight-only and fake-quant views): b_q * fl32(s_x * s_w)
    s_b = (np.float32(grids[lay.inputs[0]].scale) * scale.astype(np.float32)).astype(np.float64)
    lay.b_float = np.asarray(b, np.float32).copy() if float_bias else (bias_q * s_b).astype(np.float32)
    lay.accumulator = _accumulator(prof)
    lay.requant = _requant(prof)
    try:
        finish_linear(lay, grids, reach, False, bias_q=None if float_bias else bias_q)
    except HwsimError as e:
        raise HwsimError(f"profile {pname!r}: layer {n.name!r} with its given scales: {e}") from None
