"""Hardware cost of a compiled graph, per MAC layer and in total (plain JSON data).

Counted per inference (one image), from the integers compile chose — not from the profile's
nominal widths, so first/last-layer bits and per-layer overrides are what is counted:

- ``macs``: multiply-accumulates, output elements × reduction length K (K = Cin/groups·kh·kw
  for conv2d, the input width for linear);
- ``bops``: weight bits × activation bits × MACs (the QONNX / HGQ "bit operations"
  convention), with the weight bits of the layer's integer weight grid and the activation bits
  of its input grid; a weight-only profile's float32 activations count as 32 bits;
- ``bops_acc``: accumulator-aware bit operations, ``bops`` plus the adder: every MAC is one
  b_w×b_a-bit multiplication (b_w·b_a BOPs) and one addition into the accumulator, counted as
  ``adder_bits`` BOPs (a b-bit ripple adder is b full adders). This is UNIQ's BOPs (Baskin et al.,
  "UNIQ: Uniform Noise Injection for Non-Uniform Quantization of Neural Networks", ACM TOCS 2021,
  arXiv:1804.10969, its complexity measure: BOPs ≈ m·n·k²·(b_a·b_w + b_a + b_w + log2(n·k²)) for a
  conv layer with n input and m output channels, whose last three terms are the width b_o = b_a + b_w + log2(n·k²) of an accumulator that
  cannot overflow), with the hardware's *configured* accumulator width in place of UNIQ's bound:
  ``adder_bits`` = ``acc_bits`` when the accumulator is bounded; UNIQ's b_w + b_a + ⌈log2 K⌉ when
  it is unbounded (an exact accumulator); 32 for a weight-only profile (a float32 addition counted
  as 32 bits, a convention like FLOAT_BITS, not an area model). With a partial-sum stage of
  ``partial_bits`` p per ``rows`` r, each MAC adds into the p-bit register and each chunk of r
  products once into the accumulator: per output K·p + ⌈K/r⌉·acc_bits adder bits. The plain
  ``bops`` (b_w·b_a per MAC: QONNX/HGQ; van Baalen et al., "Bayesian Bits", NeurIPS 2020)
  ignores the accumulator, which is what A2Q (Colbert et al., ICCV 2023) argues against: the
  accumulator is a large share of a low-precision MAC's area and energy. What the model is not: a
  gate-level area or energy model (multiplier BOPs are b_w·b_a "bit products", adder BOPs are full
  adders — equal weights by convention, as in UNIQ), and it ignores register and memory traffic;
- ``weight_memory_bits``: weights × weight bits; ``bias_memory_bits``: output channels × the
  profile's bias bits (a float32 bias, ``bias.form = float32``, counts 32);
- the accumulator the layer runs on (``acc_bits``, ``acc_overflow``, ``rows``, ``partial_bits``,
  ``partial_overflow``; ``None`` = unbounded) and the minimum widths its certificate proves
  sufficient for every input on the grid (``min_acc_bits``; ``min_partial_bits`` only where
  there is a partial-sum stage), with the
  headroom (configured − needed; negative = can overflow) and whether it is ``certified``.

Totals sum MACs, BOPs (both kinds) and memory; ``acc_bits`` is the widest accumulator of any layer (``None``
if one is unbounded), ``partial_bits`` the widest partial-sum stage (``None``: no layer has
one) and ``min_acc_bits`` the narrowest single accumulator width that would
certify every layer. Only the width of a partial-sum stage is reported for layers without a
certificate (weight-only profiles): the accumulation there is float32.
"""

from __future__ import annotations

import numpy as np

from hwsim.compile import QuantizedGraph
from hwsim.graph import infer_shapes

FLOAT_BITS = 32  # a float32 operand (weight-only activations, float bias) counts 32 bits

LAYER_KEYS = ("name", "op", "kind", "macs", "weight_bits", "act_bits", "bops", "adder_bits", "bops_acc", "weights", "weight_memory_bits",
              "bias_bits", "bias_memory_bits", "acc_bits", "acc_overflow", "rows", "partial_bits",
              "partial_overflow", "min_acc_bits", "min_partial_bits", "headroom_bits", "partial_headroom_bits",
              "certified")
TOTAL_KEYS = ("macs", "bops", "bops_acc", "weights", "weight_memory_bits", "bias_memory_bits", "memory_bits", "acc_bits",
              "min_acc_bits", "partial_bits", "min_partial_bits", "mac_layers", "certified_layers",
              "uncertified_layers")


def grid_bits(qmin: int, qmax: int) -> int:
    """Bits of an integer grid [qmin, qmax]: the smallest b with 2^b >= its number of levels.

    A narrow int8 grid [-127, 127] and a full one [-128, 127] are both 8 bits; [0, 15] is 4."""
    return max(1, (int(qmax) - int(qmin)).bit_length())


def adder_bits(acc, k: int, w_bits: int, act_bits: int, weight_only: bool) -> tuple[int, int]:
    """(the accumulator width counted per MAC, adder bits per output element) for a reduction of
    length ``k`` on accumulator ``acc`` (module docstring, ``bops_acc``)."""
    if weight_only:
        width = FLOAT_BITS
    elif acc.bits is None:  # an exact accumulator: UNIQ's b_o = b_a + b_w + log2(K)
        width = w_bits + act_bits + max(0, (k - 1).bit_length())
    else:
        width = int(acc.bits)
    if acc.partial_bits is not None and not weight_only and acc.rows:
        return width, k * int(acc.partial_bits) + -(-k // int(acc.rows)) * width
    return width, k * width


def layer_cost(qg: QuantizedGraph, lay, out_shape: tuple[int, ...]) -> dict:
    """Cost of one conv2d/linear layer of ``qg`` (keys :data:`LAYER_KEYS`, plain Python values)."""
    w = lay.w_q
    k = int(np.prod(w.shape[1:]))
    macs = int(np.prod(out_shape)) * k
    w_bits = grid_bits(lay.w_qmin, lay.w_qmax)
    act_bits = FLOAT_BITS if qg.weight_only else int(qg.grids[lay.inputs[0]].bits)
    prof = lay.profile
    bias_bits = FLOAT_BITS if prof.bias.form == "float32" else int(prof.bias.bits)
    acc = lay.accumulator
    cert = lay.certificate
    width, per_output = adder_bits(acc, k, w_bits, act_bits, qg.weight_only)
    d = {"name": lay.name, "op": lay.op, "kind": lay.kind, "macs": macs, "weight_bits": w_bits,
         "act_bits": act_bits, "bops": w_bits * act_bits * macs, "adder_bits": width,
         "bops_acc": w_bits * act_bits * macs + int(np.prod(out_shape)) * per_output, "weights": int(w.size),
         "weight_memory_bits": int(w.size) * w_bits, "bias_bits": bias_bits,
         "bias_memory_bits": int(w.shape[0]) * bias_bits,
         "acc_bits": acc.bits, "acc_overflow": acc.overflow, "rows": acc.rows,
         "partial_bits": acc.partial_bits, "partial_overflow": acc.partial_overflow if acc.partial_bits else None,
         "min_acc_bits": None, "min_partial_bits": None, "headroom_bits": None, "partial_headroom_bits": None,
         "certified": None}
    if cert is not None:
        c = cert.to_dict()
        d.update(min_acc_bits=int(c["min_acc_bits"]),
                 min_partial_bits=None if acc.partial_bits is None else int(c["min_partial_bits"]),
                 headroom_bits=c["headroom_bits"], partial_headroom_bits=c["partial_headroom_bits"],
                 certified=bool(c["certified"]))
    return d


def _max_or_none(values: list) -> int | None:
    """The largest width, or None if any is None (unbounded) or there is none."""
    return None if not values or any(v is None for v in values) else max(values)


def graph_cost(qg: QuantizedGraph) -> dict:
    """``{"layers": [per MAC layer, keys LAYER_KEYS], "totals": {keys TOTAL_KEYS}}``, JSON-ready.

    Counts are per inference (one image). See the module docstring for every field."""
    shapes = infer_shapes(qg.model)
    layers = [layer_cost(qg, lay, shapes[lay.output]) for lay in qg.mac_layers]
    certs = [x for x in layers if x["certified"] is not None]
    totals = {
        "macs": sum(x["macs"] for x in layers),
        "bops": sum(x["bops"] for x in layers),
        "bops_acc": sum(x["bops_acc"] for x in layers),
        "weights": sum(x["weights"] for x in layers),
        "weight_memory_bits": sum(x["weight_memory_bits"] for x in layers),
        "bias_memory_bits": sum(x["bias_memory_bits"] for x in layers),
        "memory_bits": sum(x["weight_memory_bits"] + x["bias_memory_bits"] for x in layers),
        "acc_bits": _max_or_none([x["acc_bits"] for x in layers]),
        "min_acc_bits": max((x["min_acc_bits"] for x in certs), default=None),
        "partial_bits": max((x["partial_bits"] for x in layers if x["partial_bits"] is not None), default=None),
        "min_partial_bits": max((x["min_partial_bits"] for x in certs if x["min_partial_bits"] is not None),
                                default=None),
        "mac_layers": len(layers),
        "certified_layers": sum(1 for x in certs if x["certified"]),
        "uncertified_layers": sum(1 for x in certs if not x["certified"]),
    }
    return {"layers": layers, "totals": totals}
