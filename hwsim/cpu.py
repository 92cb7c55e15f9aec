"""The CPU this process runs on, read from /proc/cpuinfo (empty / "unknown" where unreadable).

Engines pick their kernels by it, and the kernels differ in arithmetic: PyTorch's x86 quantized engine sends
convolutions to oneDNN only with AVX512-VNNI, and oneDNN's AMX and non-AMX kernels apply the scales differently
(profiles int8-pytorch-onednn / int8-pytorch-onednn-vnni; frontends.pytorch.importers.engine_profile). Speed
ratios depend on it too: the benchmark scripts print :func:`cpu_summary` beside their tables."""
from __future__ import annotations

import os

# the flags that decide which integer kernels PyTorch / oneDNN / ONNX Runtime run here
KERNEL_FLAGS = ("avx2", "avx512bw", "avx512_vnni", "avx_vnni", "amx_tile", "amx_int8")


def _cpuinfo() -> dict[str, str]:
    """The first processor's 'key: value' lines of /proc/cpuinfo ({} where unreadable)."""
    info = {}
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if not line.strip():
                    break  # the first processor's block ends here
                k, _, v = line.partition(":")
                info[k.strip()] = v.strip()
    except OSError:
        pass
    return info


def cpu_flags() -> set[str]:
    """The CPU feature flags (empty where unreadable)."""
    return set(_cpuinfo().get("flags", "").split())


def cpu_summary() -> str:
    """One line: model name, family / model, logical CPUs and which of KERNEL_FLAGS are present."""
    info = _cpuinfo()
    flags = set(info.get("flags", "").split())
    have = ", ".join(f for f in KERNEL_FLAGS if f in flags) or "none of " + "/".join(KERNEL_FLAGS)
    return (f"{info.get('model name', 'unknown CPU')} (family {info.get('cpu family', '?')} model "
            f"{info.get('model', '?')}), {os.cpu_count()} CPUs; kernel flags: {have}")
