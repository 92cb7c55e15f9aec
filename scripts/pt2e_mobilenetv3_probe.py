"""Probe: pt2e MobileNetV3 (the bundled MobileNetV3-style net, X86InductorQuantizer) compiled by torch.compile
(inductor, freezing) on x86: every float section's float32 arithmetic, read from the generated code
(TORCH_LOGS=output_code) and checked whole-network against torch.compile's integers.

What inductor generates for the float sections X86InductorQuantizer leaves (torch 2.13, torchao 0.18):
- conv -> hardswish -> quantize, the conv output used once: ``onednn.qconv_pointwise(..., "hardswish")`` with a
  uint8 output: oneDNN eltwise_hardswish (alpha 1/6, beta 1/2) on the float conv output v,
  h = fl32(v * clip(fl32(fl32(v * fl32(1/6)) + 0.5), 0, 1)) (a multiply then an add: an FMA differs), then x D, z_y
  before rounding (scripts/pt2e_conv_hardswish_probe.py);
- a conv (+ relu / hardswish) whose float output has two users (the squeeze-excite input: the quantize feeding the
  pool, and the SE mul): ``qconv_pointwise`` with a float32 output (output scale 1.0, the post-op applied in oneDNN),
  then a C++ kernel quantizes it round(fl32(v * c)) + z_y (c the float32 literal of 1/s_y, zero point after
  rounding) and the pool reads those integers (requant.pool_form = "inductor");
- the SE gate: the last SE conv with a float32 output g (post-op none); a C++ kernel
  (cpp_fused_hardsigmoid_mul_quantize_per_tensor) computes y = fl32(v * fl32(min(max(fl32(g + 3), 0), 6) / 6)),
  then round(fl32(y * c)) + z_y;
- linear -> hardswish -> quantize: ``qlinear_pointwise`` float32 output, a C++ kernel (cpp_fused_hardswish_quantize
  _per_tensor): fl32(fl32(v * min(max(fl32(v + 3), 0), 6)) / 6), then round(fl32(y * c)) + z_y;
- the residual adds: oneDNN's sum post-op, float output (hwsim.ops.add.onednn_sum).

Run: ``PYTHONPATH=. python scripts/pt2e_mobilenetv3_probe.py [N]`` (N images, default 256): per candidate formula
set, how many integers of every quantized tensor differ from torch.compile's (the model's own numbers; each
quantize node's prediction is made from the probe's own earlier integers: a whole-network check)."""
from __future__ import annotations

import sys

import numpy as np
import torch

from tests.importers.test_given_network import _bundled_torch, _images
from tests.importers.test_pt2e import Q, cut, inductor, pt2e_int8
from hwsim.ops.add import fma_f32

f32 = np.float32
aten = torch.ops.aten
qd = torch.ops.quantized_decomposed


def const(gm, a):
    if isinstance(a, torch.fx.Node) and a.op == "get_attr":
        obj = gm
        for p in a.target.split("."):
            obj = getattr(obj, p)
        return obj
    return a


def rne(v):
    return np.rint(v.astype(f32))


def hs_gate(v, form):
    """oneDNN eltwise_hardswish's gate clip(v/6 + 1/2, 0, 1) (form: how alpha v + beta rounds)."""
    sixth = f32(1) / f32(6)
    if form == "fma":
        t = fma_f32(v, sixth, f32(0.5))
    elif form == "mul_add":
        t = ((v * sixth).astype(f32) + f32(0.5)).astype(f32)
    else:  # "table": fl32(v + 3) / 6 as the C++ kernel (a neighbour)
        t = ((v + f32(3)).astype(f32) / f32(6)).astype(f32)
    return np.clip(t, f32(0), f32(1))


def simulate(gm, q0, forms):
    """Every quantize node's integers (name -> array) computed from the input codes q0 under ``forms``."""
    env, out = {}, {}
    users = {n.name: len(n.users) for n in gm.graph.nodes}
    for n in gm.graph.nodes:
        f, a = n.target, n.args
        if n.op != "call_function":
            continue
        if f == Q and a[0].op == "placeholder":
            env[n.name] = ("q", q0.astype(np.int64), float(a[1]), int(a[2]))
        elif f == Q:
            s, z = float(a[1]), int(a[2])
            kind, v, *rest = env[a[0].name]
            if kind == "q":  # a dequantized tensor moved (flatten) and quantized again with its own parameters
                y = v
            elif kind == "fused" or (kind == "mac" and rest[1]):  # oneDNN's uint8 output: x D, zero point before rounding
                d = f32(1) / (f32(1) / (f32(1) / f32(s)))
                y = rne(((v * d).astype(f32) + f32(z)).astype(f32))
            else:  # a C++ kernel: x fl32(1/s), rounded, zero point after
                c = f32(1.0 / s) if forms["cpp_quant"] == "recip" else None
                y = rne((v * c).astype(f32)) + z if c is not None else rne((v / f32(s)).astype(f32)) + z
            env[n.name] = ("q", np.clip(y, 0, 255).astype(np.int64), s, z)
            out[n.name] = env[n.name][1]
        elif f in (qd.dequantize_per_tensor.default,):
            if a[0].op == "get_attr":
                continue
            env[n.name] = env[a[0].name]
        elif f == qd.dequantize_per_channel.default:
            continue
        elif f in (aten.conv2d.default, aten.linear.default):
            _, xq, sx, zx = env[a[0].name]
            w = a[1]
            wq = const(gm, w.args[0]).numpy().astype(np.float64)
            sw = const(gm, w.args[1]).numpy().astype(f32)
            b = const(gm, a[2]).detach().numpy().astype(f32)
            xin = torch.from_numpy((xq - zx).astype(np.float64))
            if f == aten.conv2d.default:
                st, pd, dl, gr = (list(a[3:]) + [1, 0, 1, 1][max(len(a) - 3, 0):])[:4]
                acc = torch.nn.functional.conv2d(xin, torch.from_numpy(wq), None, st, pd, dl, gr).numpy()
                cshape = (1, -1, 1, 1)
            else:
                gr = 1
                acc = (xin @ torch.from_numpy(wq).T).numpy()
                cshape = (1, -1)
            accf = acc.astype(f32)
            if gr > 1 or n.name in forms.get("sequential", ()):  # depthwise: brdgmm_dw on avx512_core_vnni, the scales one after the other
                v = ((accf * f32(sx)).astype(f32) * sw.reshape(cshape)).astype(f32)
            else:
                v = (accf * (f32(sx) * sw).astype(f32).reshape(cshape)).astype(f32)
            v = (v + b.reshape(cshape)).astype(f32)
            env[n.name] = ("mac", v, f == aten.linear.default, users[n.name] == 1)
        elif f in (aten.relu.default, aten.hardswish.default, aten.hardtanh.default):
            kind, v, linear, once = env[a[0].name]
            fused_q = kind == "mac" and once and users[n.name] == 1 and next(iter(n.users)).target == Q
            if f == aten.relu.default:
                h = np.maximum(v, f32(0))
            elif f == aten.hardtanh.default:
                h = np.clip(v, f32(0), f32(6))
            elif kind == "mac" and not linear:  # oneDNN's eltwise post-op (float or uint8 output)
                h = (v * hs_gate(v, forms["hs_gate"])).astype(f32)
            else:  # the C++ kernel (linear's float output)
                r = np.minimum(np.maximum((v + f32(3)).astype(f32), f32(0)), f32(6))
                h = ((v * r).astype(f32) / f32(6)).astype(f32)
            env[n.name] = ("fused" if fused_q else "float", h)
        elif f == aten.hardsigmoid.default:
            _, g, *_ = env[a[0].name]
            r = np.minimum(np.maximum((g + f32(3)).astype(f32), f32(0)), f32(6))
            if forms["hsig"] == "div":
                env[n.name] = ("float", (r / f32(6)).astype(f32))
            else:
                env[n.name] = ("float", (r * (f32(1) / f32(6))).astype(f32))
        elif f == aten.mul.Tensor:
            _, x, *_ = env[a[0].name]
            _, h, *_ = env[a[1].name]
            env[n.name] = ("float", (x * h).astype(f32))
        elif f == aten.add.Tensor:
            vals = []
            for x in a:
                e = env[x.name]
                if e[0] == "q":
                    vals.append(((e[1] - e[3]).astype(f32) * f32(e[2])).astype(f32))
                else:
                    vals.append(e[1])
            env[n.name] = ("float", (vals[0] + vals[1]).astype(f32))
        elif f == aten.adaptive_avg_pool2d.default:
            _, xq, s, z = env[a[0].name]
            d = ((xq - z).astype(f32) * f32(s)).astype(f32)
            acc = np.zeros(d.shape[:2], f32)
            for i in range(d.shape[2]):
                for j in range(d.shape[3]):
                    acc = (acc + d[:, :, i, j]).astype(f32)
            env[n.name] = ("float", (acc / f32(d.shape[2] * d.shape[3])).astype(f32)[:, :, None, None])
        elif f in (aten.flatten.using_ints, aten.view.default, aten.reshape.default):
            e = env[a[0].name]
            env[n.name] = (e[0], e[1].reshape(e[1].shape[0], -1), *e[2:])
        elif f in (aten.dropout.default, aten.clone.default):
            env[n.name] = env[a[0].name]
        else:
            raise SystemExit(f"probe: node {n.name} ({f}) not handled")
    return out


def check(n=256):
    """{candidate: {quantize node: integers differing from torch.compile}} on n bundled test images, and the
    number of integers compared."""
    torch.set_num_threads(1)
    m, spec = _bundled_torch("mobilenetv3")
    c = pt2e_int8(m, spec.shape, _images("mobilenetv3", 8, 9))
    qs = [nd.name for nd in c.graph.nodes if nd.target == Q]
    ys = dict(zip(qs, inductor(cut(c, qs), _images("mobilenetv3", n, 0))))
    res = {}
    for name, forms in CANDIDATES.items():
        out = simulate(c, ys[qs[0]], forms)
        res[name] = {k: int((out[k].reshape(ys[k].shape) != ys[k]).sum()) for k in qs[1:]}
    return res, sum(ys[k].size for k in qs[1:])


CANDIDATES = {  # the first is the arithmetic found (0 differ); each other changes one step of it
    "found": {"hs_gate": "mul_add", "hsig": "div", "cpp_quant": "recip"},
    "oneDNN gate fma(v, 1/6, 1/2)": {"hs_gate": "fma", "hsig": "div", "cpp_quant": "recip"},
    "oneDNN gate fl32(v + 3) / 6 (the C++ kernel's form)": {"hs_gate": "table", "hsig": "div", "cpp_quant": "recip"},
    "SE hard-sigmoid x fl32(1/6)": {"hs_gate": "mul_add", "hsig": "mul", "cpp_quant": "recip"},
    "C++ quantize fl32(v / s)": {"hs_gate": "mul_add", "hsig": "div", "cpp_quant": "div"},
}


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("-")]
    n = int(args[0]) if args else 256
    res, total = check(n)
    print(f"{n} images, {len(next(iter(res.values())))} quantized tensors, {total} integers")
    for name, bad in res.items():
        first = next((k for k, v in bad.items() if v), None)
        print(f"  {sum(bad.values()):9d} differ  {name}" + (f"  (first: {first}, {bad[first]})" if first else ""))
        if "-v" in sys.argv:
            print("     ", {k: v for k, v in bad.items() if v})


if __name__ == "__main__":
    main()
