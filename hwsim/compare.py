"""``hwsim compare``: float vs fake-quant (what training simulated) vs the integer simulator.

Per grid tensor (conv/linear/add/concat/pool outputs) both chains are run on the same test
images and compared in output LSBs. For every layer whose integers differ we also run the
layer *isolated* — the simulator layer fed the fake-quant chain's own input codes — so a
difference born in the layer is told apart from one that only propagated from upstream, and
we name its cause by counterfactual: the same isolated layer re-run with an unbounded
accumulator (then it was overflow/saturation), with float32 round-half-even requant (then it
was the requantization: fixed-point double rounding, truncation, shift rounding …).

Needs torch (the mirror lives in ``frontends/pytorch/fakequant.py``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from hwsim import ops
from hwsim.compile import QuantizedGraph
from hwsim.errors import HwsimError
from hwsim.execute import LayerStats, _logits, _new_stats, accuracy, run_layer
from hwsim.floatref import run_float

FQ_ROUNDINGS = ("half_even", "profile")
COMPARED_OPS = ops.registry.names_where(compared=True)  # the layers compare diffs (each op's spec says)


def _mirror():
    try:
        from frontends.pytorch.fakequant import mirror_codes
    except ModuleNotFoundError as e:
        if e.name == "torch":
            raise HwsimError("hwsim compare needs PyTorch for the fake-quant mirror: pip install 'hwsim[torch]'") from None
        raise
    return mirror_codes


@dataclass
class LayerDiff:
    name: str
    op: str
    kind: str
    sqnr_fq_vs_sim: float
    sqnr_fq_vs_float: float
    sqnr_sim_vs_float: float
    max_lsb: int
    mean_lsb: float
    frac_diff: float
    overflow_events: int
    acc_events: int
    partial_events: int
    clip_rate: float
    isolated_max_lsb: int | None = None
    cause: str = ""

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class CompareResult:
    profile: str
    model: str
    data: str
    images: int
    float_accuracy: float
    fakequant_accuracy: float
    sim_accuracy: float
    prediction_agreement: float  # fake-quant vs simulator
    first_divergent_layer: str | None
    layers: list[LayerDiff] = field(default_factory=list)
    # the first layer whose own arithmetic (fed fake-quant's inputs) differs by more than 1 LSB
    first_causal_layer: str | None = None
    fq_rounding: str = "half_even"
    recipe: str = "profile"  # the PTQ recipe that compiled qg

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["layers"] = [x.to_json() for x in self.layers]
        return d


def _isolated(qg: QuantizedGraph, lay, codes: dict[str, np.ndarray], impl: str = "fast", **replace) -> tuple[np.ndarray, LayerStats]:
    """Run one simulator layer on the mirror's input codes (optionally with a changed config)."""
    if replace:
        lay = dataclasses.replace(lay, **replace)
        if "requant" in replace and lay.requant_params is not None:
            gx, gy = qg.grids[lay.inputs[0]], qg.grids[lay.output]
            float_bias = lay.b_float if getattr(lay.requant_params, "bias_term", None) is not None else None
            if getattr(lay.requant_params, "pre_scale", None) is not None:  # bias.form = "onednn" / "onednn_*"
                lay.requant_params = ops.make_onednn_requant_params(gx.scale, lay.w_scale, gy.scale, bias=lay.b_float,
                                                                    form=lay.profile.bias.form)
            else:
                lay.requant_params = ops.make_requant_params(gx.scale, lay.w_scale, gy.scale, lay.requant,
                                                             bias=float_bias)
    env = {i: codes[i] for i in lay.inputs}
    st = LayerStats(lay.name, lay.op, lay.kind)
    run_layer(qg, lay, env, st, impl)
    return env[lay.output], st


def mirror_rounding(fq_rounding: str, hw_rounding: str) -> str:
    """The rounding the fake-quant mirror applies: half_even (QAT's torch.round), or with ``fq_rounding =
    "profile"`` the hardware's own mode (stochastic has no fake-quant analogue: half_even)."""
    if fq_rounding not in FQ_ROUNDINGS:
        raise HwsimError(f"fake-quant rounding {fq_rounding!r}: allowed {', '.join(FQ_ROUNDINGS)}")
    if fq_rounding == "half_even" or hw_rounding == "stochastic":
        return "half_even"
    return hw_rounding


def _cause(qg, lay, codes, iso_diff: int, st: LayerStats, fq_rounding: str = "half_even") -> str:
    """Name why ``lay`` differs; ``st`` = the layer's stats when run alone on the fake-quant inputs."""
    if iso_diff == 0:
        return "propagated from upstream (identical when fed the same inputs)"
    spec = ops.get(lay.op)
    own = spec.explain(qg, lay, codes, iso_diff, st, fq_rounding)  # an op-specific cause (average pools)
    if own is not None:
        return own
    reasons = []
    if spec.mac and lay.profile is not None and lay.profile.requant.mac_form != "integer":
        return (f"float32 accumulation ({lay.profile.requant.mac_form}: dequantized products summed in float32 in "
                "the engine's order, then quantized; no integer accumulator)")
    if spec.mac:
        unbounded = ops.Accumulator(bits=None, overflow="wrap", rows=None, partial_bits=None)
        y, _ = _isolated(qg, lay, codes, accumulator=unbounded)
        d = int(np.max(np.abs(y - codes[lay.output]))) if y.size else 0
        if d < iso_diff:
            what = []
            if st.partial_events:
                what.append(f"partial-sum overflow: {lay.accumulator.partial_overflow} at {lay.accumulator.partial_bits} "
                            f"bits ({st.partial_events} events on fake-quant's inputs)")
            if st.acc_events or not what:
                what.append(f"accumulator {lay.accumulator.overflow} at {lay.accumulator.bits} bits "
                            f"({st.acc_events} events on fake-quant's inputs)")
            reasons.append(" + ".join(what))
            iso_diff = d
            if d == 0:
                return reasons[0]
    r = lay.requant
    if r is not None:
        fqr = mirror_rounding(fq_rounding, r.rounding)
        ref = ops.Requant(mode="float32", rounding=fqr)
        if spec.mac:
            y, _ = _isolated(qg, lay, codes, requant=ref,
                          accumulator=ops.Accumulator(bits=None, overflow="wrap", rows=None, partial_bits=None))
            d = int(np.max(np.abs(y - codes[lay.output]))) if y.size else 0
        else:
            y, _ = _isolated(qg, lay, codes, requant=ref)
            d = int(np.max(np.abs(y - codes[lay.output]))) if y.size else 0
        if d < iso_diff or not reasons:
            if r.mode == "fixed":
                reasons.append(f"fixed-point requant ({r.fixed_rounding} rounding, {r.multiplier_bits}-bit multiplier)")
            elif r.mode == "pow2" and r.rounding != fqr:
                reasons.append(f"shift requant rounding {r.rounding} (fake-quant rounds {fqr})")
            elif r.rounding != fqr:
                reasons.append(f"requant rounding {r.rounding} (fake-quant rounds {fqr})")
            else:
                reasons.append("float32 rounding of acc·M near a tie (≤ 1 LSB)")
    return "; ".join(reasons) if reasons else "unexplained"


def compare(ctx, qg: QuantizedGraph, batch_size: int = 256, impl: str = "fast",
            fq_rounding: str = "half_even") -> CompareResult:
    """Run float, fake-quant and simulator on ``ctx``'s test images and diff them per layer.

    ``fq_rounding``: the mirror rounds half_even like QAT's fake-quant ops (default), or
    "profile": with the hardware's own rounding mode (what a tie-aware QAT would simulate).
    """
    mirror_rounding(fq_rounding, "half_even")  # validates
    if qg.weight_only:
        raise HwsimError(f"profile {qg.profile.name!r} is weight-only: fake-quant and simulator compute the same float32 math")
    mirror_codes = _mirror()
    x, y = ctx.x_test, ctx.y_test
    grids = qg.grids
    compared = [lay for lay in qg.layers if ops.get(lay.op).compared]
    acc_lsb = {lay.name: [0, 0.0, 0, 0] for lay in compared}  # max, sum|d|, ndiff, n
    sq = {lay.name: np.zeros(5) for lay in compared}  # Σfq², Σ(fq−sim)², Σfl², Σ(fq−fl)², Σ(sim−fl)²
    iso = {lay.name: 0 for lay in compared}
    causes: dict[str, str] = {}
    fq_logits, sim_logits = [], []
    stats = _new_stats(qg)
    fg = _float_graph_for(qg)
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size]
        logits_fq, codes = mirror_codes(qg, xb, rounding=fq_rounding)
        env = {qg.input_name: grids[qg.input_name].quantize(xb)}
        for lay, st in zip(qg.layers, stats):
            run_layer(qg, lay, env, st, impl, offset=i)
        floats = run_float(fg, xb, return_all=True)
        fq_logits.append(logits_fq)
        sim_logits.append(_logits(qg, env, impl).reshape(len(xb), -1))  # issue 17: a float-output last layer
        for lay in compared:
            a, b = codes[lay.output].reshape(len(xb), -1), env[lay.output].reshape(len(xb), -1)
            d = np.abs(a - b)
            m = acc_lsb[lay.name]
            m[0] = max(m[0], int(d.max()) if d.size else 0)
            m[1] += float(d.sum())
            m[2] += int(np.count_nonzero(d))
            m[3] += d.size
            g = grids[lay.output]
            fqv, simv = (a - g.zero_point) * g.scale, (b - g.zero_point) * g.scale
            flv = floats[lay.output].reshape(len(xb), -1).astype(np.float64)
            sq[lay.name] += [np.sum(fqv ** 2), np.sum((fqv - simv) ** 2), np.sum(flv ** 2),
                             np.sum((fqv - flv) ** 2), np.sum((simv - flv) ** 2)]
            if d.size and d.max() > 0:
                yi, ist = _isolated(qg, lay, codes, impl)
                di = int(np.max(np.abs(yi - codes[lay.output])))
                if lay.name not in causes or di > iso[lay.name]:
                    iso[lay.name] = max(iso[lay.name], di)
                    causes[lay.name] = _cause(qg, lay, codes, di, ist, fq_rounding)
    stat_by = {s.name: s for s in stats}
    layers = []
    first = causal = None
    for lay in compared:
        m, s, st = acc_lsb[lay.name], sq[lay.name], stat_by[lay.name]
        ld = LayerDiff(lay.name, lay.op, lay.kind,
                       sqnr_fq_vs_sim=_ratio_db(s[0], s[1]), sqnr_fq_vs_float=_ratio_db(s[2], s[3]),
                       sqnr_sim_vs_float=_ratio_db(s[2], s[4]), max_lsb=m[0], mean_lsb=m[1] / m[3] if m[3] else 0.0,
                       frac_diff=m[2] / m[3] if m[3] else 0.0, overflow_events=st.overflow_events,
                       acc_events=st.acc_events, partial_events=st.partial_events, clip_rate=st.clip_rate,
                       isolated_max_lsb=iso[lay.name] if m[0] else 0, cause=causes.get(lay.name, "") if m[0] else "")
        layers.append(ld)
        if first is None and ld.max_lsb > 1:
            first = lay.name
        if causal is None and ld.isolated_max_lsb > 1:
            causal = lay.name
    fq = np.concatenate(fq_logits)
    sim = np.concatenate(sim_logits)
    return CompareResult(qg.profile.name, ctx.model_name, ctx.data_spec, len(y), ctx.float_accuracy,
                         accuracy(fq, y), accuracy(sim, y),
                         float(np.mean(np.argmax(fq, 1) == np.argmax(sim, 1))) if len(y) else 0.0, first, layers,
                         causal, fq_rounding, qg.recipe)


def _ratio_db(num: float, den: float) -> float:
    """SQNR in dB from Σ signal² and Σ noise²; inf when the noise is zero."""
    if den == 0:
        return float("inf")
    if num == 0:
        return float("-inf")
    return float(10 * np.log10(num / den))


def _float_graph_for(qg: QuantizedGraph):
    from hwsim.compile import _float_graph

    return _float_graph(qg.model)
