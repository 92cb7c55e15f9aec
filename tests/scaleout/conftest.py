"""Shared fixtures: the bundled model with a few real MNIST images written as the files a user has."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest

from tests.conftest import invoke  # noqa: E402,F401  (the one CLI runner the tests share)

TIMING_COLUMNS = ("images_per_s", "seconds")  # measured, so they differ between any two runs
MODEL = "smallcnn_robust"  # the bundled default model


@pytest.fixture(scope="session")
def mnist():
    """(x_train, y_train, x_test, y_test) of the embedded MNIST subset as uint8 images (N, 28, 28)."""
    from hwsim.data import load_dataset

    ds = load_dataset("default")
    u8 = lambda x: np.round(x[:, 0] * 255).astype(np.uint8)  # noqa: E731 (exact: the pixels were k / 255)
    return u8(ds.x_train[:400]), ds.y_train[:400], u8(ds.x_test[:256]), ds.y_test[:256]


@pytest.fixture(scope="session")
def data_npz(tmp_path_factory, mnist):
    """npz:PATH with x_train, y_train, x_test, y_test, members stored uncompressed (np.savez)."""
    xtr, ytr, xte, yte = mnist
    p = tmp_path_factory.mktemp("data") / "mnist.npz"
    np.savez(p, x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)
    return f"npz:{p}"


def without_timing(csv_text: str) -> str:
    """A sweep CSV without its two measured columns (every other byte must match)."""
    rows = list(csv.reader(io.StringIO(csv_text)))
    drop = {rows[0].index(c) for c in TIMING_COLUMNS}
    return "\n".join(",".join(v for i, v in enumerate(r) if i not in drop) for r in rows) + "\n"
