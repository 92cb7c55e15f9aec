"""Library functions behind the CLI: run one profile, sweep many, inspect a model.

Each returns a plain result object (data first); :mod:`hwsim.report` renders it as a table,
JSON, CSV or a plot, so the numbers in every format come from the same object.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Callable

import numpy as np

from hwsim.compile import QuantizedGraph, compile_model
from hwsim.data import Dataset, LazyImages, balanced_prefix, calibration_subset, load_dataset
from hwsim.errors import HwsimError
from hwsim.execute import accuracy, max_defined, min_defined
from hwsim.floatref import normalize, run_float
from hwsim.graph import Graph, infer_shapes, load_model
from hwsim.profile import Profile, builtin_names, load_profile, requant_summary
from hwsim.ptq import Recipe, load_recipe

DEFAULT_MODEL = "smallcnn_robust"


def bundled_models() -> list[str]:
    files = resources.files("hwsim") / "models"
    return sorted(p.name[:-6] for p in files.iterdir() if p.name.endswith(".hwsim"))


FOREIGN = (".onnx", ".tflite", ".pt2")  # model files imported on the fly (hwsim.importers.model_format)


def resolve_model(spec: str | None) -> tuple[Graph, str]:
    """A bundled model name (``smallcnn_robust``), a path to a ``.hwsim`` file, or a foreign model file
    (``.onnx``, ``.tflite``, ``.pt2``, recognised by suffix or magic bytes: imported on the fly with the default input
    normalisation, pixels in [0, 1] with mean 0 and std 1; ``hwsim import`` records another; docs/import.md)."""
    from hwsim.importers import import_model, model_format

    spec = spec or DEFAULT_MODEL
    names = bundled_models()
    if spec in names:
        ref = resources.files("hwsim") / "models" / f"{spec}.hwsim"
        with resources.as_file(ref) as path:
            return load_model(path), spec
    p = Path(spec)
    if p.is_file():
        fmt = model_format(p)
    elif p.suffix.lower() in (".hwsim",) + FOREIGN or p.exists():
        fmt = p.suffix.lower()[1:] if p.suffix.lower() in FOREIGN else "hwsim"  # the loader names what is wrong
    else:
        raise HwsimError(f"unknown model {spec!r}: give a .hwsim, .onnx, .tflite or .pt2 path or a bundled model "
                         f"({', '.join(names) or 'none'})")
    if fmt in ("onnx", "tflite", "pt2"):
        return import_model(p), spec
    return load_model(spec), spec


def _json_metadata(graph: Graph) -> dict:
    """The model's metadata as JSON data (an imported model's given quantization as its summary)."""
    from hwsim.given import Given

    return {k: (v.summary() if isinstance(v, Given) else v) for k, v in graph.metadata.items()}


def default_profile(graph: Graph, fallback: str) -> str:
    """The profile a command uses without -p: an imported int8 model's engine profile (hwsim.given), else ``fallback``."""
    from hwsim.given import given_of

    g = given_of(graph)
    return g.profile if g is not None else fallback


@dataclass
class Context:
    """A loaded model + dataset, with the float baseline computed once (sweeps reuse it)."""

    graph: Graph
    model_name: str
    data: Dataset
    data_spec: str
    x_test: np.ndarray  # normalised
    y_test: np.ndarray
    float_logits: np.ndarray | None  # None: not computed here (a sweep runs it as per-shard tasks)
    float_accuracy: float | None


def check_shapes(graph: Graph, ds: Dataset, model_name: str, data_spec: str) -> None:
    want = tuple(graph.inputs[0].shape)
    got = tuple(ds.x_test.shape[1:])
    if want != got:
        raise HwsimError(f"model {model_name!r} expects inputs of shape {want} but data {data_spec!r} has {got}")
    out_shape = infer_shapes(graph)[graph.outputs[0]]
    n_out = int(np.prod(out_shape))
    if n_out < ds.num_classes:
        raise HwsimError(f"model {model_name!r} has {n_out} outputs but data {data_spec!r} has {ds.num_classes} classes")


def float_logits(graph: Graph, x, batch_size: int, name: str, data: str) -> np.ndarray:
    """The float model's logits on normalised images ``x`` (an array or a streamed source), ``batch_size``
    at a time (a sweep's float shard tasks batch the same way, so their logits are these, bit for bit)."""
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow is reported below, as one line
        fl = [run_float(graph, np.asarray(x[i:i + batch_size])) for i in range(0, len(x), batch_size)]
    fl = np.concatenate(fl) if fl else np.zeros((0, 0), np.float32)
    if not np.isfinite(fl).all():  # finite weights can still overflow float32 on real data
        raise HwsimError(f"model {name!r}: the float model's outputs overflow float32 (inf/nan) on data {data!r}; "
                         "its weights or BatchNorm statistics are out of range")
    return fl


def load_context(model: str | None = None, data: str = "default", limit: int | None = None,
                 batch_size: int = 256, stream: bool = False, float_baseline: bool = True) -> Context:
    """Model + data + the float baseline. ``stream``: a ``.npz`` or ``npy:DIR`` data set stays on disk
    and ``x_test`` reads a batch at a time (:class:`hwsim.data.LazyImages`, normalised on read).
    ``float_baseline=False`` leaves the float logits to the caller (:func:`hwsim.scaleout.run_sweep`
    runs them as one task per data shard)."""
    graph, name = resolve_model(model)
    ds = load_dataset(data, stream=stream)
    check_shapes(graph, ds, name, data)
    x, y = ds.x_test, ds.y_test
    if limit is not None:
        if limit < 1:
            raise HwsimError(f"--limit {limit}: must be a positive number of images")
        idx = balanced_prefix(y, limit)  # every class in proportion, not the first classes' images
        x, y = (x.take_rows(idx) if isinstance(x, LazyImages) else x[idx]), y[idx]
    xn = x.normalized(graph.inputs[0]) if isinstance(x, LazyImages) else normalize(graph, x)
    if not float_baseline:
        return Context(graph, name, ds, data, xn, y, None, None)
    fl = float_logits(graph, xn, batch_size, name, data)
    return Context(graph, name, ds, data, xn, y, fl, accuracy(fl, y))


@dataclass
class RunResult:
    profile: str
    description: str
    model: str
    data: str
    images: int
    float_accuracy: float
    sim_accuracy: float
    weight_only: bool
    seconds: float
    compile_seconds: float
    images_per_s: float
    agreement: float  # fraction of predictions equal to the float model's
    layers: list[dict] = field(default_factory=list)
    dead_channels: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    settings: dict = field(default_factory=dict)
    fakequant_accuracy: float | None = None  # with sweep --compare
    recipe: str = "profile"  # the PTQ recipe (hwsim.ptq): how the parameters were chosen
    cost: dict | None = None  # hardware cost of the compiled graph (hwsim.cost.graph_cost)

    @property
    def overflow_events(self) -> int:
        return sum(lay["overflow_events"] for lay in self.layers)

    def to_json(self) -> dict:
        return {"profile": self.profile, "recipe": self.recipe, "description": self.description, "model": self.model,
                "data": self.data, "images": self.images, "float_accuracy": self.float_accuracy,
                "sim_accuracy": self.sim_accuracy, "weight_only": self.weight_only,
                "mode": "weight-only" if self.weight_only else "integer",
                "seconds": self.seconds, "compile_seconds": self.compile_seconds,
                "images_per_s": self.images_per_s, "agreement_with_float": self.agreement,
                "overflow_events": self.overflow_events, "settings": self.settings,
                "fakequant_accuracy": self.fakequant_accuracy, "cost": self.cost,
                "layers": self.layers, "dead_channels": self.dead_channels, "notes": self.notes}


def calibration_images(ctx: Context, profile: Profile, recipe=None) -> np.ndarray:
    """The normalised calibration images of ``profile`` under a PTQ ``recipe``: the profile's small seeded
    subset of the training split (LAPQ: its 512 images), read alone even from a streamed data set."""
    rec = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    n = rec.calibration_count(profile.calibration.images)
    return normalize(ctx.graph, calibration_subset(ctx.data, n, profile.calibration.seed))


def compile_for(ctx: Context, profile: Profile, recipe=None, progress: Callable | None = None) -> QuantizedGraph:
    """Compile ``ctx.graph`` for ``profile`` with a PTQ ``recipe`` (name, .toml path, Recipe or None =
    the profile's own range keys) on the profile's calibration subset (LAPQ: its 512 images)."""
    rec = load_recipe(recipe)
    return compile_model(ctx.graph, profile, calibration_images(ctx, profile, rec),
                         recipe=None if rec.is_profile else rec, progress=progress)


def run_profile(ctx: Context, profile: Profile, batch_size: int = 256, progress: Callable | None = None,
                settings: dict | None = None, with_fakequant: bool = False, recipe=None,
                ptq_progress: Callable | None = None) -> RunResult:
    """Compile ``ctx.graph`` for ``profile`` (with a PTQ ``recipe``), run the test images in integers,
    gather stats. ``ptq_progress(stage, step, total, value)`` reports the recipe's long steps.

    One entry of a sweep run as its compile task and one run task over every image, merged
    (:mod:`hwsim.scaleout`): the numbers a sharded sweep merges are the numbers computed here.
    """
    from hwsim import scaleout

    rec = load_recipe(recipe)
    qg, static, csec = scaleout.compile_task(ctx.graph, profile, rec, calibration_images(ctx, profile, rec),
                                             progress=ptq_progress)
    counts = scaleout.run_task(qg, ctx.x_test, ctx.y_test, np.argmax(ctx.float_logits, axis=1), 0, batch_size,
                               with_fakequant, progress=progress)
    return scaleout.merge(static, [counts], csec, model=ctx.model_name, data=ctx.data_spec,
                          float_accuracy=ctx.float_accuracy, settings=dict(settings or {}))


def parse_vary(items: tuple[str, ...] | list[str]) -> list[dict[str, str]]:
    """``["accumulator.bits=16,24,32", "weights.step_scale=0.8,1"]`` -> the grid of settings dicts."""
    axes = []
    for item in items:
        if "=" not in item:
            raise HwsimError(f"--vary {item!r}: expected KEY=V1,V2,... e.g. accumulator.bits=16,24,32")
        k, vs = item.split("=", 1)
        values = [v.strip() for v in vs.split(",") if v.strip()]
        if not values:
            raise HwsimError(f"--vary {item!r}: no values given")
        axes.append([(k.strip(), v) for v in values])
    return [dict(combo) for combo in itertools.product(*axes)] if axes else [{}]


PTQ_AXIS = "ptq"  # --vary ptq=minmax,aciq,lapq: the recipe axis of a sweep (not a profile key)


def plan_sweep(profiles: list[str], all_profiles: bool, vary: list[str], base_settings: dict,
               recipe=None) -> list[tuple[Profile, dict, Recipe]]:
    """Validate every (profile, settings, recipe) combination up front: nothing runs if one is bad.

    ``vary`` may hold ``ptq=R1,R2,...`` (recipes, crossed with the profile grid; the settings dict
    then names the recipe under "ptq"); ``recipe`` is the recipe otherwise (None: the profile's own).
    """
    names = builtin_names() if all_profiles else list(profiles)
    if not names:
        raise HwsimError("sweep: give --profile NAME (repeatable) or --all")
    ptq_items = [v for v in vary if v.split("=", 1)[0].strip() == PTQ_AXIS]
    prof_items = [v for v in vary if v not in ptq_items]
    recipes: list[tuple[Recipe, dict]] = [(load_recipe(recipe), {})]
    if ptq_items:
        if len(ptq_items) > 1 or recipe is not None:
            raise HwsimError(f"sweep: give the PTQ recipe once (--ptq or one --vary {PTQ_AXIS}=...)")
        recipes = [(load_recipe(c[PTQ_AXIS]), c) for c in parse_vary(ptq_items)]
    plan = []
    for name in names:
        for combo in parse_vary(prof_items):
            settings = {**base_settings, **combo}
            prof = load_profile(name, settings)
            for rec, rc in recipes:
                plan.append((prof, {**combo, **rc}, rec))
    return plan


def sweep(ctx: Context, plan: list[tuple], batch_size: int = 256,
          on_result: Callable | None = None, with_fakequant: bool = False, **scale) -> list[RunResult]:
    """Run a plan of (profile, settings[, recipe]) entries (from :func:`plan_sweep`); results in plan order.

    ``scale``: :func:`hwsim.scaleout.run_sweep`'s options (``executor``, ``shard_size``, ``work_dir``,
    ``on_progress``); by default every entry runs here, one after the other.
    """
    from hwsim.scaleout import run_sweep

    return run_sweep(ctx, plan, batch_size, with_fakequant=with_fakequant, on_result=on_result, **scale).results


@dataclass
class InspectResult:
    model: str
    profile: str | None
    inputs: list[dict]
    nodes: list[dict]
    outputs: list[str]
    metadata: dict
    dead_channels: list[dict] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"model": self.model, "profile": self.profile, "inputs": self.inputs, "nodes": self.nodes,
                "outputs": self.outputs, "metadata": self.metadata, "dead_channels": self.dead_channels}


def weight_stats(w: np.ndarray) -> dict:
    """Per-tensor statistics: kurtosis (KURE eq. 5) and a symmetry score."""
    v = w.astype(np.float64).ravel()
    mu, sd = v.mean(), v.std()
    kurt = float(np.mean(((v - mu) / sd) ** 4)) if sd > 0 else float("nan")
    # symmetry: 1 - |max + min| / (max - min), per output channel, averaged (1 = symmetric range)
    rows = w.reshape(w.shape[0], -1).astype(np.float64)
    span = rows.max(1) - rows.min(1)
    sym = np.where(span > 0, 1 - np.abs(rows.max(1) + rows.min(1)) / np.where(span > 0, span, 1), 1.0)
    return {"params": int(v.size), "min": float(v.min()), "max": float(v.max()), "std": float(sd),
            "kurtosis": kurt, "symmetry": float(sym.mean())}


def layer_arithmetic(lay) -> str:
    """What one compiled layer executes, in a few words (per-layer overrides included): the accumulator
    and requantization of a MAC layer, the engine form an op's hook chose (tables, mul, mean, pools), the
    add form."""
    parts = []
    acc = lay.accumulator
    if acc is not None:
        a = "exact" if acc.bits is None else f"{acc.bits}b {acc.overflow}"
        if getattr(acc, "partial_bits", None) is not None:
            a += f", {acc.partial_bits}b psum/{acc.rows}"
        elif getattr(acc, "rows", None) is not None:
            a += f"/{acc.rows}"
        parts.append(f"acc {a}")
    if lay.requant is not None and (acc is not None or lay.op == "add"):
        parts.append(requant_summary(lay.requant) + (f" {lay.requant.add_form}" if lay.op == "add"
                                                     and lay.requant.mode != "fixed" else ""))
    if lay.form is not None:
        parts.append(lay.form)
    return ", ".join(parts)


def inspect_model(model: str | None, profile: Profile | None = None, data: str = "default") -> InspectResult:
    graph, name = resolve_model(model)
    shapes = infer_shapes(graph)
    nodes = []
    qg = None
    if profile is not None:
        ctx_ds = load_dataset(data)
        check_shapes(graph, ctx_ds, name, data)
        calib = normalize(graph, calibration_subset(ctx_ds, profile.calibration.images, profile.calibration.seed))
        qg = compile_model(graph, profile, calib)
    qlayers = {lay.name: lay for lay in qg.layers} if qg else {}
    for n in graph.nodes:
        d = {"name": n.name, "op": n.op, "inputs": n.inputs, "shape": list(shapes[n.outputs[0]])}
        w = graph.param(n, "weight")
        if n.op in ("conv2d", "linear") and w is not None:
            d["weight_shape"] = list(w.shape)
            d.update(weight_stats(w))
        lay = qlayers.get(n.name)
        if lay is not None:
            d["arithmetic"] = layer_arithmetic(lay)
        if lay is not None and lay.certificate is not None:
            c = lay.certificate
            d["headroom_bits"] = min_defined(c.headroom_bits)
            d["min_acc_bits"] = max_defined(c.min_acc_bits)
            d["min_partial_bits"] = max_defined(getattr(c, "min_partial_bits", None))
            d["partial_headroom_bits"] = min_defined(c.partial_headroom_bits)
            d["acc_bits"], d["partial_bits"], d["rows"] = c.acc_bits, c.partial_bits, c.rows
            d["certified"] = bool(np.all(c.certified))
            d["folded_weight_kurtosis"] = weight_stats(lay.w_float)["kurtosis"]
        nodes.append(d)
    return InspectResult(name, profile.name if profile else None,
                         [{"name": i.name, "shape": list(i.shape), "mean": list(i.mean), "std": list(i.std)} for i in graph.inputs],
                         nodes, list(graph.outputs), _json_metadata(graph), qg.dead_channels if qg else [])

