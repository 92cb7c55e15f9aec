"""``hwsim report RESULTS... -o report.html``: results JSON files -> one self-contained HTML page.

Registered on the main group by ``register(cli)`` (hwsim/cli.py); the command is thin: it reads
the files, checks them and calls :func:`hwsim.html_report.write_html_report`.
"""

from __future__ import annotations

import os

import click


def register(cli_group: click.Group) -> None:
    """Add the ``report`` command to ``cli_group``."""

    @cli_group.command("report")
    @click.argument("results", nargs=-1, required=True, metavar="RESULTS.json...")
    @click.option("--out", "-o", default="report.html", show_default=True, help="the HTML file to write")
    @click.option("--title", default=None, help="page title (default: hwsim report: MODEL on DATA)")
    def report(results, out, title):
        """One self-contained HTML page (no network, printable) from the JSON that `run`, `sweep` and
        `compare` write with --out x.json: provenance, accuracy vs BOPs and accumulator bits with Pareto
        fronts, overflow heat map, per-layer comparison; every table also as CSV."""
        from hwsim.html_report import default_provenance, load_results, write_html_report
        from hwsim.safeio import check_output

        check_output(out, "--out", (".html", ".htm"))
        docs = load_results(list(results))
        prov = default_provenance(sources=list(results))
        write_html_report({"documents": docs}, out, prov, title)
        click.echo(f"wrote {out} ({os.path.getsize(out):,} bytes) from {len(docs)} results file(s)")
