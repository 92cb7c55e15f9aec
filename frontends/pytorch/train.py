"""Training loop: SGD+momentum (or Adam) with a per-step cosine schedule, KURE/SymReg/SatNL/(A)SAM/LSQ-QAT options,
seeded and deterministic on CPU, resumable checkpoints (plain tensors/dicts, loadable with weights_only=True).
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from hwsim.errors import HwsimError

from . import data as tdata
from .lsq import FixedQuantizer, fold_batchnorm, input_quantizer, prepare_qat
from .models import build_model
from .regularizers import kure_loss, symreg_layers, symreg_loss, weight_layers
from .sam import SAM
from .satnl import apply_satnl

CKPT_FORMAT = "hwsim-torch-checkpoint-1"


@dataclass
class TrainResult:
    """Per-epoch accuracies (train: on the augmented batches seen, train mode; test: eval mode) and timing."""

    train_acc: list[float] = field(default_factory=list)
    test_acc: list[float] = field(default_factory=list)
    seconds: float = 0.0
    epochs_run: int = 0
    checkpoint: str | None = None

    @property
    def final_test_acc(self) -> float:
        return self.test_acc[-1] if self.test_acc else float("nan")


QAT_BN = ("unfolded", "fold")
QAT_INPUT = ("profile", "lsq")


def _qat_prepare(m: nn.Module, cfg: dict, input_q: nn.Module | None) -> None:
    """QAT wrappers as ``cfg`` says: bits, first/last-layer bits, the input quantizer (built by the caller)."""
    from .export import mac_module_order

    w, a = cfg["qat_bits"]
    order = mac_module_order(m)
    prepare_qat(m, int(w), int(a) if a else None, per_channel=cfg.get("per_channel", True),
                noise=tuple(cfg["noise"]) if cfg.get("noise") else None, first=order[0], last=order[-1],
                first_bits=cfg.get("qat_first_bits"), last_bits=cfg.get("qat_last_bits"), input_q=input_q)


def model_from_config(cfg: dict) -> nn.Module:
    """The (untrained) module a checkpoint's config describes: arch, then SatNL, static BN folding, QAT wrappers."""
    m = build_model(cfg["arch"], cfg["num_classes"], cfg["input_shape"][0])
    if cfg.get("satnl"):
        apply_satnl(m)
    if cfg.get("qat_bits"):
        if cfg.get("qat_bn") == "fold":
            fold_batchnorm(m)  # structure only: the values come from the checkpoint
        a = cfg["qat_bits"][1]
        _qat_prepare(m, cfg, FixedQuantizer() if (a and cfg.get("qat_input") == "profile") else None)
    return m


def load_checkpoint(path: str) -> dict:
    """torch.load(path, weights_only=True) with a format check; HwsimError if unreadable."""
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise HwsimError(f"checkpoint {path}: file not found") from None
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file
        raise HwsimError(f"checkpoint {path}: cannot be read as a weights-only torch checkpoint ({type(e).__name__})") from None
    if not isinstance(ck, dict) or ck.get("format") != CKPT_FORMAT:
        raise HwsimError(f"checkpoint {path}: not an hwsim training checkpoint (format {CKPT_FORMAT!r} expected)")
    return ck


def model_from_checkpoint(path: str) -> tuple[nn.Module, dict]:
    """(model in eval mode with the checkpoint's weights, checkpoint dict)."""
    ck = load_checkpoint(path)
    m = model_from_config(ck["config"])
    m.load_state_dict(ck["model"])
    m.eval()
    return m, ck


def _save(path: str, obj: dict) -> None:
    tmp = f"{path}.tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, mean, std, batch_size: int = 500) -> float:
    """Top-1 accuracy in eval mode on images in [0, 1]."""
    was = model.training
    model.eval()
    correct = 0
    for i in range(0, len(x), batch_size):
        logits = model(tdata.normalise(x[i:i + batch_size], mean, std))
        correct += int((logits.argmax(1) == y[i:i + batch_size]).sum())
    model.train(was)
    return correct / max(len(x), 1)


def train(arch: str = "smallcnn", data="default", epochs: int = 10, lr: float = 0.05, batch_size: int = 64,
          seed: int = 0, kure: float | None = None, kure_on_folded: bool | None = None, symreg: float | None = None,
          satnl: bool = False, sam: str | None = None, rho: float | None = None,
          qat_bits: tuple[int, int | None] | None = None, per_channel: bool = True,
          noise: tuple[float, float] | None = None, qat_first_bits: int | None = 8, qat_last_bits: int | None = 8,
          qat_input: str = "profile", qat_profile=None, qat_bn: str = "unfolded", kure_target: float = 1.8,
          symreg2: float | None = None, optimizer: str = "sgd", weight_decay: float = 5e-4,
          out: str | None = None, resume: str | None = None, init: str | None = None, threads: int = 1,
          quiet: bool = False, subset: int | None = None, stop_after: int | None = None,
          augment: bool = True) -> TrainResult:
    """Train ``arch`` on ``data`` (a hwsim.data spec or a Dataset); write a checkpoint to ``out`` after every epoch.

    kure: λ of KURE eq. 14 (None = off; target kurtosis ``kure_target``, 1.8 = uniform; folded weights
    where a BN follows unless ``kure_on_folded=False``). symreg: λ1 of SymReg eq. 10 (None = off), symreg2:
    λ2 (None = λ1). sam: None, "sam" (ρ default 0.05) or "asam" (ρ default 1.0). qat_bits: (w_bits,
    a_bits) inserts LSQ quantizers (a_bits None = weights only); the first conv/linear in execution order
    uses ``qat_first_bits`` for its weights and the last ``qat_last_bits`` for weights and input (None =
    QAT bits), as hwsim's first_layer.bits / last_layer.bits; ``qat_input`` "profile": the image is
    quantized on the grid hwsim gives the input under ``qat_profile`` (a Profile; None = the default
    profile's activation format) at the first-layer bits, fixed; "lsq": a learned LSQ step like every
    other input. qat_bn: "unfolded" (BN after the quantized conv, batch statistics in training) or
    "fold" (static folding with the ``init`` checkpoint's running statistics, WP Table 7; needs
    ``init``). noise: (c, k) noise tempering on the weights. init: a float checkpoint to start from
    (e.g. for QAT fine-tuning). resume: continue an interrupted run from its checkpoint (same config).
    subset: use the first n training images. stop_after: stop after this many epochs in total (to
    simulate an interruption; the schedule still spans ``epochs``).
    """
    if optimizer not in ("sgd", "adam"):
        raise HwsimError(f"optimizer {optimizer!r} not allowed; allowed: sgd, adam")
    if sam not in (None, "sam", "asam"):
        raise HwsimError(f"sam {sam!r} not allowed; allowed: none, sam, asam")
    if qat_bn not in QAT_BN:
        raise HwsimError(f"qat_bn {qat_bn!r} not allowed; allowed: {', '.join(QAT_BN)}")
    if qat_input not in QAT_INPUT:
        raise HwsimError(f"qat_input {qat_input!r} not allowed; allowed: {', '.join(QAT_INPUT)}")
    if qat_bits and qat_bn == "fold" and init is None and resume is None:
        raise HwsimError("static BN folding (--qat-bn fold) folds trained BN statistics: give --init CHECKPOINT")
    if qat_bits and qat_bn == "fold" and satnl:
        raise HwsimError("static BN folding (--qat-bn fold) cannot be combined with SatNL (tanh(V) has no folded form)")
    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise HwsimError(f"epochs ({epochs}), batch_size ({batch_size}) and lr ({lr}) must be positive")
    torch.set_num_threads(max(1, int(threads)))
    torch.use_deterministic_algorithms(True, warn_only=True)

    ds = tdata.load_dataset(data, seed=0) if isinstance(data, str) else data
    xtr, ytr = torch.from_numpy(ds.x_train), torch.from_numpy(ds.y_train)
    if subset is not None:
        xtr, ytr = xtr[:subset], ytr[:subset]
    xte, yte = torch.from_numpy(ds.x_test), torch.from_numpy(ds.y_test)
    mean, std = tdata.channel_stats(ds.x_train)
    pad, flip = tdata.augmentation_for(ds.name) if augment else (0, False)

    cfg = {"arch": arch, "data": data if isinstance(data, str) else ds.name, "dataset": ds.name,
           "num_classes": int(ds.num_classes), "input_shape": [int(s) for s in ds.x_train.shape[1:]],
           "epochs": int(epochs), "lr": float(lr), "batch_size": int(batch_size), "seed": int(seed),
           "kure": kure, "kure_on_folded": kure_on_folded, "symreg": symreg, "satnl": bool(satnl), "sam": sam,
           "rho": None if sam is None else float(rho if rho is not None else (1.0 if sam == "asam" else 0.05)),
           "qat_bits": list(qat_bits) if qat_bits else None, "per_channel": bool(per_channel),
           "noise": list(noise) if noise else None, "optimizer": optimizer, "weight_decay": float(weight_decay),
           "kure_target": float(kure_target), "symreg2": symreg2,
           "qat_first_bits": qat_first_bits if qat_bits else None, "qat_last_bits": qat_last_bits if qat_bits else None,
           "qat_input": qat_input if qat_bits else None, "qat_bn": qat_bn if qat_bits else None,
           "subset": subset, "augment": bool(augment), "mean": mean, "std": std}

    torch.manual_seed(seed)
    start_epoch, hist = 0, {"train_acc": [], "test_acc": []}
    ck = None
    if resume is not None:
        ck = load_checkpoint(resume)
        for k in ("arch", "epochs", "lr", "batch_size", "seed", "kure", "symreg", "satnl", "sam", "qat_bits", "noise",
                  "kure_target", "symreg2", "qat_first_bits", "qat_last_bits", "qat_input", "qat_bn"):
            if ck["config"].get(k) != cfg.get(k) and not (k == "kure_target" and ck["config"].get(k) is None):
                raise HwsimError(f"resume {resume}: config key {k!r} is {ck['config'].get(k)!r} there but {cfg.get(k)!r} here")
    model = build_model(arch, ds.num_classes, ds.x_train.shape[1])
    if init is not None:
        ick = load_checkpoint(init)
        if ick["config"].get("satnl"):
            apply_satnl(model, init_from_weights=False)
        model.load_state_dict(ick["model"])
    if satnl:
        apply_satnl(model)
    if qat_bits:
        if qat_bn == "fold":
            fold_batchnorm(model)  # WP Table 7 static folding; a resumed run overwrites the values below
        iq = None
        if qat_bits[1] and qat_input == "profile":
            from hwsim.data import calibration_subset
            from hwsim.profile import Profile

            prof = qat_profile if qat_profile is not None else Profile()
            calib = calibration_subset(ds, prof.calibration.images, prof.calibration.seed)
            iq = input_quantizer(prof.activations, qat_first_bits or int(qat_bits[1]), calib, mean, std)
        _qat_prepare(model, cfg, iq)
        with torch.no_grad():  # LSQ step initialisation on one fixed batch (Esser et al.)
            model.train()
            model(tdata.normalise(xtr[:batch_size], mean, std))
    params = list(model.parameters())
    base = (torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay) if optimizer == "sgd"
            else torch.optim.Adam(params, lr=lr, weight_decay=weight_decay))
    opt = SAM(params, base, rho=cfg["rho"], adaptive=(sam == "asam")) if sam else base
    if ck is not None:
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        torch.set_rng_state(ck["rng"])
        start_epoch, hist = int(ck["epoch"]), {k: list(v) for k, v in ck["history"].items()}

    kl = weight_layers(model) if kure else None
    sym = None if (symreg is None and symreg2 is None) else (  # SymReg eq. 10: (λ1, λ2)
        float(symreg or 0.0), float(symreg2 if symreg2 is not None else (symreg or 0.0)))
    sl = symreg_layers(model) if sym else None

    def loss_fn(xb, yb):
        logits = model(xb)
        loss = F.cross_entropy(logits, yb)
        if kure:
            loss = loss + kure * kure_loss(model, kure_target, kure_on_folded, kl)  # KURE eq. 14
        if sym:
            loss = loss + symreg_loss(model, sym[0], sym[1], layers=sl)  # SymReg eq. 10
        return loss, logits

    steps_per_epoch = math.ceil(len(xtr) / batch_size)
    total = epochs * steps_per_epoch
    res = TrainResult(train_acc=hist["train_acc"], test_acc=hist["test_acc"], checkpoint=out)
    t0 = time.perf_counter()
    last = epochs if stop_after is None else min(epochs, stop_after)
    show = not quiet and sys.stderr.isatty()
    for epoch in range(start_epoch, last):
        model.train()
        gen = torch.Generator().manual_seed(int(seed) * 7919 + epoch + 1)
        batches = tdata.epoch_batches(len(xtr), batch_size, seed, epoch)
        it = batches
        if show:
            from tqdm import tqdm
            it = tqdm(batches, desc=f"epoch {epoch + 1}/{epochs}", leave=False, file=sys.stderr)
        correct = 0
        for b, idx in enumerate(it):
            t = epoch * steps_per_epoch + b
            for g in opt.param_groups:
                g["lr"] = lr * 0.5 * (1 + math.cos(math.pi * t / total))  # cosine schedule per step
            xb = tdata.augment(xtr[idx], gen, pad, flip) if (pad or flip) else xtr[idx]
            xb, yb = tdata.normalise(xb, mean, std), ytr[idx]
            opt.zero_grad()
            loss, logits = loss_fn(xb, yb)
            loss.backward()
            if sam:
                opt.first_step()
                loss_fn(xb, yb)[0].backward()
                opt.second_step()
            else:
                opt.step()
            correct += int((logits.argmax(1) == yb).sum())
        res.train_acc.append(correct / len(xtr))
        res.test_acc.append(evaluate(model, xte, yte, mean, std))
        res.epochs_run += 1
        if not quiet:
            print(f"epoch {epoch + 1}/{epochs}: train {res.train_acc[-1]:.4f} test {res.test_acc[-1]:.4f}",
                  file=sys.stderr)
        if out is not None:
            _save(out, {"format": CKPT_FORMAT, "config": cfg, "model": model.state_dict(),
                        "optimizer": opt.state_dict(), "epoch": epoch + 1, "rng": torch.get_rng_state(),
                        "history": {"train_acc": list(res.train_acc), "test_acc": list(res.test_acc)}})
    res.seconds = time.perf_counter() - t0
    model.eval()
    res.model = model  # type: ignore[attr-defined]
    return res
