"""Without PyTorch the simulator still works; torch-only commands say what to install (one line)."""
from __future__ import annotations

import subprocess
import sys

import pytest

BOOT = r"""
import sys
class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError("No module named 'torch'", name="torch")
        return None
sys.meta_path.insert(0, _NoTorch())
for m in [m for m in sys.modules if m == "torch" or m.startswith("torch.")]:
    del sys.modules[m]
from hwsim.cli import main
sys.argv = ["hwsim"] + sys.argv[1:]
main()
"""


def _hwsim(*args):
    return subprocess.run([sys.executable, "-c", BOOT, *args], capture_output=True, text=True, timeout=600)


def test_run_works_without_torch():
    r = _hwsim("run", "--profile", "int8-tflite", "--limit", "40", "-q")
    assert r.returncode == 0, r.stderr
    assert "simulated accuracy" in r.stdout


@pytest.mark.parametrize("args", [("compare", "--limit", "20", "-q"),
                                  ("sweep", "-p", "int8-tflite", "--compare", "--limit", "20", "-q"),
                                  ("train", "--epochs", "1")])
def test_torch_commands_say_what_to_install(args):
    r = _hwsim(*args)
    assert r.returncode != 0
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "pip install 'hwsim[torch]'" in err[0], err[0]
