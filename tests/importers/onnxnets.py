"""Small ONNX models written with onnx.helper (and onnxruntime's float outputs) for the importer tests, and a test
oracle for ONNX Runtime's QDQ float path (graph optimizations off: DequantizeLinear -> MLAS float op ->
QuantizeLinear) on x86-64, one thread: :func:`ort_float_path`. No hwsim profile models that path yet
(docs/semantics.md section 11); this is what such a profile option would have to compute."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def model(nodes, inits: dict, in_shape=(1, 3, 8, 8), out="y", opset: int = 13, in_name: str = "x",
          extra_inputs=()) -> onnx.ModelProto:
    """A one-input, one-output float model; ``inits`` {name: array} become initializers (ints stay ints)."""
    tensors = [numpy_helper.from_array(v if v.dtype.kind in "iub" else v.astype(np.float32), k)
               for k, v in inits.items()]
    g = helper.make_graph(nodes, "t", [helper.make_tensor_value_info(in_name, TensorProto.FLOAT, in_shape),
                                       *extra_inputs],
                          [helper.make_empty_tensor_value_info(out)], initializer=tensors)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], producer_name="hwsim-tests")
    m.ir_version = 8 if opset <= 18 else 9  # what onnxruntime 1.32 reads for these opsets
    # the output's type and shape, as an exporter writes them (onnx.checker requires them)
    inferred = onnx.shape_inference.infer_shapes(m)
    m.graph.output[0].CopyFrom(inferred.graph.output[0])
    return m


def ort_run(m: onnx.ModelProto, x: np.ndarray, in_name: str = "x") -> np.ndarray:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # the model as written
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {in_name: x})[0]


def rand(rng, *shape, scale: float = 0.3) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def save(m: onnx.ModelProto, path) -> str:
    onnx.save(m, str(path))
    return str(path)


# ----------------------------------------------------------------------------- ORT's QDQ float path (oracle)
MLAS_STRIDE = 128  # MLAS_SGEMM_STRIDEN = MLAS_SGEMM_STRIDEK (mlasi.h)


def mlas_strides(n: int, k: int) -> tuple[int, int]:
    """(StrideN, StrideK) of MlasConvOperation / MlasSgemmOperation (convolve.cpp, sgemm.cpp): expand the N
    stride while K is small, else the K stride while N is small."""
    sn, sk = MLAS_STRIDE, MLAS_STRIDE
    if n >= k:
        while sk // 2 >= k:
            sn, sk = sn * 2, sk // 2
    else:
        while sn > 16 and sn // 2 >= n:
            sn, sk = sn // 2, sk * 2
    return sn, sk


def mlas_sgemm(a, cols, c):
    """MlasSgemmOperation(M, N, K) for alpha 1: a [M, K] filter rows, cols [K, ...N] im2col columns, c the output
    so far (None: beta = 0). M = 1: MlasSgemmKernelM1Avx (x86_64/SgemmKernelM1Avx.S): products rounded (vmulps),
    summed four rows at a time ((p0 + p1) + p2) + p3, each group then added to C; else the FMA kernels: per K
    block of StrideK, a chain fl32(fma(a, b, acc)) from 0, then C = fl32(acc + C)."""
    from hwsim.ops.add import fma_f32

    m, k = a.shape
    out_shape = (cols.shape[1], m) + cols.shape[2:]
    zero = np.zeros(out_shape, np.float32)
    if m == 1:
        p = [(cols[i] * a[0, i]).astype(np.float32)[:, None] for i in range(k)]
        acc = zero if c is None else c
        i = 0
        while k - i >= 4:
            acc = ((((p[i] + p[i + 1]) + p[i + 2]) + p[i + 3]) + acc).astype(np.float32)
            i += 4
        if (k - i) & 2:
            acc = ((p[i] + p[i + 1]) + acc).astype(np.float32)
            i += 2
        if (k - i) & 1:
            acc = (p[i] + acc).astype(np.float32)
        return acc
    _, sk = mlas_strides(int(np.prod(cols.shape[2:])), k)
    for s in range(0, k, sk):
        acc = zero
        for i in range(s, min(k, s + sk)):
            acc = fma_f32(cols[i][:, None], a[:, i].reshape((1, m) + (1,) * (cols.ndim - 2)), acc).astype(np.float32)
        c = acc if c is None else (acc + c).astype(np.float32)
    return c


def mlas_m1_transpose_b(a, col):
    """MlasSgemmKernelM1TransposeBAvx (x86_64/SgemmKernelM1TransposeBAvx.S), MLAS's route for N = 1 (a pointwise
    conv on a 1x1 output): each filter row's products rounded (vmulps) and added into 8 lanes (lane = k mod 8, the
    K tail masked to zeros); filters four at a time reduce lanes l as (((l0 + l1) + l2) + l3) + (((l4 + l5) + l6)
    + l7), a remaining pair ((l2 + l0) + (l6 + l4)) + ((l3 + l1) + (l7 + l5)), a last single row ((l0 + l1) +
    (l2 + l3)) + ((l4 + l5) + (l6 + l7)) (the shuffles' orders); a [M, K], col [K, N] -> [N, M]."""
    m, k = a.shape
    kk = -(-k // 8) * 8
    ap = np.zeros((m, kk), np.float32)
    ap[:, :k] = a
    cp = np.zeros((kk,) + col.shape[1:], np.float32)
    cp[:k] = col
    lanes = [np.zeros((col.shape[1], m), np.float32) for _ in range(8)]
    for i in range(kk):
        lanes[i % 8] = (lanes[i % 8] + (cp[i][:, None] * ap[:, i][None, :]).astype(np.float32)).astype(np.float32)
    lo = lanes
    four = (((lo[0] + lo[1]) + lo[2]) + lo[3]) + (((lo[4] + lo[5]) + lo[6]) + lo[7])
    two = ((lo[2] + lo[0]) + (lo[6] + lo[4])) + ((lo[3] + lo[1]) + (lo[7] + lo[5]))
    one = ((lo[0] + lo[1]) + (lo[2] + lo[3])) + ((lo[4] + lo[5]) + (lo[6] + lo[7]))
    rows4 = m // 4 * 4
    kind = np.array([0] * rows4 + [1] * ((m - rows4) & 2) + [2] * ((m - rows4) & 1))
    return np.where(kind == 0, four, np.where(kind == 1, two, one)).astype(np.float32)


def mlas_conv_f32(x, w, b, pad: int, stride: int, groups: int):
    """ONNX Runtime's float Conv on x86-64 (MlasConvPrepare / MlasConv, one thread): per group, GemmDirect for a
    pointwise conv (stride 1, no padding), else im2col in (channel, row, column) order and MlasConvOperation's K
    blocks (ExpandThenGemmSegmented; ExpandThenGemm when the filters outnumber the output positions: one
    MlasSgemmOperation over all K; a 1x1 output: the transposed M1 kernel, except one filter over several input
    channels: the M1 kernel (measured against ORT 1.32, tests/core/test_mlas.py)); the bias is added last
    (MlasActivation)."""
    n, c, h, wd = x.shape
    co, ci, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    ho, wo = (h + 2 * pad - kh) // stride + 1, (wd + 2 * pad - kw) // stride + 1
    fc = co // groups
    ys = []
    for gi in range(groups):
        cols = np.stack([xp[:, gi * ci + cc, ky:ky + stride * ho:stride, kx:kx + stride * wo:stride]
                         for cc in range(ci) for ky in range(kh) for kx in range(kw)], 0)  # [K, N, Ho, Wo]
        a = w[gi * fc:(gi + 1) * fc].reshape(fc, -1)
        k, size = a.shape[1], ho * wo
        if size == 1 and not (fc == 1 and ci > 1):  # N = 1 (measured: one filter over several channels is M1)
            y = mlas_m1_transpose_b(a, cols.reshape(k, -1))[:, :, None, None]
        elif (stride == 1 and pad == 0 and kh * kw == 1) or fc > size:
            y = mlas_sgemm(a, cols, None)
        else:
            sn, sk = mlas_strides(size, k)
            y = None
            for s in range(0, k, sk):
                y = mlas_sgemm(a[:, s:s + sk], cols[s:s + sk], y)
        ys.append(y)
    return (np.concatenate(ys, 1) + b.reshape(1, -1, 1, 1)).astype(np.float32)



def mlas_gemm_f32(x, w, b, trans_b: bool):
    """ORT Gemm (gemm.cc ComputeGemm) with two or more rows: the bias broadcast into Y, MlasGemm with beta = 1 (B a
    DequantizeLinear output in a QDQ model: not prepacked): per StrideK block of K (N = output features) an FMA
    chain from 0 added onto Y, which starts as the bias (measured for K up to 2,100: tests/core/test_mlas.py).
    A batch of one row takes another MLAS kernel: not modelled here."""
    from hwsim.ops.add import fma_f32

    assert x.shape[0] > 1, "a batch of one row takes another MLAS kernel (not modelled)"
    w = w if trans_b else w.T  # [out, in]
    _, sk = mlas_strides(w.shape[0], w.shape[1])
    y = np.broadcast_to(b, (x.shape[0], w.shape[0])).astype(np.float32)
    for s in range(0, x.shape[1], sk):
        acc = np.zeros((x.shape[0], w.shape[0]), np.float32)
        for i in range(s, min(x.shape[1], s + sk)):
            acc = fma_f32(x[:, i:i + 1], w[:, i][None], acc).astype(np.float32)
        y = (acc + y).astype(np.float32)
    return y


def mlas_global_avgpool_f32(x):
    """MlasPoolGlobalKernel<MLAS_AVERAGE_POOLING> (pooling.cpp): per channel four lanes (i mod 4) summed in float32,
    the vector reduced as (l0 + l2) + (l1 + l3), the tail added one by one, then divided by H*W."""
    n_, c = x.shape[:2]
    x = x.reshape(n_, c, -1)
    n = x.shape[2]
    lanes = [np.zeros((n_, c), np.float32) for _ in range(4)]
    i = 0
    while n - i >= 4:
        for j in range(4):
            lanes[j] = (lanes[j] + x[:, :, i + j]).astype(np.float32)
        i += 4
    r = ((lanes[0] + lanes[2]) + (lanes[1] + lanes[3])).astype(np.float32)
    for k in range(i, n):
        r = (r + x[:, :, k]).astype(np.float32)
    return (r / np.float32(n)).astype(np.float32).reshape(n_, c, 1, 1)


def ort_float_path(path, x: np.ndarray) -> np.ndarray:
    """What ONNX Runtime (x86-64 with FMA, one thread) computes for a QDQ model with ORT_DISABLE_ALL, node by node:
    QuantizeLinear fl32(x / s) rounded half even + z; DequantizeLinear fl32((q - z) s); Conv :func:`mlas_conv_f32`;
    Gemm :func:`mlas_gemm_f32`; GlobalAveragePool :func:`mlas_global_avgpool_f32`; Add, Mul, Relu, Clip, MaxPool
    element-wise in float32; Sigmoid MLAS's logistic; HardSigmoid clamp(fl32(alpha x) + beta, 0, 1)."""
    from hwsim.ops.activation import mlas_logistic

    f32 = np.float32
    m = onnx.load(str(path))
    g = m.graph
    env = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    env[g.input[0].name] = x
    for n in g.node:
        a = {at.name: helper.get_attribute_value(at) for at in n.attribute}
        i = [env[k] if k else None for k in n.input]
        op = n.op_type
        if op == "QuantizeLinear":
            s, z = i[1].astype(f32), i[2]
            q = np.rint((i[0] / s).astype(f32)).astype(np.int64) + z.astype(np.int64)
            info = np.iinfo(z.dtype)
            y = np.clip(q, info.min, info.max).astype(z.dtype)
        elif op == "DequantizeLinear":
            s = i[1].astype(f32)
            z = i[2].astype(np.int64) if len(i) > 2 and i[2] is not None else np.int64(0)
            if s.ndim == 1:
                shape = [1] * i[0].ndim
                shape[a.get("axis", 1) if i[0].ndim > 1 else 0] = -1
                s, z = s.reshape(shape), (z.reshape(shape) if z.ndim else z)
            y = ((i[0].astype(np.int64) - z).astype(f32) * s).astype(f32)
        elif op == "Conv":
            p = a.get("pads", [0, 0, 0, 0])
            assert len(set(p)) == 1 and set(a.get("dilations", [1])) == {1}
            b = i[2] if len(i) > 2 else np.zeros(i[1].shape[0], f32)
            y = mlas_conv_f32(i[0], i[1], b, p[0], a.get("strides", [1, 1])[0], a.get("group", 1))
        elif op == "Gemm":
            assert not a.get("transA", 0) and a.get("alpha", 1.0) == 1.0 and a.get("beta", 1.0) == 1.0
            y = mlas_gemm_f32(i[0], i[1], i[2], bool(a.get("transB", 0)))
        elif op in ("Add", "Mul"):
            y = (i[0] + i[1] if op == "Add" else i[0] * i[1]).astype(f32)
        elif op == "Relu":
            y = np.maximum(i[0], f32(0))
        elif op == "Clip":
            y = np.clip(i[0], i[1], i[2]).astype(f32)
        elif op == "Sigmoid":
            y = mlas_logistic(i[0])
        elif op == "HardSigmoid":
            y = np.clip(f32(a.get("alpha", 0.2)) * i[0] + f32(a.get("beta", 0.5)), f32(0), f32(1)).astype(f32)
        elif op == "GlobalAveragePool":
            y = mlas_global_avgpool_f32(i[0])
        elif op == "Flatten":
            y = i[0].reshape(i[0].shape[0], -1)
        elif op == "Constant":
            y = numpy_helper.to_array(a["value"])
        elif op == "MaxPool":
            k, st = a["kernel_shape"][0], a.get("strides", [1, 1])[0]
            assert not any(a.get("pads", [0]))
            ho, wo = (i[0].shape[2] - k) // st + 1, (i[0].shape[3] - k) // st + 1
            y = np.max(np.stack([i[0][:, :, ky:ky + st * ho:st, kx:kx + st * wo:st]
                                 for ky in range(k) for kx in range(k)]), 0)
        else:
            raise NotImplementedError(f"ort_float_path: op {op}")
        env[n.output[0]] = y
    return env[g.output[0].name]
