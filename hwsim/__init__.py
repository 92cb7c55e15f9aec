"""hwsim: a bit-accurate integer accelerator simulator.

Public entry points:

- :mod:`hwsim.ops` — single-layer integer ops with explicit quantization parameters
  (golden vectors, verification).
- :mod:`hwsim.profile` — hardware profiles (TOML, frozen dataclass).
- :mod:`hwsim.graph` — the ``.hwsim`` model file and a builder API.
- :mod:`hwsim.compile` / :mod:`hwsim.execute` — float graph -> quantized graph -> integers.
"""

__version__ = "0.1.0"

from hwsim.errors import HwsimError  # noqa: F401
