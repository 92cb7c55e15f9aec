"""Fixtures the frontend tests share."""

import pytest

from hwsim.data import Dataset, balanced_prefix, load_dataset


@pytest.fixture(scope="module")
def tiny():
    """192 training and 64 test images of the bundled MNIST subset, every digit in proportion (the bundled
    splits are stored class by class: a plain prefix would be one or two digits)."""
    ds = load_dataset("default", seed=0)
    tr, te = balanced_prefix(ds.y_train, 192), balanced_prefix(ds.y_test, 64)
    return Dataset("mnist-tiny", ds.x_train[tr], ds.y_train[tr], ds.x_test[te], ds.y_test[te], ds.num_classes)
