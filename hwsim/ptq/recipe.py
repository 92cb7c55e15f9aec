"""PTQ recipes: how the quantization parameters are chosen under a profile's constraints.

A recipe is a built-in name (``minmax``, ``aciq``, ``lapq``, ``wp``, ...), optionally with
``+`` options (``aciq+bc``, ``mse+cle+bc_analytic``), or a small TOML file (``method`` = a
built-in name, plus options). docs/ptq.md is the one place they are documented.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from hwsim.errors import HwsimError
from hwsim.ptq.ranges import ACTIVATION_METHODS, WEIGHT_METHODS

BIAS_CORRECTIONS = ("empirical", "analytic", "banner")
WEIGHT_ROUNDINGS = ("nearest", "adaround", "adaquant", "adaround_if_torch")
LAPQ_LOSSES = ("simulator", "mirror")
LAPQ_P_GRID = (2.0, 2.5, 3.0, 3.5, 4.0)  # LAPQ §3.2: p from 2 to 4 in 0.5 steps


@dataclass(frozen=True)
class LapqOptions:
    loss: str = "simulator"  # "simulator" (bit-accurate, the default: 161 s on mobilenetv2) | "mirror" (fake-quant, needs torch)
    p_grid: tuple = LAPQ_P_GRID
    maxfev: int = 300  # Powell's function-evaluation budget (the 5-minute bound on 2 cores)
    images: int = 512  # calibration images of the loss (LAPQ §5)
    xtol: float = 0.05  # Powell's line-search tolerance on the log range multipliers (5% of a range)
    budget_s: float | None = None  # stop Powell after this many seconds (best point kept; not reproducible)


@dataclass(frozen=True)
class Recipe:
    """One PTQ recipe; ``name`` is shown in every result."""

    name: str = "profile"
    method: str = "profile"
    weights: str = "profile"  # range method of weights, or "profile" (the profile's weights.range)
    activations: str = "profile"
    p: float = 3.0  # the Lp norm of range method "lp"
    percentile: float = 99.99
    aciq_dist: str = "auto"  # auto (per tensor by kurtosis) | laplace | gauss
    bn_alpha: float = 6.0  # WP eq. 18-19
    last_layer: str | None = None  # "cross_entropy": WP eq. 17 for the logits' grid
    cle: bool = False
    cle_relu6: str = "skip"  # skip (exact) | relu (DFQ: replace ReLU6 by ReLU in equalized pairs)
    bias_absorption: bool = False
    bias_correction: str | None = None  # empirical (WP eq. 27) | analytic (eq. 28) | banner
    weight_rounding: str = "nearest"  # nearest | adaround | adaquant | adaround_if_torch (wp)
    lapq: LapqOptions | None = None
    adaround: dict = field(default_factory=dict)  # options passed to the frontend (iters, ...)
    calibration_images: int | None = None  # None: the profile's calibration.images

    @property
    def is_profile(self) -> bool:
        return self == PROFILE

    def calibration_count(self, profile_images: int) -> int:
        """Calibration images this recipe uses: its own count, LAPQ's loss set, else the profile's."""
        if self.calibration_images is not None:
            return self.calibration_images
        if self.lapq is not None:
            return max(self.lapq.images, profile_images)
        return profile_images

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        if self.lapq is not None:
            d["lapq"]["p_grid"] = list(self.lapq.p_grid)
        return json.loads(json.dumps(d))


PROFILE = Recipe()

_BUILTINS: dict[str, dict] = {
    "profile": {},
    "minmax": {"weights": "minmax", "activations": "minmax"},
    "mse": {"weights": "mse", "activations": "mse"},
    "percentile": {"weights": "percentile", "activations": "percentile"},
    "aciq": {"weights": "aciq", "activations": "aciq"},
    "lp": {"weights": "lp", "activations": "lp"},
    "bn": {"weights": "mse", "activations": "bn"},
    "lapq": {"weights": "lp", "activations": "lp", "lapq": LapqOptions()},
    # WP §4.1 / Fig. 8: CLE (+ bias absorption), MSE weight ranges, AdaRound when torch and the
    # frontend are present (else bias correction), MSE activation ranges
    "wp": {"weights": "mse", "activations": "mse", "cle": True, "bias_absorption": True,
           "weight_rounding": "adaround_if_torch", "bias_correction": "empirical"},
    "adaround": {"weights": "mse", "activations": "mse", "weight_rounding": "adaround"},
    "adaquant": {"weights": "mse", "activations": "mse", "weight_rounding": "adaquant"},
}
_SUFFIXES: dict[str, dict] = {
    "bc": {"bias_correction": "empirical"},
    "bc_empirical": {"bias_correction": "empirical"},
    "bc_analytic": {"bias_correction": "analytic"},
    "bc_banner": {"bias_correction": "banner"},
    "cle": {"cle": True},
    "cle_relu": {"cle": True, "cle_relu6": "relu"},
    "ba": {"bias_absorption": True},
    "ce": {"last_layer": "cross_entropy"},
}


def builtin_recipes() -> list[str]:
    return list(_BUILTINS)


def _make(name: str, method: str, opts: dict, where: str) -> Recipe:
    r = Recipe(name=name, method=method, **{**_BUILTINS[method], **opts})
    _validate(r, where)
    return r


def load_recipe(spec: "str | Recipe | None") -> Recipe:
    """A built-in name (``lapq``), with ``+`` options (``aciq+bc``), or a .toml path; None -> "profile"."""
    if spec is None:
        return PROFILE
    if isinstance(spec, Recipe):
        return spec
    spec = str(spec).strip()
    if spec.endswith(".toml") or Path(spec).is_file():
        return _load_toml(spec)
    base, *opts = spec.split("+")
    if base not in _BUILTINS:
        raise HwsimError(f"--ptq {spec!r}: unknown recipe {base!r}; allowed: {', '.join(_BUILTINS)} "
                         "(optionally +" + ", +".join(_SUFFIXES) + "), or a .toml file (docs/ptq.md)")
    merged: dict = {}
    for o in opts:
        if o not in _SUFFIXES:
            raise HwsimError(f"--ptq {spec!r}: unknown option '+{o}'; allowed: +" + ", +".join(_SUFFIXES))
        merged.update(_SUFFIXES[o])
    return _make(spec, base, merged, f"--ptq {spec!r}")


_TOML_KEYS = {"name", "method", "p", "percentile", "aciq_dist", "bn_alpha", "last_layer", "cle", "cle_relu6",
              "bias_absorption", "bias_correction", "weight_rounding", "calibration_images", "weights",
              "activations", "lapq", "adaround"}
_LAPQ_KEYS = {"loss", "p_grid", "maxfev", "images", "xtol", "budget_s"}


def _load_toml(path: str) -> Recipe:
    p = Path(path)
    if not p.is_file():
        raise HwsimError(f"recipe file {path}: not found")
    try:
        d = tomllib.loads(p.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise HwsimError(f"recipe file {path}: not valid TOML ({e})") from None
    for k in d:
        if k not in _TOML_KEYS:
            raise HwsimError(f"recipe file {path}: unknown key {k!r}; allowed: {', '.join(sorted(_TOML_KEYS))}")
    method = d.get("method")
    if method not in _BUILTINS:
        raise HwsimError(f"recipe file {path}: key 'method' = {method!r}; allowed: {', '.join(_BUILTINS)}")
    opts: dict = {}
    for k, v in d.items():
        if k in ("name", "method"):
            continue
        if k in ("weights", "activations"):
            if not isinstance(v, dict) or set(v) - {"range"}:
                raise HwsimError(f"recipe file {path}: key {k!r} must be a table with key 'range' (got {v!r})")
            opts[k] = v.get("range", "profile")
        elif k == "lapq":
            if not isinstance(v, dict) or set(v) - _LAPQ_KEYS:
                raise HwsimError(f"recipe file {path}: key 'lapq' = {v!r}: a table with keys {', '.join(sorted(_LAPQ_KEYS))}")
            if "p_grid" in v:
                v = {**v, "p_grid": tuple(float(x) for x in v["p_grid"])}
            opts["lapq"] = LapqOptions(**v)
        elif k == "adaround":
            if not isinstance(v, dict):
                raise HwsimError(f"recipe file {path}: key 'adaround' = {v!r}: a table of frontend options")
            opts["adaround"] = dict(v)
        else:
            opts[k] = v
    if method == "lapq" and "lapq" not in opts:
        opts["lapq"] = LapqOptions()
    return _make(str(d.get("name", p.stem)), method, opts, f"recipe file {path}")


def _validate(r: Recipe, where: str) -> None:
    def bad(key, value, allowed):
        raise HwsimError(f"{where}: key {key!r} = {value!r}; allowed: {allowed}")

    if r.weights != "profile" and r.weights not in WEIGHT_METHODS:
        bad("weights.range", r.weights, ", ".join(("profile",) + WEIGHT_METHODS))
    if r.activations != "profile" and r.activations not in ACTIVATION_METHODS:
        bad("activations.range", r.activations, ", ".join(("profile",) + ACTIVATION_METHODS))
    if not isinstance(r.p, (int, float)) or isinstance(r.p, bool) or not 1.0 <= r.p <= 8.0:
        bad("p", r.p, "a number in [1, 8]")
    if not isinstance(r.percentile, (int, float)) or not 50.0 <= r.percentile <= 100.0:
        bad("percentile", r.percentile, "a number in [50, 100]")
    if r.aciq_dist not in ("auto", "laplace", "gauss"):
        bad("aciq_dist", r.aciq_dist, "auto, laplace, gauss")
    if not isinstance(r.bn_alpha, (int, float)) or not 0 < r.bn_alpha <= 100:
        bad("bn_alpha", r.bn_alpha, "a number in (0, 100]")
    if r.last_layer not in (None, "cross_entropy"):
        bad("last_layer", r.last_layer, "cross_entropy")
    if isinstance(r.adaround, dict) and "seed" in r.adaround and not isinstance(r.adaround["seed"], int):
        bad("adaround.seed", r.adaround["seed"], "an integer")
    for k in ("cle", "bias_absorption"):
        if not isinstance(getattr(r, k), bool):
            bad(k, getattr(r, k), "true, false")
    if r.cle_relu6 not in ("skip", "relu"):
        bad("cle_relu6", r.cle_relu6, "skip, relu")
    if r.bias_correction not in (None,) + BIAS_CORRECTIONS:
        bad("bias_correction", r.bias_correction, ", ".join(BIAS_CORRECTIONS))
    if r.weight_rounding not in WEIGHT_ROUNDINGS:
        bad("weight_rounding", r.weight_rounding, ", ".join(WEIGHT_ROUNDINGS))
    if r.calibration_images is not None and (not isinstance(r.calibration_images, int) or r.calibration_images < 1):
        bad("calibration_images", r.calibration_images, "a positive integer")
    if r.lapq is not None:
        lq = r.lapq
        if lq.loss not in LAPQ_LOSSES:
            bad("lapq.loss", lq.loss, ", ".join(LAPQ_LOSSES))
        if not lq.p_grid or any(not 1.0 <= x <= 8.0 for x in lq.p_grid):
            bad("lapq.p_grid", list(lq.p_grid), "a non-empty list of numbers in [1, 8]")
        if not isinstance(lq.maxfev, int) or lq.maxfev < 0:
            bad("lapq.maxfev", lq.maxfev, "an integer >= 0")
        if not isinstance(lq.xtol, (int, float)) or not 1e-6 <= lq.xtol <= 1.0:
            bad("lapq.xtol", lq.xtol, "a number in [1e-6, 1]")
        if lq.budget_s is not None and (not isinstance(lq.budget_s, (int, float)) or lq.budget_s < 0):
            bad("lapq.budget_s", lq.budget_s, "a number of seconds >= 0")
        if not isinstance(lq.images, int) or lq.images < 1:
            bad("lapq.images", lq.images, "a positive integer")
