"""`hwsim train` and `hwsim export`: click options and plain entry functions. torch is imported lazily."""

from __future__ import annotations

import json

import click

from hwsim.errors import HwsimError

TORCH_MISSING = "PyTorch is required: pip install 'hwsim[torch]'"


def _need_torch() -> None:
    try:
        import torch  # noqa: F401
    except ImportError:
        raise HwsimError(TORCH_MISSING) from None


def _pair(text: str | None, what: str, kinds=(int, int)):
    if text is None:
        return None
    parts = text.split(",")
    try:
        if len(parts) != 2:
            raise ValueError
        return tuple(k(p) if p.strip().lower() not in ("", "none", "float") else None for k, p in zip(kinds, parts))
    except ValueError:
        raise HwsimError(f"{what} {text!r} must be two comma-separated numbers, e.g. 4,4") from None


NT_DEFAULTS = (0.3, 50.0)  # noise tempering c, k (NT §5.2: k = 50 in every experiment, c in 0.2-0.4)


def _layer_bits(text, what: str):
    if text is None:
        return None
    t = str(text).strip().lower()
    if t in ("none", "unbounded", "same"):
        return "same"
    try:
        b = int(t)
    except ValueError:
        raise HwsimError(f"{what} {text!r}: give a bit width 2..16 or 'none' (the QAT bits)") from None
    if not 2 <= b <= 16:
        raise HwsimError(f"{what} {text!r}: bit width outside 2..16")
    return b


def qat_spec(qat_bits, per_tensor: bool = False, first_last=None) -> dict:
    """``--qat-bits`` as train() keywords: {"qat_bits": (W, A|None) or None, "per_channel", "qat_profile",
    "qat_first_bits", "qat_last_bits"}. "W,A": first/last layers at ``first_last`` bits (default 8, 'none' =
    W,A everywhere) and the default profile's input format; a hardware profile name/path: its weight /
    activation bits (A = None for weight-only profiles), weight granularity, first_layer/last_layer bits
    (unbounded = the QAT bits) and input format. ``first_last`` given overrides both."""
    fl = _layer_bits(first_last, "--qat-first-last")
    if qat_bits is None or not isinstance(qat_bits, str):
        fb = 8 if fl is None else (None if fl == "same" else fl)
        return {"qat_bits": qat_bits, "per_channel": not per_tensor, "qat_profile": None,
                "qat_first_bits": fb, "qat_last_bits": fb}
    if "," in qat_bits:
        fb = 8 if fl is None else (None if fl == "same" else fl)
        return {"qat_bits": _pair(qat_bits, "--qat-bits"), "per_channel": not per_tensor, "qat_profile": None,
                "qat_first_bits": fb, "qat_last_bits": fb}
    from hwsim.profile import load_profile

    try:
        p = load_profile(qat_bits)
    except HwsimError as e:
        raise HwsimError(f"--qat-bits {qat_bits!r}: neither W,A bit widths nor a profile ({e})") from None
    bits = (p.weights.bits, None if p.weight_only else p.activations.bits)
    first, last = p.first_layer.bits, p.last_layer.bits
    if fl is not None:
        first = last = None if fl == "same" else fl
    return {"qat_bits": bits, "per_channel": (p.weights.granularity == "per_channel") and not per_tensor,
            "qat_profile": p, "qat_first_bits": first, "qat_last_bits": last}


def _symreg(text):
    """``--symreg`` "λ" (λ1 = λ2) or "λ1,λ2" -> (λ1, λ2) or None."""
    if text is None:
        return None
    if isinstance(text, (int, float)):
        return float(text), float(text)
    if "," in str(text):
        return _pair(text, "--symreg", (float, float))
    try:
        v = float(text)
    except ValueError:
        raise HwsimError(f"--symreg {text!r}: give λ or λ1,λ2, e.g. 0.1 or 0.1,0.05") from None
    return v, v


def train_command(arch="smallcnn", data="default", epochs=10, lr=0.05, batch_size=64, seed=0, kure=None,
                  kure_raw=False, symreg=None, satnl=False, sam=None, rho=None, qat_bits=None, per_tensor=False,
                  noise=None, optimizer="sgd", weight_decay=5e-4, out="model.pt", resume=None, init=None,
                  threads=1, quiet=False, export=None, as_json=False, kure_target=1.8, nt=False,
                  qat_first_last=None, qat_input="profile", qat_bn="unfolded"):
    """Run frontends.pytorch.train.train with CLI-typed options; optionally export; print a summary."""
    from hwsim.safeio import check_output

    _need_torch()
    # every output is checked before training starts (minutes of work must not end in a bad path)
    check_output(out, "--out", (".pt", ".pth"))
    check_output(export, "--export", (".hwsim",))
    from .train import train

    spec = qat_spec(qat_bits, per_tensor, qat_first_last)
    noise = _pair(noise, "--noise", (float, float)) if isinstance(noise, str) else noise
    if nt:
        if noise is not None:
            raise HwsimError("--nt and --noise both given: --nt is --noise 0.3,50 (NT's defaults); give one of them")
        noise = NT_DEFAULTS
    if noise is not None and not spec["qat_bits"]:
        raise HwsimError("--noise/--nt (noise tempering) needs QAT: give --qat-bits")
    sym = _symreg(symreg)
    r = train(arch, data, epochs, lr, batch_size, seed, kure=kure, kure_on_folded=False if kure_raw else None,
              symreg=sym[0] if sym else None, symreg2=sym[1] if sym else None, satnl=satnl,
              sam=None if sam in (None, "none") else sam, rho=rho, noise=noise,
              optimizer=optimizer, weight_decay=weight_decay, out=out, resume=resume, init=init,
              threads=threads, quiet=quiet, kure_target=kure_target, qat_input=qat_input, qat_bn=qat_bn, **spec)
    if export:
        export_command(out, export)
    summary = {"checkpoint": out, "epochs_run": r.epochs_run, "seconds": round(r.seconds, 2),
               "train_acc": r.train_acc, "test_acc": r.test_acc, "exported": export}
    if as_json:
        click.echo(json.dumps(summary))
    else:
        click.echo(f"test accuracy {r.final_test_acc:.4f} after {len(r.test_acc)} epochs "
                   f"({r.seconds:.1f} s this run); checkpoint {out}" + (f"; exported {export}" if export else ""))
    return r


MODEL_DEF_HINT = "--model-def module:factory --weights FILE.pt --input-shape C,H,W"


def export_command(checkpoint: str | None, out: str, qat_weights: str = "quantized", model_def: str | None = None,
                   weights: str | None = None, mean=None, std=None, input_shape=None):
    """Export to an .hwsim model file: an hwsim training checkpoint (QAT layers: fake-quantized or latent
    weights), or any model from ``model_def`` ("module:factory" or "path/file.py:factory", called with no
    arguments) with a plain state_dict ``weights`` (torch.load(weights_only=True))."""
    from hwsim.safeio import check_input_file, check_output

    _need_torch()
    check_output(out, "--out", (".hwsim",))
    if model_def is not None or weights is not None:
        if checkpoint is not None:
            raise HwsimError(f"export: give a training CHECKPOINT or {MODEL_DEF_HINT}, not both")
        return export_state_dict(model_def, weights, out, mean, std, input_shape)
    if checkpoint is None:
        raise HwsimError(f"export: give a training CHECKPOINT, or {MODEL_DEF_HINT} for a plain state_dict")
    for opt, v in (("--mean", mean), ("--std", std), ("--input-shape", input_shape)):
        if v is not None:
            raise HwsimError(f"export: {opt} goes with --model-def (a training checkpoint records its own)")
    check_input_file(checkpoint, f"checkpoint {checkpoint}", "checkpoint file")
    from .export import export_checkpoint
    from .train import load_checkpoint

    try:  # what is not an hwsim training checkpoint gets a pointer to the state_dict route
        load_checkpoint(checkpoint)
    except HwsimError as e:
        raise HwsimError(f"{e}; for a plain state_dict (or a model hwsim did not train): hwsim export "
                         f"--model-def module:factory --weights {checkpoint} --input-shape C,H,W -o {out}") from None
    return export_checkpoint(checkpoint, out, qat_weights=qat_weights)


def load_factory(spec: str):
    """``module:factory`` (imported from sys.path and the current directory) or ``path/file.py:factory``."""
    import importlib
    import importlib.util
    import os
    import sys
    from pathlib import Path

    mod_name, sep, attr = (spec or "").rpartition(":")
    if not sep or not mod_name or not attr.isidentifier():
        raise HwsimError(f"--model-def {spec!r}: give module:factory or path/to/file.py:factory "
                         "(a function returning the nn.Module, called with no arguments)")
    try:
        if mod_name.endswith(".py"):
            path = Path(mod_name)
            if not path.is_file():
                raise HwsimError(f"--model-def {spec!r}: no such file {mod_name!r}")
            mspec = importlib.util.spec_from_file_location(f"_hwsim_model_def_{path.stem}", path)
            module = importlib.util.module_from_spec(mspec)
            mspec.loader.exec_module(module)
        else:
            cwd = os.getcwd()
            added = cwd not in sys.path
            if added:  # the console script's sys.path lacks the current directory
                sys.path.insert(0, cwd)
            try:
                module = importlib.import_module(mod_name)
            finally:
                if added:
                    sys.path.remove(cwd)
    except HwsimError:
        raise
    except ModuleNotFoundError as e:
        raise HwsimError(f"--model-def {spec!r}: cannot import {e.name or mod_name!r} (not on the Python path "
                         "nor in the current directory)") from None
    except Exception as e:  # noqa: BLE001 - the user's module failed while importing
        raise HwsimError(f"--model-def {spec!r}: importing {mod_name!r} raised {type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise HwsimError(f"--model-def {spec!r}: {mod_name!r} has no callable {attr!r}")
    return factory


def _state_dict(obj, where: str) -> dict:
    """A plain state_dict {name: tensor}, or one under "state_dict" / "model" (Lightning, hwsim checkpoints)."""
    import torch

    for cand in (obj, *(obj.get(k) for k in ("state_dict", "model") if isinstance(obj, dict))):
        if isinstance(cand, dict) and cand and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                   for k, v in cand.items()):
            return cand
    raise HwsimError(f"{where}: not a state_dict (a dict of parameter names to tensors, possibly under "
                     "'state_dict' or 'model')")


def export_state_dict(model_def: str | None, weights: str | None, out: str, mean=None, std=None, input_shape=None):
    """The model ``model_def`` makes, with the state_dict in ``weights``, traced and written to ``out``."""
    import torch
    import torch.nn as nn

    from hwsim.importers import normalisation, parse_shape
    from hwsim.safeio import check_input_file

    if model_def is None or weights is None:
        raise HwsimError(f"export: {MODEL_DEF_HINT}: give both --model-def and --weights")
    shape = parse_shape(input_shape)
    if shape is None:
        raise HwsimError("export --model-def: give the per-sample input shape: --input-shape C,H,W")
    mean_t, std_t = normalisation(mean, std, shape[0])
    check_input_file(weights, f"--weights {weights}", "weights file")
    factory = load_factory(model_def)
    try:
        model = factory()
    except Exception as e:  # noqa: BLE001 - the user's factory failed
        raise HwsimError(f"--model-def {model_def!r}: calling it raised {type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}") from None
    if not isinstance(model, nn.Module):
        raise HwsimError(f"--model-def {model_def!r}: returned a {type(model).__name__}, not a torch.nn.Module")
    try:
        obj = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file
        raise HwsimError(f"--weights {weights}: cannot be read as a weights-only torch file ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:160] if str(e) else ''})") from None
    sd = _state_dict(obj, f"--weights {weights}")
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    extra = [k for k in sd if k not in own]
    shapes = [k for k in own if k in sd and tuple(own[k].shape) != tuple(sd[k].shape)]
    if missing or extra or shapes:
        def few(keys):
            return ", ".join(keys[:3]) + (f" (+{len(keys) - 3} more)" if len(keys) > 3 else "")
        why = "; ".join(w for w in (missing and f"missing {few(missing)}", extra and f"unexpected {few(extra)}",
                                    shapes and "shape of " + ", ".join(
                                        f"{k} {list(sd[k].shape)} vs {list(own[k].shape)}" for k in shapes[:3]))
                        if w)
        raise HwsimError(f"--weights {weights} does not fit {model_def}(): {why}")
    model.load_state_dict(sd)
    model.eval()
    from pathlib import Path

    from .export import export_model

    md = {"source": "pytorch", "model_def": model_def, "weights_file": Path(weights).name}
    return export_model(model, out, shape, mean_t, std_t, md)


def register(group: click.Group) -> None:
    """Add `train` and `export` to ``group``."""
    from hwsim.cli import DATA_HELP, _Finite, input_options, quiet_option

    from . import ARCHS

    pos = _Finite(0.0, open_lo=True)  # a finite number > 0 (nan, inf, 0 refused)
    nonneg = _Finite(0.0)  # a finite number >= 0

    @group.command("train")
    @click.option("--arch", default="smallcnn", show_default=True, help=", ".join(ARCHS))
    @click.option("--data", "-d", default="default", show_default="default = MNIST 5k", metavar="SPEC",
                  help=f"training and test data: {DATA_HELP}")
    @click.option("--epochs", default=10, show_default=True, type=click.IntRange(min=1))
    @click.option("--lr", default=0.05, show_default=True, type=pos, help="learning rate (finite, > 0)")
    @click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1), metavar="N")
    @click.option("--seed", default=0, show_default=True, type=int)
    @click.option("--kure", default=None, type=nonneg, help="KURE λ; off by default")
    @click.option("--kure-target", default=1.8, show_default=True, type=pos,
                  help="KURE target kurtosis K_T (1.8 = uniform)")
    @click.option("--kure-raw", is_flag=True, help="KURE on the raw weights instead of the BN-folded ones")
    @click.option("--symreg", default=None, metavar="L|L1,L2", help="SymReg λ1 = λ2 = L, or λ1,λ2; off by default")
    @click.option("--satnl", is_flag=True, help="weights W = tanh(V) (SatNL)")
    @click.option("--sam", type=click.Choice(["none", "sam", "asam"]), default="none", show_default=True)
    @click.option("--rho", default=None, type=pos, help="(A)SAM radius; default 0.05 (sam) / 1.0 (asam)")
    @click.option("--qat-bits", default=None, metavar="W,A|PROFILE",
                  help="LSQ QAT bit widths, e.g. 4,4 (A may be 'none'), or a hardware profile (e.g. w4a4): "
                       "its weight/activation bits, weight granularity, first/last-layer bits and input format")
    @click.option("--qat-first-last", default=None, metavar="BITS|none",
                  help="bits of the first layer (weights, input) and last layer (weights, input); default: "
                       "the profile's first_layer/last_layer bits, 8 with W,A; 'none' = the QAT bits")
    @click.option("--qat-input", type=click.Choice(["profile", "lsq"]), default="profile", show_default=True,
                  help="input image: fixed on the profile's input grid (as hwsim quantizes it), or a learned LSQ step")
    @click.option("--qat-bn", type=click.Choice(["unfolded", "fold"]), default="unfolded", show_default=True,
                  help="BN during QAT: unfolded (batch statistics) or static folding into the conv (needs --init)")
    @click.option("--per-tensor", is_flag=True, help="LSQ weight steps per tensor (default per channel)")
    @click.option("--noise", default=None, metavar="C,K", help="noise tempering constants, e.g. 0.3,50")
    @click.option("--nt", is_flag=True, help="noise tempering with NT's defaults c = 0.3, k = 50")
    @click.option("--init", default=None, help="start from this checkpoint's weights (e.g. float model for QAT)")
    @click.option("--optimizer", type=click.Choice(["sgd", "adam"]), default="sgd", show_default=True)
    @click.option("--weight-decay", default=5e-4, show_default=True, type=nonneg)
    @click.option("--out", "-o", default="model.pt", show_default=True, metavar="PATH",
                  help="checkpoint path (.pt, written every epoch)")
    @click.option("--resume", default=None, help="continue from this checkpoint")
    @click.option("--threads", default=1, show_default=True, type=click.IntRange(min=1))
    @click.option("--export", "export_", default=None, metavar="PATH", help="also export the result to this .hwsim file")
    @click.option("--json", "as_json", is_flag=True, help="print the summary as JSON")
    @quiet_option
    def train_cmd(arch, data, epochs, lr, batch_size, seed, kure, kure_target, kure_raw, symreg, satnl, sam, rho,
                  qat_bits, qat_first_last, qat_input, qat_bn, per_tensor, noise, nt, init, optimizer, weight_decay,
                  out, resume, threads, export_, as_json, quiet):
        """Train a model with the PyTorch frontend (needs torch)."""
        train_command(arch, data, epochs, lr, batch_size, seed, kure, kure_raw, symreg, satnl, sam, rho, qat_bits,
                      per_tensor, noise, optimizer, weight_decay, out, resume, init, threads, quiet, export_, as_json,
                      kure_target=kure_target, nt=nt, qat_first_last=qat_first_last, qat_input=qat_input,
                      qat_bn=qat_bn)

    @group.command("export")
    @click.argument("checkpoint", required=False)
    @click.option("--out", "-o", required=True, metavar="PATH", help="output .hwsim model file")
    @click.option("--qat-weights", type=click.Choice(["quantized", "latent"]), default="quantized",
                  show_default=True, help="QAT layers: the fake-quantized weights the model computes with, or "
                                          "the latent float weights (for re-quantizing at other bit widths)")
    @click.option("--model-def", default=None, metavar="MODULE:FACTORY",
                  help="instead of a training checkpoint: a function returning the nn.Module (module:factory from "
                       "the Python path or the current directory, or path/file.py:factory; this runs that code)")
    @click.option("--weights", default=None, metavar="FILE.pt",
                  help="with --model-def: a plain state_dict (torch.save(model.state_dict(), ...); "
                       "read with torch.load(weights_only=True))")
    @input_options
    def export_cmd(checkpoint, out, qat_weights, model_def, weights, mean, std, input_shape):
        """Export a training checkpoint, or any PyTorch model (--model-def + --weights), to an .hwsim model
        (needs torch). [CHECKPOINT] is an hwsim training checkpoint."""
        g = export_command(checkpoint, out, qat_weights, model_def, weights, mean, std, input_shape)
        click.echo(f"wrote {out}: {len(g.nodes)} nodes")


if __name__ == "__main__":  # standalone: python -m frontends.pytorch.cli_impl train ... (= hwsim train ...)
    from hwsim.cli import main

    main()
