"""The ``hwsim`` command line: thin click commands over :mod:`hwsim.experiments`.

User errors (:class:`~hwsim.errors.HwsimError`) become one line ``Error: ...`` and exit
status 1; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from hwsim.errors import HwsimError


class HwsimGroup(click.Group):
    """A click group that turns HwsimError into a one-line message and a nonzero exit."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except HwsimError as e:
            raise click.ClickException(str(e)) from None


def _progress(total: int, desc: str, quiet: bool):
    from tqdm import tqdm

    bar = tqdm(total=total, desc=desc, unit="img", file=sys.stderr, disable=quiet, leave=False)
    state = {"n": 0}

    def update(done: int):
        bar.update(done - state["n"])
        state["n"] = done
        if done >= total:
            bar.close()

    return update


def _out_check(path: str | None, suffixes: tuple[str, ...], option: str = "--out") -> None:
    if path is None:
        return
    p = Path(path)
    if p.suffix.lower() not in suffixes:
        raise HwsimError(f"{option} {path}: unsupported extension {p.suffix or '(none)'!r}; allowed {', '.join(suffixes)}")
    if not p.parent.exists():
        raise HwsimError(f"{option} {path}: directory {p.parent} does not exist")


_common = [
    click.option("--model", "-m", default=None, help="bundled model name or .hwsim path (default: the bundled robust model)"),
    click.option("--data", "-d", default="default", show_default=True,
                 help="default | mnist5k | digits | cifar10:PATH | cifar100:PATH | npz:PATH"),
    click.option("--set", "set_", multiple=True, metavar="KEY=VALUE", help="override a profile field, e.g. accumulator.bits=16"),
    click.option("--limit", type=int, default=None, help="use only the first N test images"),
    click.option("--batch-size", type=int, default=256, show_default=True),
    click.option("--quiet", "-q", is_flag=True, help="no progress bars"),
]


def common_options(f):
    for opt in reversed(_common):
        f = opt(f)
    return f


@click.group(cls=HwsimGroup)
@click.version_option(package_name="hwsim")
def cli():
    """hwsim: what will this checkpoint score on integer hardware X? Bit-exact."""


# ----------------------------------------------------------------------------- profiles
@cli.group(cls=HwsimGroup, invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.pass_context
def profiles(ctx, as_json):
    """List the built-in hardware profiles (or `profiles show NAME`)."""
    if ctx.invoked_subcommand is not None:
        return
    from hwsim.profile import builtin_names, load_profile
    from hwsim.report import table, to_json_text

    ps = [load_profile(n) for n in builtin_names()]
    if as_json:
        click.echo(to_json_text([{"name": p.name, "summary": p.describe(), "description": p.description} for p in ps]), nl=False)
        return
    click.echo(table([[p.name, p.describe()] for p in ps], ["profile", "summary"]))


@profiles.command("show")
@click.argument("name")
@click.option("--set", "set_", multiple=True, metavar="KEY=VALUE")
@click.option("--json", "as_json", is_flag=True)
def profiles_show(name, set_, as_json):
    """Every field of a profile (a built-in name or a .toml path), as TOML."""
    from hwsim.profile import load_profile, parse_set_options, profile_toml, to_dict
    from hwsim.report import to_json_text

    p = load_profile(name, parse_set_options(set_))
    click.echo(to_json_text(to_dict(p)) if as_json else profile_toml(p), nl=False)


# ----------------------------------------------------------------------------- run
@cli.command()
@click.option("--profile", "-p", default="int8-tflite", show_default=True, help="built-in profile name or .toml path")
@common_options
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON")
@click.option("--out", default=None, help="also write the JSON result to this file")
def run(profile, model, data, set_, limit, batch_size, quiet, as_json, out):
    """Run the model in integers under one hardware profile."""
    from hwsim.experiments import load_context, run_profile
    from hwsim.profile import load_profile, parse_set_options
    from hwsim.report import atomic_write, run_text, to_json_text

    _out_check(out, (".json",))
    settings = parse_set_options(set_)
    prof = load_profile(profile, settings)
    ctx = load_context(model, data, limit, batch_size)
    r = run_profile(ctx, prof, batch_size, _progress(len(ctx.y_test), prof.name, quiet or as_json), settings)
    text = to_json_text(r.to_json())
    if out:
        atomic_write(out, text)
    click.echo(text if as_json else run_text(r), nl=not as_json)


# ----------------------------------------------------------------------------- sweep
@cli.command()
@click.option("--profile", "-p", "profiles_", multiple=True, help="profile name or path (repeatable)")
@click.option("--all", "all_profiles", is_flag=True, help="every built-in profile")
@click.option("--vary", multiple=True, metavar="KEY=V1,V2,...", help="grid over a profile field (repeatable: cartesian product)")
@common_options
@click.option("--out", default=None, help="write results (.csv or .json)")
@click.option("--plot", is_flag=True, help="also write a PNG next to --out (or sweep.png)")
@click.option("--compare", "with_fq", is_flag=True, help="add the fake-quant mirror's accuracy to every row (needs torch)")
@click.option("--json", "as_json", is_flag=True, help="print the results as JSON")
def sweep(profiles_, all_profiles, vary, model, data, set_, limit, batch_size, quiet, out, plot, with_fq, as_json):
    """Run one checkpoint under many hardware profiles / field values."""
    from hwsim import experiments as ex
    from hwsim.profile import parse_set_options
    from hwsim.report import atomic_write, sweep_csv, sweep_plot, sweep_text, to_json_text

    _out_check(out, (".csv", ".json"))
    plan = ex.plan_sweep(list(profiles_), all_profiles, list(vary), parse_set_options(set_))
    ctx = ex.load_context(model, data, limit, batch_size)
    from tqdm import tqdm

    bar = tqdm(total=len(plan), desc="sweep", unit="profile", file=sys.stderr, disable=quiet or as_json)
    results = ex.sweep(ctx, plan, batch_size, on_result=lambda r: (bar.set_postfix_str(r.profile), bar.update(1)),
                       with_fakequant=with_fq)
    bar.close()
    if out:
        atomic_write(out, to_json_text([r.to_json() for r in results]) if out.endswith(".json") else sweep_csv(results))
    if plot:
        png = Path(out).with_suffix(".png") if out else Path("sweep.png")
        sweep_plot(results, png)
    if as_json:
        click.echo(to_json_text([r.to_json() for r in results]), nl=False)
    else:
        click.echo(f"model {ctx.model_name}  data {ctx.data_spec}  ({len(ctx.y_test)} test images)")
        click.echo(sweep_text(results))
        if out:
            click.echo(f"wrote {out}")
        if plot:
            click.echo(f"wrote {png}")


# ----------------------------------------------------------------------------- compare
@cli.command()
@click.option("--profile", "-p", default="int8-fbgemm", show_default=True, help="built-in profile name or .toml path")
@common_options
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON")
@click.option("--out", default=None, help="also write the JSON result to this file")
@click.option("--plot", default=None, help="write a PNG of per-layer SQNR and mismatch to this path")
@click.option("--fq-rounding", type=click.Choice(["half_even", "profile"]), default="half_even", show_default=True,
              help="fake-quant rounding: half_even (QAT's torch.round) or the profile's own rounding mode")
def compare(profile, model, data, set_, limit, batch_size, quiet, as_json, out, plot, fq_rounding):
    """Float vs fake-quant (what training simulated) vs integer simulator, per layer."""
    from hwsim.compare import compare as run_compare
    from hwsim.experiments import compile_for, load_context
    from hwsim.profile import load_profile, parse_set_options
    from hwsim.report import atomic_write, compare_plot, compare_text, to_json_text

    _out_check(out, (".json",))
    _out_check(plot, (".png",), "--plot")
    prof = load_profile(profile, parse_set_options(set_))
    ctx = load_context(model, data, limit, batch_size)
    r = run_compare(ctx, compile_for(ctx, prof), batch_size, fq_rounding=fq_rounding)
    text = to_json_text(r.to_json())
    if out:
        atomic_write(out, text)
    if plot:
        compare_plot(r, plot)
    click.echo(text if as_json else compare_text(r), nl=not as_json)


# ----------------------------------------------------------------------------- inspect
@cli.command()
@click.argument("model", required=False)
@click.option("--profile", "-p", default=None, help="also compile under this profile: certificates, headroom")
@click.option("--set", "set_", multiple=True, metavar="KEY=VALUE")
@click.option("--data", "-d", default="default", show_default=True, help="calibration data (with --profile)")
@click.option("--json", "as_json", is_flag=True)
def inspect(model, profile, set_, data, as_json):
    """Graph, weight statistics (kurtosis, symmetry) and, with --profile, overflow certificates."""
    from hwsim.experiments import inspect_model
    from hwsim.profile import load_profile, parse_set_options
    from hwsim.report import inspect_text, to_json_text

    prof = load_profile(profile, parse_set_options(set_)) if profile else None
    r = inspect_model(model, prof, data)
    click.echo(to_json_text(r.to_json()) if as_json else inspect_text(r), nl=not as_json)


# ----------------------------------------------------------------------------- golden
@cli.command()
@click.option("--profile", "-p", default="int8-tflite", show_default=True, help="built-in profile name or .toml path")
@click.option("--model", "-m", default=None, help="bundled model name or .hwsim path (default: the bundled robust model)")
@click.option("--data", "-d", default="default", show_default=True, help="images (the first N test images) and calibration")
@click.option("--set", "set_", multiple=True, metavar="KEY=VALUE", help="override a profile field")
@click.option("--n", "n_images", type=int, default=4, show_default=True, help="number of test images")
@click.option("--out", "-o", required=True, help="output directory (must not exist, or be empty)")
def golden(profile, model, data, set_, n_images, out):
    """Golden vectors for an RTL testbench: every layer's integer inputs, weights, biases, requant
    constants and outputs (.npy + .hex) with a manifest.json."""
    from hwsim.experiments import compile_for, load_context
    from hwsim.golden import write_golden
    from hwsim.profile import load_profile, parse_set_options

    if n_images < 1:
        raise HwsimError(f"--n {n_images}: allowed a positive number of images")
    prof = load_profile(profile, parse_set_options(set_))
    ctx = load_context(model, data, limit=n_images)
    m = write_golden(compile_for(ctx, prof), ctx.x_test, out, ctx.model_name)
    click.echo(f"wrote {out}: {m['images']} image(s), {len(m['layers'])} layers, {len(m['tensors'])} tensors "
               f"(manifest.json, .npy + .hex)")


# ----------------------------------------------------------------------------- export-onnx
@cli.command("export-onnx")
@click.option("--profile", "-p", default="int8-onnxruntime", show_default=True,
              help="a profile ONNX Runtime computes exactly (uint8 activations, float32 requant)")
@click.option("--model", "-m", default=None, help="bundled model name or .hwsim path (default: the bundled robust model)")
@click.option("--data", "-d", default="default", show_default=True, help="calibration data")
@click.option("--set", "set_", multiple=True, metavar="KEY=VALUE", help="override a profile field")
@click.option("--float-input", is_flag=True, help="take normalised float32 images (QuantizeLinear) instead of uint8 codes")
@click.option("--out", "-o", required=True, help="output .onnx file")
def export_onnx(profile, model, data, set_, float_input, out):
    """Write the compiled integer graph as an ONNX QLinear model: ONNX Runtime computes the same integers."""
    from hwsim.experiments import compile_for, load_context
    from hwsim.onnx_export import to_onnx
    from hwsim.profile import load_profile, parse_set_options
    from hwsim.report import atomic_write

    _out_check(out, (".onnx",))
    prof = load_profile(profile, parse_set_options(set_))
    ctx = load_context(model, data, limit=1)
    qg = compile_for(ctx, prof)
    proto = to_onnx(qg, float_input=float_input)
    atomic_write(out, proto.SerializeToString())
    inp = f"{qg.input_name}::float (float32)" if float_input else f"{qg.input_name} (uint8 codes)"
    click.echo(f"wrote {out}: {len(proto.graph.node)} ONNX nodes; input {inp}; outputs {qg.output_name} (codes), "
               f"{qg.output_name}::dequantized (float32)")


def _register_frontend():
    """`hwsim train` / `hwsim export` live in the PyTorch frontend (torch imported lazily)."""
    try:
        from frontends.pytorch.cli_impl import register
    except ModuleNotFoundError as e:  # torch itself is imported lazily inside the commands
        if e.name not in ("frontends.pytorch.cli_impl", "frontends.pytorch", "frontends"):
            raise
        return
    register(cli)


_register_frontend()


def main() -> None:  # console-script entry point
    cli()


if __name__ == "__main__":  # pragma: no cover
    main()
