"""Images/s of hwsim beside ONNX Runtime and PyTorch x86 int8 on the same networks (a script, not a test).

Every network is one float PyTorch model with random weights (BatchNorm statistics randomised so
folding is not trivial): ResNet-18 (torchvision layout: 7x7/2 stem, 3x3/2 max pool, 2-2-2-2 basic
blocks of 64-128-256-512 channels) at 3x32x32 and 3x224x224, and the architectures of
``frontends.pytorch.models`` at 3x32x32 (SmallCNN, MobileNetV2, and MobileNetV3-small / EfficientNet-B0 style:
hard-swish / SiLU tables, squeeze-excitation mul). From it:

- hwsim: ``frontends.pytorch.export.to_graph`` -> ``compile_model`` (calibration on 32 random
  normal images) -> ``run_quantized`` in one batch, for each ``--profile``;
- ONNX Runtime: ``hwsim.onnx_export.to_onnx`` of the int8-onnxruntime compilation (the same
  integers as hwsim's int8-onnxruntime profile), uint8 codes in, ``intra_op_num_threads`` = T (not for
  mobilenetv3 / efficientnet: their hard-swish / SiLU tables have no ORT quantized op; the column is empty);
- PyTorch x86 int8: FX post-training quantization of the same float model (qconfig "x86").

Same batch and thread count for all (numba threads = torch threads = ORT intra-op threads);
one warm-up run, then the minimum of ``--repeat`` blocked timings of a whole batch.

    python benchmarks/network.py [--nets resnet18-32,mobilenetv2,smallcnn] [--batch 256] [--threads 2]
        [--repeat 3] [--profile int8-onnxruntime --profile int8-acc16-sat] [--hwsim-only] [--json]

``--scaling`` instead times every engine at 1 and at ``--threads`` threads, the timings interleaved (each
configuration in turn runs an untimed batch -- the previous engine's spinning threads go idle, this one's wake --
then a timed one; ``--repeat`` rounds, the minimum of each), and prints each
engine's T-thread / 1-thread ratio from that one run, beside a host probe: T copies of a fixed integer loop
(numba, no memory traffic) on T threads against one copy on one thread -- what the machine itself gives
(a VM whose vCPUs share a core, or a host slowing them, shows up there, not only in the engines).

``--hwsim-only`` times hwsim alone: run it with ``PYTHONPATH=/path/to/other/checkout`` to time
another version of hwsim on the same networks (the "before" column). ``--memory`` reports the
peak resident memory of one hwsim run (a fresh subprocess per network and profile).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

NETS = ("resnet18-32", "resnet18-224", "mobilenetv2", "mobilenetv3", "efficientnet", "smallcnn")
NO_ORT = ("mobilenetv3", "efficientnet")  # hardswish / silu tables: no ONNX Runtime quantized op


def _best(fn, repeat: int) -> float:
    fn()  # warm-up (numba compilation, engine initialisation)
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def build(net: str):
    """(float torch model in eval mode, input shape (C, H, W)) with seeded random weights."""
    import torch
    import torch.nn as nn

    from frontends.pytorch.models import BasicBlock, build_model

    torch.manual_seed(0)
    if net.startswith("resnet18"):
        size = int(net.split("-")[1])

        class ResNet18(nn.Module):
            def __init__(self):
                super().__init__()
                layers: list[nn.Module] = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                                           nn.MaxPool2d(3, 2, 1)]
                cin = 64
                for i, c in enumerate((64, 128, 256, 512)):
                    for j in range(2):
                        layers.append(BasicBlock(cin, c, 2 if (i > 0 and j == 0) else 1))
                        cin = c
                self.features = nn.Sequential(*layers)
                self.pool = nn.AdaptiveAvgPool2d(1)
                self.fc = nn.Linear(512, 1000)

            def forward(self, x):
                return self.fc(torch.flatten(self.pool(self.features(x)), 1))

        model, shape = ResNet18(), (3, size, size)
    else:
        model, shape = build_model(net, 10, 3), (3, 32, 32)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.1, 0.1)
    return model.eval(), shape


def _images(n: int, shape, seed: int):
    import numpy as np

    return np.random.default_rng(seed).standard_normal((n, *shape)).astype(np.float32)


def hwsim_rate(net: str, profile: str, batch: int, repeat: int) -> float:
    from frontends.pytorch.export import to_graph
    from hwsim.compile import compile_model
    from hwsim.execute import run_quantized
    from hwsim.profile import load_profile

    model, shape = build(net)
    qg = compile_model(to_graph(model, shape), load_profile(profile), _images(32, shape, 1))
    x = _images(batch, shape, 2)
    return batch / _best(lambda: run_quantized(qg, x, batch_size=batch), repeat)


def kernel_profile(net: str, profile: str, batch: int, repeat: int) -> dict:
    """Exclusive time per kernel of one hwsim batch (ms, the minimum over ``repeat`` batches of each timer):
    every hwsim kernel a batch calls (input quantizer, pad / im2col, int8 GEMM, depthwise taps and chunks, fused
    epilogue) is wrapped with a timer that measures its own time in its own thread (batch workers summed: CPU time, not
    thread-pool waits); per layer kind (conv kxk, depthwise, linear, add, ...) the rest of its layers' time is
    "<kind> other". Timers add a few microseconds per call."""
    import threading
    from collections import defaultdict

    import numpy as np

    from frontends.pytorch.export import to_graph
    from hwsim import execute, kernels, ops
    from hwsim.compile import compile_model
    from hwsim.profile import load_profile

    model, shape = build(net)
    qg = compile_model(to_graph(model, shape), load_profile(profile), _images(32, shape, 1))
    x = _images(batch, shape, 2)
    lock = threading.Lock()
    acc = defaultdict(float)
    local = threading.local()

    def add(key, dt):
        with lock:
            acc[key] += dt

    def timed(key, fn):
        def wrapper(*a, **k):
            t = time.perf_counter()
            inner0 = getattr(local, "inner", 0.0)
            try:
                return fn(*a, **k)
            finally:
                dt = time.perf_counter() - t
                local.inner = inner0 + dt  # the enclosing layer subtracts its kernels' time
                add(key, dt)
        return wrapper

    def kind(lay):
        if lay.op == "conv2d":
            w = lay.w_q
            g = lay.attrs.get("groups", 1)
            if g > 1 and g == w.shape[0] and w.shape[1] == 1:
                return "depthwise"
            return f"conv {w.shape[2]}x{w.shape[3]}"
        return lay.op

    real_layer = execute.run_layer

    def run_layer(qg_, lay, *a, **k):
        t = time.perf_counter()
        local.inner = 0.0
        try:
            return real_layer(qg_, lay, *a, **k)
        finally:
            add(f"{kind(lay)} other", time.perf_counter() - t - local.inner)
            local.inner = 0.0

    patches = [(execute, "run_layer", run_layer)]
    for name, key in (("pad_hwc", "pad_hwc (channels-last copy)"), ("im2col_hwc", "im2col_hwc"),
                      ("depthwise_acc", "depthwise taps"), ("depthwise_chunks", "depthwise chunks + stages"),
                      ("_INT_MM", "int8 GEMM (torch._int_mm)")):
        real = kernels.int_mm() if name == "_INT_MM" else getattr(kernels, name)
        patches.append((kernels, name, timed(key, real)))
    patches.append((kernels.Epilogue, "run", timed("fused epilogue", kernels.Epilogue.run)))
    grid = qg.grids[qg.input_name]
    patches.append((grid, "quantize", timed("input quantizer", grid.quantize)))
    saved = [(o, n, o.__dict__.get(n, None) if isinstance(o, type) else getattr(o, n, None)) for o, n, _ in patches]
    execute.run_quantized(qg, x, batch_size=batch)  # warm-up
    best = {}
    try:
        for o, n, f in patches:
            setattr(o, n, f)
        for _ in range(repeat):
            acc.clear()
            t = time.perf_counter()
            execute.run_quantized(qg, x, batch_size=batch)
            acc["wall"] = time.perf_counter() - t
            for k, v in acc.items():
                best[k] = min(best.get(k, np.inf), v)
    finally:
        for o, n, f in saved:
            if o is grid and f is not None and "quantize" not in grid.__dict__:
                del grid.quantize
            else:
                setattr(o, n, f)
    del ops
    return {k: round(v * 1e3, 2) for k, v in sorted(best.items(), key=lambda kv: -kv[1])}


def ort_rate(net: str, batch: int, threads: int, repeat: int) -> float:
    import onnxruntime as ort

    from frontends.pytorch.export import to_graph
    from hwsim.compile import compile_model
    from hwsim.onnx_export import to_onnx
    from hwsim.profile import load_profile

    model, shape = build(net)
    qg = compile_model(to_graph(model, shape), load_profile("int8-onnxruntime"), _images(32, shape, 1))
    sess = _ort_session(qg, threads)
    codes = qg.grids[qg.input_name].quantize(_images(batch, shape, 2)).astype("uint8")
    return batch / _best(lambda: sess.run(None, {qg.input_name: codes}), repeat)


def _ort_session(qg, threads: int):
    """An ONNX Runtime session of hwsim's int8-onnxruntime compilation (hwsim.onnx_export), T intra-op threads."""
    import onnxruntime as ort

    from hwsim.onnx_export import to_onnx

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(to_onnx(qg).SerializeToString(), so, providers=["CPUExecutionProvider"])


def _torch_x86_int8(model, calib):
    """FX post-training quantization of the float model (qconfig "x86"), calibrated on ``calib``."""
    import torch
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = "x86"
    c = torch.from_numpy(calib)
    prepared = prepare_fx(model, get_default_qconfig_mapping("x86"), (c,))
    with torch.no_grad():
        prepared(c)
    return convert_fx(prepared)


def torch_rate(net: str, batch: int, repeat: int) -> float:
    import torch

    model, shape = build(net)
    qmodel = _torch_x86_int8(model, _images(32, shape, 1))
    x = torch.from_numpy(_images(batch, shape, 2))

    def run():
        with torch.no_grad():
            qmodel(x)

    return batch / _best(run, repeat)


def _probe_kernel():
    import numba
    import numpy as np

    @numba.njit(nogil=True)
    def spin(n, width):  # `width` independent 64-bit LCGs: integer multiply-adds in registers, no memory traffic
        x = np.arange(1, width + 1).astype(np.uint64)
        for _ in range(n):
            for j in range(width):
                x[j] = x[j] * np.uint64(6364136223846793005) + np.uint64(1442695040888963407)
        return x.sum()

    @numba.njit(nogil=True)
    def stream(buf, reps):  # sum a thread's own buffer `reps` times: its cache level's bandwidth
        t = np.int64(0)
        for _ in range(reps):
            for i in range(buf.size):
                t += buf[i]
        return t

    from hwsim import simd

    if not simd.vnni():
        return spin, stream, None

    @numba.njit(nogil=True)
    def spin_vnni(n, width):  # 8 independent VPDPBUSD accumulators on registers (width unused): the
        buf = np.arange(16 * 9).astype(np.int32)  # AVX-512 dot-product ports, as hwsim's VNNI kernel uses them
        a, b = simd.vload(buf, 0), simd.vload(buf, 16)
        c0, c1, c2, c3 = simd.vload(buf, 32), simd.vload(buf, 48), simd.vload(buf, 64), simd.vload(buf, 80)
        c4, c5, c6, c7 = simd.vload(buf, 96), simd.vload(buf, 112), simd.vload(buf, 128), simd.vload(buf, 0)
        for _ in range(n):
            c0, c1, c2, c3 = simd.vdp(c0, a, b), simd.vdp(c1, a, b), simd.vdp(c2, a, b), simd.vdp(c3, a, b)
            c4, c5, c6, c7 = simd.vdp(c4, a, b), simd.vdp(c5, a, b), simd.vdp(c6, a, b), simd.vdp(c7, a, b)
        for i, c in enumerate((c0, c1, c2, c3, c4, c5, c6, c7)):
            simd.vstore(buf, 16 * i, c)
        return buf.sum()

    return spin, stream, spin_vnni


def scaling(net: str, profiles: list[str], batch: int, threads: int, repeat: int) -> dict:
    """T-thread ÷ 1-thread throughput of torch x86 int8, ONNX Runtime and hwsim's profiles on one net, from
    interleaved blocked timings (see the module docstring), and of the host probes."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    import torch

    from frontends.pytorch.export import to_graph
    from hwsim import kernels
    from hwsim.compile import compile_model
    from hwsim.execute import run_quantized
    from hwsim.profile import load_profile

    model, shape = build(net)
    calib = _images(32, shape, 1)
    x = _images(batch, shape, 2)
    qmodel, xt = _torch_x86_int8(model, calib), torch.from_numpy(x)
    graph = to_graph(model, shape)
    qgs = {p: compile_model(graph, load_profile(p), calib) for p in profiles}
    fns = {}

    def torch_run(t):
        torch.set_num_threads(t)
        with torch.no_grad():
            qmodel(xt)
    fns["torch_x86_int8"] = torch_run
    if net not in NO_ORT:
        qg = qgs.get("int8-onnxruntime") or compile_model(graph, load_profile("int8-onnxruntime"), calib)
        codes = qg.grids[qg.input_name].quantize(x).astype("uint8")
        sessions = {t: _ort_session(qg, t) for t in sorted({1, threads})}
        fns["onnxruntime"] = lambda t: sessions[t].run(None, {qg.input_name: codes})
    for p, qg in qgs.items():
        def hw_run(t, qg=qg):
            kernels.set_threads(t)
            run_quantized(qg, x, batch_size=batch, threads=t)
        fns[p] = hw_run
    (spin, stream, spin_vnni), pool = _probe_kernel(), ThreadPoolExecutor(threads)
    # one chain: latency-bound (two vCPUs on one core's hyperthreads still give ~T x); 32 chains: the
    # multiplier's throughput (hyperthreads of one core share it: ~1 x); VNNI: the vector dot-product units;
    # streams: each thread reads its own 1 MiB (private L2) / 64 MiB (shared L3 and memory) buffer
    probes = [("host probe 1 chain", spin, 20_000_000, 1), ("host probe 32 chains", spin, 1_000_000, 32)]
    if spin_vnni is not None:
        probes.append(("host probe VNNI", spin_vnni, 5_000_000, 0))
    for name, f, n, width in probes:
        def probe(t, f=f, n=n, width=width):  # t copies of the loop, one per thread
            list(pool.map(f, [n] * t, [width] * t))
        fns[name] = probe
    bufs = {mib: [np.ones((mib << 20) // 8, np.int64) for _ in range(threads)] for mib in (1, 64)}
    for mib, reps in ((1, 200), (64, 3)):
        def probe(t, mib=mib, reps=reps):
            list(pool.map(stream, bufs[mib][:t], [reps] * t))
        fns[f"host probe {mib} MiB stream"] = probe
    best = {(k, t): float("inf") for k in fns for t in sorted({1, threads})}
    for k, t in best:
        fns[k](t)  # warm-up (compilation, engine initialisation)
    for _ in range(repeat):
        for k, t in best:
            fns[k](t)  # untimed: the previous engine's threads stop spinning (ORT's pool, OpenMP), this one's wake
            t0 = time.perf_counter()
            fns[k](t)
            best[k, t] = min(best[k, t], time.perf_counter() - t0)
    pool.shutdown()
    kernels.set_threads(threads)
    torch.set_num_threads(threads)
    row = {}
    for k in fns:
        if k.startswith("host probe"):  # T copies in best[k, T] against one copy in best[k, 1]
            row[f"{k} {threads}/1"] = threads * best[k, 1] / best[k, threads]
            continue
        row[f"{k} 1 thr img/s"] = batch / best[k, 1]
        row[f"{k} {threads} thr img/s"] = batch / best[k, threads]
        row[f"{k} {threads}/1"] = best[k, 1] / best[k, threads]
    return row


def peak_memory_mb(net: str, profile: str, batch: int) -> float:
    """Peak RSS (MiB) of a fresh process that compiles and runs one hwsim batch (torch only exports)."""
    code = ("import resource, sys; sys.argv = ['x']; import benchmarks.network as b; "
            f"b.hwsim_rate({net!r}, {profile!r}, {batch}, 1); "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), root) if p))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=root, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nets", default="resnet18-32,mobilenetv2,mobilenetv3,efficientnet,smallcnn", help=f"comma list of {', '.join(NETS)}")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--profile", action="append", default=None,
                    help="hwsim profile (repeatable; default int8-onnxruntime, int8-tflite, int8-acc16-sat)")
    ap.add_argument("--hwsim-only", action="store_true", help="time hwsim alone (e.g. another checkout)")
    ap.add_argument("--memory", action="store_true", help="also the peak RSS of one hwsim run per net/profile")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    ap.add_argument("--scaling", action="store_true",
                    help="instead: T-thread / 1-thread ratios of every engine and a host probe, timings interleaved")
    ap.add_argument("--kernels", action="store_true",
                    help="instead: exclusive time per kernel of one hwsim batch (ms) per net and profile")
    args = ap.parse_args(argv)
    profiles = args.profile or ["int8-onnxruntime", "int8-tflite", "int8-acc16-sat"]
    nets = [n for n in args.nets.split(",") if n]
    for n in nets:
        if n not in NETS:
            ap.error(f"unknown net {n!r}: allowed {', '.join(NETS)}")

    import torch

    from hwsim import kernels

    kernels.set_threads(args.threads)
    torch.set_num_threads(args.threads)
    import hwsim
    from hwsim.cpu import cpu_summary

    if args.scaling:
        print(f"cpu: {cpu_summary()}", flush=True)
        for net in nets:
            row = scaling(net, profiles, args.batch, args.threads, args.repeat)
            print(net, " | ".join(f"{k}: {v:.4g}" for k, v in row.items()), flush=True)
        return
    if args.kernels:
        for net in nets:
            for p in profiles:
                print(net, p, json.dumps(kernel_profile(net, p, args.batch, args.repeat)), flush=True)
        return

    if not args.json:
        print(f"cpu: {cpu_summary()}", flush=True)  # the ratios depend on it (AMX / VNNI kernels)
    rows = []
    for net in nets:
        row = dict(net=net, batch=args.batch, threads=args.threads, hwsim=hwsim.__file__)
        if args.json:
            row["cpu"] = cpu_summary()
        if not args.hwsim_only:
            row["torch_x86_int8"] = torch_rate(net, args.batch, args.repeat)
            row["onnxruntime"] = None if net in NO_ORT else ort_rate(net, args.batch, args.threads, args.repeat)
        for p in profiles:
            row[p] = hwsim_rate(net, p, args.batch, args.repeat)
            if "torch_x86_int8" in row:
                row[f"{p} / torch"] = row[p] / row["torch_x86_int8"]
            if args.memory:
                row[f"{p} peak MiB"] = peak_memory_mb(net, p, args.batch)
        rows.append(row)
        if not args.json:
            print(" | ".join(f"{k}: {v:.4g}" if isinstance(v, float) else f"{k}: {v}" for k, v in row.items()),
                  flush=True)
    if args.json:
        print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
