"""Shared fixtures: the tiny test network and a small real data set (scikit-learn's 8x8 digits) as files."""

from __future__ import annotations

import numpy as np
import pytest

from hwsim.graph import save_model
from tests.nets import tiny_cnn

TIMING_COLUMNS = ("images_per_s", "seconds")  # measured, so they differ between any two runs


@pytest.fixture(scope="session")
def model_path(tmp_path_factory):
    p = tmp_path_factory.mktemp("model") / "tiny.hwsim"
    save_model(tiny_cnn(seed=3, channels=6, classes=10), p)
    return str(p)


@pytest.fixture(scope="session")
def digits():
    """(x uint8 N x 8 x 8, y) of scikit-learn's digits: real images, 0..16 scaled to 0..255."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.round(np.asarray(d.images) * (255 / 16)).astype(np.uint8)
    return x, np.asarray(d.target, np.int64)


@pytest.fixture(scope="session")
def data_npz(tmp_path_factory, digits):
    x, y = digits
    p = tmp_path_factory.mktemp("data") / "digits.npz"
    np.savez(p, x_train=x[:1000], y_train=y[:1000], x_test=x[1000:], y_test=y[1000:])
    return str(p)


def without_timing(csv_text: str) -> str:
    """A sweep CSV without its two measured columns (every other byte must match)."""
    import csv
    import io

    rows = list(csv.reader(io.StringIO(csv_text)))
    drop = {rows[0].index(c) for c in TIMING_COLUMNS}
    return "\n".join(",".join(v for i, v in enumerate(r) if i not in drop) for r in rows) + "\n"
