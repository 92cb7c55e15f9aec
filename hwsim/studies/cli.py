"""`hwsim study NAME`: the click command (registered by hwsim/cli.py); the work is hwsim.studies."""

from __future__ import annotations

import shlex

import click

from hwsim.studies.spec import STUDY_NAMES


def study_command(name, out=None, seeds=None, epochs=None, limit=None, archs=(), quick=False, quiet=False,
                  cache=None, data="default", command="", jobs=1):
    """Run (or resume) a study, write NAME.csv / NAME.md / NAME.png; return (StudyRun, paths)."""
    from hwsim.studies.output import write_outputs
    from hwsim.studies.runner import run_study
    from hwsim.studies.spec import STUDIES

    arch_list = [a.strip() for item in archs for a in item.split(",") if a.strip()] or None
    run = run_study(name, out, seeds, epochs, limit, arch_list, quick, quiet, cache, data, command, jobs=jobs)
    outdir = out if out is not None else f"results/studies/{name}"
    return run, write_outputs(run, outdir, STUDIES[name].x_label, STUDIES[name].pareto)


def canonical_command(name, out=None, seeds=None, epochs=None, limit=None, archs=(), quick=False, cache=None,
                      data="default") -> str:
    """The command as given (options in a fixed order), for the table's header."""
    parts = ["hwsim", "study", name]
    for opt, val in (("--out", out), ("--seeds", seeds), ("--epochs", epochs), ("--limit", limit),
                     ("--cache", cache), ("--data", None if data == "default" else data)):
        if val is not None:
            parts += [opt, str(val)]
    for a in archs:
        parts += ["--arch", a]
    if quick:
        parts.append("--quick")
    return " ".join(shlex.quote(p) for p in parts)


def register(group: click.Group) -> None:
    from hwsim.cli import DATA_HELP, quiet_option

    @group.command("study")
    @click.argument("name", type=click.Choice(STUDY_NAMES))
    @click.option("--out", "-o", default=None, metavar="DIR",
                  help="output directory (default results/studies/NAME); rerunning resumes it")
    @click.option("--seeds", type=click.IntRange(min=1), default=None, metavar="N",
                  help="training seeds 0..N-1 (default 5; --quick: 1)")
    @click.option("--epochs", type=click.IntRange(min=1), default=None, metavar="E",
                  help="training epochs (default: the study's, docs/results.md; --quick: 1)")
    @click.option("--limit", type=click.IntRange(min=1), default=None, metavar="N",
                  help="evaluate on the first N test images (default all; --quick: 200)")
    @click.option("--arch", "archs", multiple=True, metavar="A[,B]",
                  help="architectures (smallcnn, mobilenetv2-tiny, mobilenetv2, resnet8, ...; default: the study's)")
    @click.option("--quick", is_flag=True, help="tiny run for tests/CI: 1 seed, 1 epoch on 1000 images, 200 test "
                                                 "images, a few columns — not a result")
    @click.option("--cache", default=None, metavar="DIR",
                  help="shared training cache (default: OUT/../_train, shared by the studies)")
    @click.option("--data", "-d", default="default", show_default="default = MNIST 5k", metavar="SPEC", help=DATA_HELP)
    @click.option("--jobs", "-j", type=click.IntRange(min=1), default=2, show_default=True, metavar="N",
                  help="worker processes, one model (its training, then its cells) each, one thread each; "
                       "1 = in this process. The results do not depend on it")
    @quiet_option
    def study(name, out, seeds, epochs, limit, archs, quick, cache, data, jobs, quiet):
        """Run one of the papers' five studies (issue 20) as a resumable grid of cells.

        NAME: bitwidth, stepsize, pow2, qat-bitwidth, accumulator, and bitwidth-mobilenet, pow2-mobilenet
        (the first and third on mobilenetv2-tiny; docs/results.md). Trainings are
        cached by a hash of their configuration and shared between studies; each evaluation is a
        JSON cell; rerunning the same command skips finished cells."""
        command = canonical_command(name, out, seeds, epochs, limit, archs, quick, cache, data)
        run, paths = study_command(name, out, seeds, epochs, limit, archs, quick, quiet, cache, data, command, jobs)
        click.echo(f"study {name}: {len(run.rows)} cells ({run.evaluated} evaluated now, {run.evaluations_reused} "
                   f"reused; {run.trained} trainings now, {run.trainings_reused} reused) in {run.seconds:.0f} s; wrote "
                   + ", ".join(str(p) for p in paths.values()))
