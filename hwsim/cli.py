"""The ``hwsim`` command line: thin click commands over :mod:`hwsim.experiments`.

User errors (:class:`~hwsim.errors.HwsimError`) become one line ``Error: ...`` and exit
status 1; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import click

from hwsim.errors import HwsimError
from hwsim.cli_report import register as _register_report
from hwsim.studies.cli import register as _register_studies
from hwsim.safeio import atomic_write, check_output, check_output_dir, check_path_usable


class HwsimGroup(click.Group):
    """A click group that turns HwsimError into a one-line message and a nonzero exit."""

    def invoke(self, ctx):
        from hwsim.scaleout import sigterm_as_interrupt

        try:
            # SIGTERM unwinds like Ctrl-C: sweeps and studies stop their worker processes, results
            # already written stay (--resume), nothing is left running
            with sigterm_as_interrupt():
                return super().invoke(ctx)
        except HwsimError as e:
            raise click.ClickException(str(e)) from None

    def make_context(self, info_name, args, parent=None, **extra):
        try:  # option callbacks (path checks) run while the context is made
            return super().make_context(info_name, args, parent, **extra)
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


class _Stages:
    """Progress for commands made of a few long steps: one stderr line per step, with the time taken."""

    def __init__(self, command: str, quiet: bool):
        self.command, self.quiet, self.t0, self.t = command, quiet, time.perf_counter(), time.perf_counter()

    def __call__(self, what: str) -> None:
        now = time.perf_counter()
        if not self.quiet:
            click.echo(f"{self.command}: [{now - self.t0:5.1f} s] {what}", err=True)
        self.t = now


class _SweepProgress:
    """One stderr bar for a sweep: images done across workers, tasks done / total beside it."""

    def __init__(self, quiet: bool):
        self.quiet, self.bar, self.n, self.tasks = quiet, None, 0, None

    def __call__(self, p) -> None:
        if self.quiet:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=p.images_total, desc="sweep", unit="img", file=sys.stderr)
        if p.images_done != self.n:
            self.bar.update(p.images_done - self.n)
            self.n = p.images_done
        if p.tasks_done != self.tasks:
            self.tasks = p.tasks_done
            self.bar.set_postfix_str(f"tasks {p.tasks_done}/{p.tasks_total}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class _Finite(click.ParamType):
    """A finite float (nan/inf refused) at least ``lo`` (above it when ``open_lo``)."""

    name = "number"

    def __init__(self, lo: float | None = None, open_lo: bool = False):
        self.lo, self.open_lo = lo, open_lo

    def convert(self, value, param, ctx):
        if isinstance(value, float):
            v = value
        else:
            try:
                v = float(value)
            except (TypeError, ValueError):
                self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(v):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        if self.lo is not None and (v <= self.lo if self.open_lo else v < self.lo):
            self.fail(f"{value!r}: allowed a number {'>' if self.open_lo else '>='} {self.lo:g}", param, ctx)
        return v


# ----------------------------------------------------------------------------- the shared vocabulary
# every command spells the same thing the same way (STYLE.md habit 15): -m/--model, -p/--profile,
# -d/--data, -o/--out, --plot PATH, --set, --limit, --batch-size, --json, -q/--quiet
DATA_HELP = "default | mnist5k | digits | cifar10:PATH | cifar100:PATH | npz:PATH | npy:DIR"
MODEL_HELP = ("bundled model name, .hwsim path, or .onnx / .tflite / .pt2 path (imported with mean 0, std 1; "
              "'hwsim import' records another normalisation)  [default: smallcnn_robust]")


def _usable_path(ctx, param, value):
    if value is not None:
        check_path_usable(value, f"--{param.name} {value[:60]}{'...' if len(value) > 60 else ''}")
    return value


def model_option(f):
    return click.option("--model", "-m", default=None, metavar="NAME|PATH", help=MODEL_HELP, callback=_usable_path)(f)


def profile_option(default: str, why: str = ""):
    return click.option("--profile", "-p", default=default, show_default=True, metavar="NAME|PATH",
                        help="built-in profile name or .toml path" + (f" ({why})" if why else ""))


def data_option(what: str = "test images and calibration data"):
    return click.option("--data", "-d", default="default", show_default="default = MNIST 5k", metavar="SPEC",
                        help=f"{what}: {DATA_HELP}")


def set_option(f):
    return click.option("--set", "set_", multiple=True, metavar="KEY=VALUE",
                        help="override a profile field, e.g. accumulator.bits=16 (repeatable; "
                             "'hwsim profiles show NAME' lists every key)")(f)


def out_option(what: str, required: bool = False):
    return click.option("--out", "-o", default=None, required=required, metavar="PATH", help=what)


def plot_option(what: str, default_name: str):
    # --plot PATH; a bare --plot (the older flag form) means next to --out, or default_name
    return click.option("--plot", default=None, is_flag=False, flag_value="", metavar="PATH",
                        help=f"{what} (bare --plot: next to --out as .png, or {default_name})")


def ptq_option(f):
    return click.option("--ptq", "ptq", default=None, metavar="RECIPE|PATH",
                        help="PTQ recipe: how the parameters are chosen under the profile (minmax, mse, percentile, "
                             "aciq, lp, bn, lapq, wp, adaround, adaquant, NAME+bc, or a .toml; docs/ptq.md); "
                             "default: the profile's own range keys")(f)


def _recipe(spec):
    """The --ptq recipe, loaded (and checked) before any work; hwsim.ptq imported only when used."""
    from hwsim.ptq import load_recipe

    return load_recipe(spec)


class _PtqProgress:
    """Progress of a PTQ recipe's long steps (calibration, LAPQ loss evaluations, AdaRound layers) on stderr."""

    def __init__(self, quiet: bool):
        self.quiet, self.t0, self.last = quiet, time.perf_counter(), 0.0

    def __call__(self, stage: str, step=None, total=None, value=None) -> None:
        now = time.perf_counter()
        if self.quiet or (now - self.last < 1.0 and step is not None and total is not None and step < total):
            return  # at most one line a second, but always the last step of a stage
        self.last = now
        where = f" {step}/{total}" if step is not None and total is not None else f" {step}" if step is not None else ""
        val = f"  loss {value:.5g}" if isinstance(value, (int, float)) else ""
        click.echo(f"ptq: [{now - self.t0:6.1f} s] {stage}{where}{val}", err=True)


def input_options(f):
    """--mean / --std / --input-shape: the input a foreign model expects (hwsim import, hwsim export --model-def)."""
    f = click.option("--input-shape", default=None, metavar="C,H,W",
                     help="per-sample input shape (required where the model's own shape is not fixed)")(f)
    f = click.option("--std", default=None, metavar="S[,S,S]",
                     help="input normalisation: std per channel, one value or one per channel  [default: 1]")(f)
    return click.option("--mean", default=None, metavar="M[,M,M]",
                        help="input normalisation the model expects on pixels in [0, 1]: (x - mean) / std; mean "
                             "per channel, one value or one per channel  [default: 0]")(f)


def html_option(f):
    return click.option("--html", default=None, metavar="PATH",
                        help="also write one self-contained HTML report (hwsim report) to this .html file")(f)


def quiet_option(f):
    return click.option("--quiet", "-q", is_flag=True, help="no progress output on stderr")(f)


def json_option(what: str = "print the result as JSON"):
    return click.option("--json", "as_json", is_flag=True, help=what)


def limit_option(f):
    return click.option("--limit", type=click.IntRange(min=1), default=None, metavar="N",
                        help="use N test images, every class in proportion (round-robin over the classes in stored order)")(f)


def batch_option(f):
    return click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True, metavar="N",
                        help="images per batch (at least 1)")(f)


def _plot_path(plot: str | None, out: str | None, default_name: str) -> str | None:
    if plot is None:
        return None
    if plot == "":
        return str(Path(out).with_suffix(".png")) if out else default_name
    return plot

@click.group(cls=HwsimGroup)
@click.version_option(package_name="hwsim")
def cli():
    """hwsim: what will this checkpoint score on integer hardware X? Bit-exact.

    Every command speaks the same options: -m/--model, -p/--profile, -d/--data, -o/--out,
    --plot PATH, --set KEY=VALUE, --json, -q/--quiet."""


# ----------------------------------------------------------------------------- profiles
@cli.group(cls=HwsimGroup, invoke_without_command=True)
@json_option("machine-readable output")
@click.option("--engine", default=None, metavar="NAME",
              help="only the profiles that reproduce this engine (ONNX Runtime, PyTorch, LiteRT, TOSA)")
@click.pass_context
def profiles(ctx, as_json, engine):
    """List the built-in hardware profiles (or `profiles show NAME`)."""
    if ctx.invoked_subcommand is not None:
        return
    from hwsim.profile import builtin_names, load_profile
    from hwsim.report import table, to_json_text

    ps = [load_profile(n) for n in builtin_names()]
    if engine is not None:
        engines = sorted({p.engine for p in ps if p.engine})
        want = engine.casefold().replace(" ", "")
        ps = [p for p in ps if p.engine and want in p.engine.casefold().replace(" ", "")]
        if not ps:
            raise HwsimError(f"--engine: no built-in profile reproduces {engine!r} (engines: {', '.join(engines)})")
    if as_json:
        click.echo(to_json_text([{"name": p.name, "engine": p.engine, "summary": p.describe(), "description": p.description}
                                 for p in ps]), nl=False)
        return
    # an engine's own profiles first ("the profile for my engine"), then the design-space profiles
    groups = sorted({p.engine for p in ps if p.engine}) + ([""] if any(not p.engine for p in ps) else [])
    blocks = []
    for g in groups:
        rows = [[p.name, p.describe()] for p in ps if p.engine == g]
        title = f"{g}: its integers bit for bit" if g else "design space (hardware studies, no engine)"
        blocks.append(f"{title}\n" + table(rows, ["profile", "summary"]))
    click.echo("\n\n".join(blocks))


@profiles.command("show")
@click.argument("name")
@set_option
@json_option("print every field as JSON instead of TOML")
def profiles_show(name, set_, as_json):
    """Every field of a profile (a built-in name or a .toml path), as TOML."""
    from hwsim.profile import load_profile, parse_set_options, profile_toml, to_dict
    from hwsim.report import to_json_text

    p = load_profile(name, parse_set_options(set_))
    click.echo(to_json_text(to_dict(p)) if as_json else profile_toml(p), nl=False)


# ----------------------------------------------------------------------------- run
@cli.command()
@profile_option("int8-tflite", "an imported int8 model: its engine's profile")
@model_option
@data_option()
@set_option
@limit_option
@batch_option
@quiet_option
@json_option()
@out_option("also write the JSON result to this .json file")
@ptq_option
def run(profile, model, data, set_, limit, batch_size, quiet, as_json, out, ptq):
    """Run the model in integers under one hardware profile."""
    from hwsim.experiments import default_profile, load_context, run_profile
    from hwsim.given import check_given
    from hwsim.profile import load_profile, parse_set_options
    from hwsim.report import run_text, to_json_text

    check_output(out, "--out", (".json",))
    settings = parse_set_options(set_)
    prof = load_profile(profile, settings)
    recipe = _recipe(ptq)
    ctx = load_context(model, data, limit, batch_size)
    if click.get_current_context().get_parameter_source("profile") == click.core.ParameterSource.DEFAULT:
        prof = load_profile(default_profile(ctx.graph, profile), settings)  # an imported int8 model: its engine
    check_given(ctx.graph, prof, recipe)  # a profile the model's given numbers cannot meet: one line, before any work
    r = run_profile(ctx, prof, batch_size, _progress(len(ctx.y_test), prof.name, quiet or as_json), settings,
                    recipe=recipe, ptq_progress=_PtqProgress(quiet or as_json))
    text = to_json_text(r.to_json())
    if out:
        atomic_write(out, text)
    click.echo(text if as_json else run_text(r), nl=not as_json)


# ----------------------------------------------------------------------------- sweep
@cli.command()
@click.option("--profile", "-p", "profiles_", multiple=True, metavar="NAME|PATH",
              help="profile name or .toml path (repeatable; no default: give -p or --all)")
@click.option("--all", "all_profiles", is_flag=True, help="every built-in profile")
@click.option("--vary", multiple=True, metavar="KEY=V1,V2,...", help="grid over a profile field (repeatable: cartesian product)")
@model_option
@data_option()
@set_option
@limit_option
@batch_option
@quiet_option
@out_option("write the results to this .csv or .json file")
@plot_option("write a PNG of float / simulated accuracy per profile to this path", "sweep.png")
@html_option
@click.option("--compare", "with_fq", is_flag=True, help="add the fake-quant mirror's accuracy to every row (needs torch)")
@json_option("print the results as JSON")
@ptq_option
@click.option("--workers", type=click.IntRange(min=1), default=None, metavar="N",
              help="worker processes (1: every task in this process); with --executor ray, the CPUs of the local "
                   "Ray it starts  [default: 1; ray: every core]")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local processes, or Ray (pip install 'hwsim[ray]'): a local Ray, or the cluster at --ray-address")
@click.option("--ray-address", default=None, metavar="ADDR", help="a running Ray cluster (ray.init(address=ADDR))")
@click.option("--shard-size", type=click.IntRange(min=1), default=None, metavar="N",
              help="split the test images into tasks of N images (rounded up to a multiple of --batch-size)  "
                   "[default: one task per profile]")
@click.option("--resume", "--work-dir", "work_dir", default=None, metavar="DIR",
              help="write each task's result to DIR as it finishes; a rerun skips the tasks found there")
def sweep(profiles_, all_profiles, vary, model, data, set_, limit, batch_size, quiet, out, plot, html, with_fq,
          as_json, ptq, workers, executor, ray_address, shard_size, work_dir):
    """Run one checkpoint under many hardware profiles / field values, as (profile x recipe x shard)
    tasks on local worker processes or Ray, merged exactly (docs/scaleout.md)."""
    from hwsim import experiments as ex
    from hwsim import scaleout
    from hwsim.profile import parse_set_options
    from hwsim.report import sweep_csv, sweep_plot_png, sweep_text, to_json_text

    check_output(out, "--out", (".csv", ".json"))
    png = _plot_path(plot, out, "sweep.png")
    check_output(png, "--plot", (".png",))
    check_output(html, "--html", (".html", ".htm"))
    if work_dir is not None:
        check_path_usable(work_dir, "--resume")
    plan = ex.plan_sweep(list(profiles_), all_profiles, list(vary), parse_set_options(set_), recipe=ptq)
    ctx = ex.load_context(model, data, limit, batch_size, stream=True, float_baseline=False)  # float: per-shard tasks
    pool = scaleout.make_executor(executor, workers, ray_address)
    show = _SweepProgress(quiet or as_json)
    finished = False
    try:
        done = scaleout.run_sweep(ctx, plan, batch_size, with_fakequant=with_fq, executor=pool, shard_size=shard_size,
                                  work_dir=work_dir, on_progress=show)
        finished = True
    finally:
        show.close()
        pool.shutdown(kill=not finished)  # interrupted or failed: stop the workers' running tasks too
    if work_dir is not None and not (quiet or as_json):
        click.echo(f"sweep: {len(done.ran)} task(s) run, {len(done.reused)} of {done.tasks} found in {work_dir}", err=True)
    results = done.results
    # render everything first, then write: an error leaves no partial output
    files = []
    if out:
        files.append((out, to_json_text([r.to_json() for r in results]) if out.endswith(".json") else sweep_csv(results)))
    if png:
        files.append((png, sweep_plot_png(results)))
    if html:
        from hwsim.html_report import command_line, html_text

        files.append((html, html_text([r.to_json() for r in results], {"command": command_line()})))
    for path, content in files:
        atomic_write(path, content)
    if as_json:
        click.echo(to_json_text([r.to_json() for r in results]), nl=False)
    else:
        click.echo(f"model {ctx.model_name}  data {ctx.data_spec}  ({len(ctx.y_test)} test images)")
        click.echo(sweep_text(results))
        for path, _ in files:
            click.echo(f"wrote {path}")


# ----------------------------------------------------------------------------- compare
@cli.command()
@profile_option("int8-fbgemm", "PyTorch's int8 arithmetic, the usual QAT target")
@model_option
@data_option()
@set_option
@limit_option
@batch_option
@quiet_option
@json_option()
@out_option("also write the JSON result to this .json file")
@plot_option("write a PNG of per-layer SQNR and mismatch to this path", "compare.png")
@click.option("--fq-rounding", type=click.Choice(["half_even", "profile"]), default="half_even", show_default=True,
              help="fake-quant rounding: half_even (QAT's torch.round) or the profile's own rounding mode")
@html_option
@ptq_option
def compare(profile, model, data, set_, limit, batch_size, quiet, as_json, out, plot, fq_rounding, html, ptq):
    """Float vs fake-quant (what training simulated) vs integer simulator, per layer."""
    from hwsim.compare import compare as run_compare
    from hwsim.experiments import compile_for, load_context
    from hwsim.profile import load_profile, parse_set_options
    from hwsim.report import compare_plot_png, compare_text, to_json_text

    check_output(out, "--out", (".json",))
    png = _plot_path(plot, out, "compare.png")
    check_output(png, "--plot", (".png",))
    check_output(html, "--html", (".html", ".htm"))
    step = _Stages("compare", quiet or as_json)
    prof = load_profile(profile, parse_set_options(set_))
    recipe = _recipe(ptq)  # a bad recipe fails before any work
    step("loading model and data")
    ctx = load_context(model, data, limit, batch_size)
    step(f"compiling {ctx.model_name} for {prof.name}")
    qg = compile_for(ctx, prof, recipe, progress=_PtqProgress(quiet or as_json))
    step(f"running float, fake-quant and simulator on {len(ctx.y_test)} images, layer by layer")
    r = run_compare(ctx, qg, batch_size, fq_rounding=fq_rounding)
    step(f"done: {len(r.layers)} layers compared")
    files = [(out, to_json_text(r.to_json()))] if out else []
    if png:
        files.append((png, compare_plot_png(r)))
    if html:
        from hwsim.html_report import command_line, html_text

        files.append((html, html_text(r.to_json(), {"command": command_line()})))
    for path, content in files:  # everything rendered before anything is written
        atomic_write(path, content)
    click.echo(to_json_text(r.to_json()) if as_json else compare_text(r), nl=not as_json)


# ----------------------------------------------------------------------------- inspect
@cli.command()
@click.argument("model_arg", required=False, metavar="[MODEL]")
@model_option
@click.option("--profile", "-p", default=None, metavar="NAME|PATH",
              help="also compile under this profile: certificates, headroom  [default: none, graph statistics only]")
@set_option
@data_option("calibration data (with --profile)")
@quiet_option
@json_option()
def inspect(model_arg, model, profile, set_, data, quiet, as_json):
    """Graph, weight statistics (kurtosis, symmetry) and, with --profile, overflow certificates.

    MODEL may be given positionally (older form) or with -m/--model."""
    from hwsim.experiments import inspect_model
    from hwsim.profile import load_profile, parse_set_options
    from hwsim.report import inspect_text, to_json_text

    if model_arg is not None and model is not None and model_arg != model:
        raise HwsimError(f"inspect: model given twice ({model_arg!r} and --model {model!r}): give one")
    if set_ and not profile:
        raise HwsimError("inspect: --set changes a profile field: give --profile too")
    step = _Stages("inspect", quiet or as_json)
    prof = load_profile(profile, parse_set_options(set_)) if profile else None
    if prof is not None:
        step(f"compiling under {prof.name} (calibration on {data})")
    r = inspect_model(model_arg or model, prof, data)
    click.echo(to_json_text(r.to_json()) if as_json else inspect_text(r), nl=not as_json)


# ----------------------------------------------------------------------------- golden
@cli.command()
@profile_option("int8-tflite")
@model_option
@data_option("images (the first N test images) and calibration")
@set_option
@click.option("--n", "n_images", type=click.IntRange(min=1), default=4, show_default=True, metavar="N",
              help="number of test images (at most the data set's test split)")
@out_option("output directory (must not exist, or be empty)", required=True)
@quiet_option
@ptq_option
def golden(profile, model, data, set_, n_images, out, quiet, ptq):
    """Golden vectors for an RTL testbench: every layer's integer inputs, weights, biases, requant
    constants and outputs (.npy + .hex) with a manifest.json."""
    from hwsim.experiments import compile_for, load_context
    from hwsim.golden import write_golden
    from hwsim.profile import load_profile, parse_set_options

    check_output_dir(out, "--out")
    step = _Stages("golden", quiet)
    prof = load_profile(profile, parse_set_options(set_))
    recipe = _recipe(ptq)  # a bad recipe fails before any work
    step("loading model and data")
    ctx = load_context(model, data, limit=n_images)
    if len(ctx.y_test) < n_images:
        raise HwsimError(f"--n {n_images}: data {data!r} has only {len(ctx.y_test)} test images "
                         f"(allowed 1..{len(ctx.y_test)})")
    step(f"compiling for {prof.name}")
    qg = compile_for(ctx, prof, recipe, progress=_PtqProgress(quiet))
    step(f"running {n_images} image(s) and writing every layer's integers")
    m = write_golden(qg, ctx.x_test, out, ctx.model_name)
    click.echo(f"wrote {out}: {m['images']} image(s), {len(m['layers'])} layers, {len(m['tensors'])} tensors "
               f"(manifest.json, .npy + .hex)")


# ----------------------------------------------------------------------------- export-onnx
@cli.command("export-onnx")
@profile_option("int8-onnxruntime", "a profile ONNX Runtime computes exactly: uint8 activations, float32 requant")
@model_option
@data_option("calibration data")
@set_option
@click.option("--float-input", is_flag=True, help="take normalised float32 images (QuantizeLinear) instead of uint8 codes")
@click.option("--format", "format_", type=click.Choice(["qoperator", "qdq"]), default="qoperator", show_default=True,
              help="qoperator: ONNX Runtime's QLinear ops; qdq: DequantizeLinear -> float op -> QuantizeLinear "
                   "(the same integers with ORT's graph optimizations on)")
@out_option("output .onnx file", required=True)
@quiet_option
@ptq_option
def export_onnx(profile, model, data, set_, float_input, format_, out, quiet, ptq):
    """Write the compiled integer graph as an ONNX int8 model (QLinear ops or QDQ): ONNX Runtime computes the same
    integers. Activation tables (hardswish, sigmoid, ...) are Gather on their 256-entry table."""
    from hwsim.experiments import compile_for, load_context
    from hwsim.onnx_export import to_onnx
    from hwsim.profile import load_profile, parse_set_options

    check_output(out, "--out", (".onnx",))
    step = _Stages("export-onnx", quiet)
    prof = load_profile(profile, parse_set_options(set_))
    recipe = _recipe(ptq)  # a bad recipe fails before any work
    ctx = load_context(model, data, limit=1)
    step(f"compiling {ctx.model_name} for {prof.name}")
    qg = compile_for(ctx, prof, recipe, progress=_PtqProgress(quiet))
    proto = to_onnx(qg, float_input=float_input, format=format_)
    atomic_write(out, proto.SerializeToString())
    inp = f"{qg.input_name}::float (float32)" if float_input else f"{qg.input_name} (uint8 codes)"
    click.echo(f"wrote {out}: {len(proto.graph.node)} ONNX nodes ({format_}); input {inp}; outputs {qg.output_name} (codes), "
               f"{qg.output_name}::dequantized (float32)")


# ----------------------------------------------------------------------------- import
@cli.command("import")
@click.argument("model_file", metavar="MODEL")
@out_option("output .hwsim model file", required=True)
@input_options
def import_(model_file, out, mean, std, input_shape):
    """Import an ONNX (opset >= 13), LiteRT .tflite or PyTorch .pt2 model as an .hwsim model file.

    ONNX (pip install 'hwsim[onnx]'): a float model, or an int8 model (QDQ / QOperator from
    onnxruntime.quantization); LiteRT (pip install 'hwsim[litert]'): an int8 .tflite; PyTorch (torch): a
    torch.export.save of a pt2e int8 model. An int8 model's own scales, zero points, integer weights and
    biases are kept, with its engine's profile as its default. The
    normalisation the model expects is recorded in the .hwsim file; the op table and what is not
    supported yet are in docs/import.md."""
    from hwsim.graph import save_model
    from hwsim.importers import import_model

    check_output(out, "--out", (".hwsim",))
    g = import_model(model_file, mean, std, input_shape)
    save_model(g, out)
    spec = g.inputs[0]
    given = g.metadata.get("given")
    kept = (f"; given {given.source_format} quantization kept ({len(given.grids)} grids, {len(given.layers)} "
            f"integer layers), default profile {given.profile}" if given is not None else "")
    click.echo(f"wrote {out}: {len(g.nodes)} nodes; input {spec.name!r} {tuple(spec.shape)}, "
               f"mean {list(spec.mean)}, std {list(spec.std)}{kept}")


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
_register_report(cli)
_register_studies(cli)


def main() -> None:  # console-script entry point
    cli()


if __name__ == "__main__":  # pragma: no cover
    main()
