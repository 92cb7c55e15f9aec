"""Cells: trainings and evaluations keyed by a hash of their full configuration, stored atomically.

A training cell is ``<cache>/<KEY>.pt`` (the frontend's checkpoint, written after every epoch, so an
interrupted training resumes), ``<KEY>.hwsim`` (the exported model; ``<KEY>-latent.hwsim`` for a QAT
model's latent weights) and ``<KEY>.json`` (written last: the cell is done when it exists). The key
hashes every input of the training (architecture, data, epochs, seed, every regularizer/QAT option,
the hyper-parameters and the torch version), so a changed configuration is a different key — never
a stale hit — and studies that train the same model share it.

An evaluation cell is ``<out>/cells/<KEY>.json`` with its integer results (correct, total, overflow
events, BOPs); its key hashes the model's training key and export, the profile with its settings,
the recipe (all of its fields), the data and the number of test images.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from hwsim.errors import HwsimError
from hwsim.safeio import atomic_write, load_json

CELL_FORMAT = 1  # bump when a cell's meaning changes: every key changes with it


def config_key(config: dict) -> str:
    """A stable 16-hex-digit key of a JSON-able config (sorted keys, no whitespace)."""
    blob = json.dumps({"format": CELL_FORMAT, **config}, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def read_cell(path: Path) -> dict | None:
    """A finished cell's JSON, or None if it is not there yet."""
    if not path.exists():
        return None
    return load_json(path.read_bytes(), str(path))


def write_cell(path: Path, doc: dict) -> None:
    atomic_write(path, json.dumps(doc, indent=1, sort_keys=True) + "\n")


def train_config(arch: str, data: str, epochs: int, seed: int, options: dict, subset: int | None) -> dict:
    """The full configuration a training cell is keyed by."""
    import torch

    from hwsim.studies.spec import TRAIN_DEFAULTS

    return {"kind": "train", "arch": arch, "data": data, "epochs": int(epochs), "seed": int(seed),
            "options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in sorted(options.items())},
            "subset": subset, **TRAIN_DEFAULTS, "threads": 1, "torch": torch.__version__}


def _train_kwargs(options: dict) -> dict:
    """Variant options -> frontends.pytorch.train.train keywords (QAT through the CLI's own qat_spec)."""
    from frontends.pytorch.cli_impl import qat_spec

    kw = {k: v for k, v in options.items() if k != "qat"}
    if "noise" in kw:
        kw["noise"] = tuple(kw["noise"])
    if "qat" in options:
        kw.update(qat_spec(options["qat"]))
    return kw


def ensure_trained(cache: Path, cfg: dict, exports: tuple[str, ...] = ("quantized",)) -> tuple[dict, bool]:
    """Train (or resume, or reuse) the model ``cfg`` describes; export it. -> (cell doc, trained now?)."""
    try:
        from frontends.pytorch.export import export_checkpoint
        from frontends.pytorch.train import train
    except ImportError:
        raise HwsimError("hwsim study trains models: PyTorch is required: pip install 'hwsim[torch]'") from None
    from hwsim.studies.spec import TRAIN_DEFAULTS

    key = config_key(cfg)
    done = cache / f"{key}.json"
    doc = read_cell(done)
    ckpt = cache / f"{key}.pt"
    ran = False
    if doc is None:
        t0, c0 = time.perf_counter(), time.process_time()
        resume = None
        if ckpt.exists():  # an interrupted training: continue it (the frontend checks the config)
            from frontends.pytorch.train import load_checkpoint

            resume = str(ckpt) if int(load_checkpoint(str(ckpt))["epoch"]) < cfg["epochs"] else None
        r = None
        if resume is not None or not ckpt.exists():
            r = train(cfg["arch"], cfg["data"], cfg["epochs"], TRAIN_DEFAULTS["lr"], TRAIN_DEFAULTS["batch_size"],
                      cfg["seed"], optimizer=TRAIN_DEFAULTS["optimizer"], weight_decay=TRAIN_DEFAULTS["weight_decay"],
                      out=str(ckpt), resume=resume, threads=1, quiet=True, subset=cfg["subset"],
                      **_train_kwargs(cfg["options"]))
        from frontends.pytorch.train import load_checkpoint

        ck = load_checkpoint(str(ckpt))
        doc = {"key": key, "config": cfg, "test_acc": [float(a) for a in ck["history"]["test_acc"]],
               "seconds": round(time.perf_counter() - t0, 2), "cpu_seconds": round(time.process_time() - c0, 2),
               "exports": {}}  # seconds: wall and this process's CPU (timing only, not in the key)
        ran = r is not None
    missing = [e for e in exports if e not in doc.get("exports", {})]
    for e in missing:
        path = cache / (f"{key}.hwsim" if e == "quantized" else f"{key}-{e}.hwsim")
        export_checkpoint(str(ckpt), str(path), qat_weights=e)
        doc.setdefault("exports", {})[e] = path.name
    if missing or ran or not done.exists():
        write_cell(done, doc)
    return doc, ran


def eval_config(train_key: str, export: str, column, recipe_json: dict, data: str, limit: int | None) -> dict:
    return {"kind": "eval", "train": train_key, "export": export, "profile": column.profile,
            "settings": dict(sorted(column.settings.items())), "recipe": recipe_json, "data": data, "limit": limit}
