"""Fixtures and helpers the CLI tests share (tests/test_cli.py, tests/hardening, tests/importers, tests/scaleout)."""

import numpy as np
import pytest
from click.testing import CliRunner

from hwsim.cli import cli


def invoke(*args):
    """``hwsim ARGS...`` in-process (arguments turned into strings, so paths and numbers can be passed as they are)."""
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def data8(tmp_path_factory):
    """A small npz dataset in a 1x8x8 shape: 40 training and 20 test images of random pixels, labels 0..9."""
    rng = np.random.default_rng(0)
    p = tmp_path_factory.mktemp("d") / "d.npz"
    x = rng.integers(0, 256, (60, 8, 8), dtype=np.uint8)
    y = np.arange(60) % 10
    np.savez(p, x_train=x[:40], y_train=y[:40], x_test=x[40:], y_test=y[40:])
    return f"npz:{p}"
