"""Fixtures shared by the kernel tests."""

import pytest

from hwsim import kernels


@pytest.fixture(params=[1, 2], ids=["threads1", "threads2"])
def threads(request):
    """Run the test with 1 and with 2 numba / hwsim worker threads (restored afterwards)."""
    prev = kernels.numba.get_num_threads()
    kernels.set_threads(request.param)
    yield request.param
    kernels.set_threads(prev)
