"""Generate the LiteRT int8 fixtures of tests/fixtures/litert/ (issue 17; docs/import.md).

Three steps, two Python environments:

1. ``export`` (hwsim's environment): the float graphs of the bundled SmallCNN and MobileNetV2 (their trained
   weights, read from hwsim/models/*.hwsim), of a ResNet-18-shaped network (frontends.pytorch.models.ResNet18,
   width 8, trained here for 3 epochs with seed 0 exactly as tests/importers/test_resnet18.py trains it; ~5 s)
   and the bundled MNIST images (training images as the converter's
   representative dataset, test images as the fixtures' inputs) into a work directory;
2. ``convert`` (an environment with TensorFlow, e.g. ``/work/tfvenv``, never a test dependency): each graph
   rebuilt as a Keras model (NHWC; BatchNorm kept, the converter folds it), plus a ResNet-8-shaped network
   (seeded random weights, BN statistics, a concatenated stem and an average pool) and a MobileNetV3-style
   network (seeded random weights: hard-swish, squeeze-excitation with a sigmoid gate), converted by
   ``tf.lite.TFLiteConverter`` with full-integer quantization (``Optimize.DEFAULT``, representative dataset =
   200 bundled training images, ``TFLITE_BUILTINS_INT8``; float input and output: QUANTIZE / DEQUANTIZE);
3. ``expect`` (hwsim's environment, ai-edge-litert): every model run on 256 bundled test images by each LiteRT
   resolver (reference kernels, optimized built-ins, the XNNPACK delegate), int8 outputs saved as .npz beside
   the .tflite files.

4. ``table`` (hwsim's environment): the committed fixtures' integers re-run under other hardware profiles.

Usage (from the repository root; ``--nets a,b`` limits export / convert / expect / table to those networks):
    PYTHONPATH=. python scripts/litert_fixtures.py all --tf-python /work/tfvenv/bin/python
    PYTHONPATH=. python scripts/litert_fixtures.py table
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "fixtures" / "litert"
BUNDLED = ("smallcnn_robust", "mobilenetv2")
TRAINED = ("resnet18_narrow",)  # trained by ``export`` (tests.importers.test_resnet18.trained_resnet18)
NETS = BUNDLED + ("resnet8", "mobilenetv3_style") + TRAINED
N_CALIB, N_TEST = 200, 256
RESOLVERS = ("reference", "optimized", "xnnpack")


# ----------------------------------------------------------------------------- 1. export (hwsim env)
def export(work: Path, nets=NETS) -> None:
    from hwsim.data import load_dataset

    ds = load_dataset("default")
    rng = np.random.default_rng(0)
    calib = ds.x_train[np.sort(rng.choice(len(ds.x_train), N_CALIB, replace=False))]
    np.save(work / "calib.npy", np.asarray(calib, np.float32))
    np.save(work / "test.npy", np.asarray(ds.x_test[:N_TEST], np.float32))
    np.save(work / "test_labels.npy", np.asarray(ds.y_test[:N_TEST], np.int64))
    for net in BUNDLED:
        with zipfile.ZipFile(ROOT / "hwsim" / "models" / f"{net}.hwsim") as z:
            (work / f"{net}.json").write_bytes(z.read("graph.json"))
            (work / f"{net}.npz").write_bytes(z.read("tensors.npz"))
    for net in set(TRAINED) & set(nets):
        from frontends.pytorch.export import export_model
        from tests.importers.test_resnet18 import trained_resnet18

        m, shape, mean, std = trained_resnet18(work)
        export_model(m, str(work / f"{net}.hwsim"), shape, mean, std)
        with zipfile.ZipFile(work / f"{net}.hwsim") as z:
            (work / f"{net}.json").write_bytes(z.read("graph.json"))
            (work / f"{net}.npz").write_bytes(z.read("tensors.npz"))


# ----------------------------------------------------------------------------- 2. convert (TensorFlow env)
def _keras_from_graph(doc: dict, tensors, tf):
    """A Keras model (NHWC) computing the hwsim float graph ``doc`` with ``tensors``."""
    L = tf.keras.layers
    inp = doc["inputs"][0]
    c, h, w = inp["shape"]
    x_in = tf.keras.Input((h, w, c), batch_size=1)
    env = {inp["name"]: x_in}
    for n in doc["nodes"]:
        a, p, op = n["attrs"], n["params"], n["op"]
        x = env[n["inputs"][0]]
        if op == "conv2d":
            wt = tensors[p["weight"]]
            b = tensors[p["bias"]] if p.get("bias") else None
            cout, cin_g, kh, kw = wt.shape
            t, bt, l_, r = a["padding"]
            s = tuple(a["stride"])
            dil = tuple(a["dilation"])
            same = (t, bt, l_, r) == ((kh - 1) // 2,) * 2 + ((kw - 1) // 2,) * 2 and s == (1, 1) and kh % 2 and kw % 2
            if not same and any((t, bt, l_, r)):
                x = L.ZeroPadding2D(((t, bt), (l_, r)))(x)
            pad = "same" if same else "valid"
            if a["groups"] == 1:
                layer = L.Conv2D(cout, (kh, kw), s, pad, dilation_rate=dil, use_bias=b is not None)
                y = layer(x)
                layer.set_weights([wt.transpose(2, 3, 1, 0)] + ([b] if b is not None else []))
            elif a["groups"] == cout and cin_g == 1:
                layer = L.DepthwiseConv2D((kh, kw), s, pad, depth_multiplier=1, dilation_rate=dil,
                                          use_bias=b is not None)
                y = layer(x)
                layer.set_weights([wt[:, 0].transpose(1, 2, 0)[..., None]] + ([b] if b is not None else []))
            else:
                raise SystemExit(f"{n['name']}: grouped conv not generated")
        elif op == "batchnorm":
            layer = L.BatchNormalization(epsilon=a.get("eps", 1e-5))
            y = layer(x)
            layer.set_weights([tensors[p[k]] for k in ("weight", "bias", "running_mean", "running_var")])
        elif op == "relu":
            y = L.ReLU()(x)
        elif op == "relu6":
            y = L.ReLU(6.0)(x)
        elif op == "maxpool2d":
            assert not any(a["padding"])
            y = L.MaxPooling2D(tuple(a["kernel"]), tuple(a["stride"]))(x)
        elif op == "global_avgpool":
            y = L.GlobalAveragePooling2D(keepdims=True)(x)
        elif op == "flatten":
            y = L.Flatten()(x)
        elif op == "linear":
            wt = tensors[p["weight"]]
            layer = L.Dense(wt.shape[0])
            y = layer(x)
            layer.set_weights([wt.T, tensors[p["bias"]]])
        elif op == "add":
            y = L.Add()([x, env[n["inputs"][1]]])
        else:
            raise SystemExit(f"{n['name']}: op {op} not generated")
        env[n["outputs"][0]] = y
    return tf.keras.Model(x_in, env[doc["outputs"][0]])


def _resnet8(tf, seed: int = 0):
    """A ResNet-8-shaped network on 1x28x28: a concatenated stem (3x3 and 1x1 branches), three residual blocks
    (16, 32, 64 channels; strided ones with a 1x1 projection), an average pool, global mean, dense. Seeded random
    weights and BN statistics."""
    L = tf.keras.layers
    tf.keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)

    def bn(x):
        layer = L.BatchNormalization(epsilon=1e-5)
        y = layer(x)
        ch = x.shape[-1]
        layer.set_weights([rng.uniform(0.5, 1.5, ch).astype(np.float32), rng.uniform(-0.2, 0.2, ch).astype(np.float32),
                           rng.uniform(-0.2, 0.2, ch).astype(np.float32), rng.uniform(0.5, 2.0, ch).astype(np.float32)])
        return y

    def block(x, ch, stride):
        y = L.Conv2D(ch, 3, stride, "same", use_bias=False)(x)
        y = L.ReLU()(bn(y))
        y = bn(L.Conv2D(ch, 3, 1, "same", use_bias=False)(y))
        sc = x if stride == 1 and x.shape[-1] == ch else bn(L.Conv2D(ch, 1, stride, "valid", use_bias=False)(x))
        return L.ReLU()(L.Add()([y, sc]))

    x_in = tf.keras.Input((28, 28, 1), batch_size=1)
    a = L.ReLU()(bn(L.Conv2D(8, 3, 1, "same", use_bias=False)(x_in)))
    b = L.ReLU()(bn(L.Conv2D(8, 1, 1, "valid", use_bias=False)(x_in)))
    x = L.Concatenate()([a, b])
    x = L.AveragePooling2D(2, 2, "same")(x)
    x = block(x, 16, 1)
    x = block(x, 32, 2)
    x = block(x, 64, 2)
    x = L.GlobalAveragePooling2D(keepdims=True)(x)
    x = L.Flatten()(x)
    return tf.keras.Model(x_in, L.Dense(10)(x))


def _mobilenetv3_style(tf, seed: int = 1):
    """A MobileNetV3-style network on 1x28x28 (seeded random weights and BN statistics): hard-swish activations
    (the converter's HARD_SWISH), squeeze-excitation with a sigmoid gate (MEAN keepdims, 1x1 convs, LOGISTIC,
    broadcasting MUL), depthwise blocks, a residual ADD. (LiteRT has no HARD_SIGMOID: the converter lowers
    MobileNetV3's hard-sigmoid gate to ADD / RELU6 / MUL by constants, which hwsim does not read.)"""
    L = tf.keras.layers
    tf.keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)

    def bn(x):
        layer = L.BatchNormalization(epsilon=1e-3)
        y = layer(x)
        ch = x.shape[-1]
        layer.set_weights([rng.uniform(0.5, 1.5, ch).astype(np.float32), rng.uniform(-0.2, 0.2, ch).astype(np.float32),
                           rng.uniform(-0.2, 0.2, ch).astype(np.float32), rng.uniform(0.5, 2.0, ch).astype(np.float32)])
        return y

    def hswish(x):
        return L.Activation(tf.keras.activations.hard_swish)(x)

    def se(x, squeeze):
        s = L.GlobalAveragePooling2D(keepdims=True)(x)
        s = L.Conv2D(squeeze, 1, activation="relu")(s)
        s = L.Conv2D(x.shape[-1], 1, activation="sigmoid")(s)
        return L.Multiply()([x, s])

    def block(x, expand, out, stride, act):
        y = act(bn(L.Conv2D(expand, 1, use_bias=False)(x))) if expand != x.shape[-1] else x
        y = act(bn(L.DepthwiseConv2D(3, stride, "same", use_bias=False)(y)))
        y = se(y, max(8, expand // 4))
        y = bn(L.Conv2D(out, 1, use_bias=False)(y))
        return L.Add()([x, y]) if stride == 1 and x.shape[-1] == out else y

    x_in = tf.keras.Input((28, 28, 1), batch_size=1)
    x = hswish(bn(L.Conv2D(16, 3, 2, "same", use_bias=False)(x_in)))
    x = block(x, 16, 16, 1, L.ReLU())
    x = block(x, 48, 24, 2, hswish)
    x = block(x, 64, 24, 1, hswish)
    x = hswish(bn(L.Conv2D(96, 1, use_bias=False)(x)))
    x = L.GlobalAveragePooling2D(keepdims=True)(x)
    x = L.Flatten()(x)
    return tf.keras.Model(x_in, L.Dense(10)(x))


def convert(work: Path, nets=NETS) -> None:
    import tensorflow as tf

    calib01 = np.load(work / "calib.npy")
    for net in nets:
        if net == "resnet8":
            model, mean, std = _resnet8(tf), 0.0, 1.0
        elif net == "mobilenetv3_style":
            model, mean, std = _mobilenetv3_style(tf), 0.0, 1.0
        else:
            doc = json.loads((work / f"{net}.json").read_text())
            with np.load(work / f"{net}.npz", allow_pickle=False) as z:
                tensors = {k: z[k] for k in z.files}
            model = _keras_from_graph(doc, tensors, tf)
            mean, std = doc["inputs"][0]["mean"][0], doc["inputs"][0]["std"][0]
        calib = ((calib01 - np.float32(mean)) / np.float32(std)).astype(np.float32).transpose(0, 2, 3, 1)

        def rep():
            for i in range(len(calib)):
                yield [calib[i:i + 1]]

        conv = tf.lite.TFLiteConverter.from_keras_model(model)
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = rep
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        data = conv.convert()
        (work / f"{net}_int8.tflite").write_bytes(data)
        (work / f"{net}.norm.json").write_text(json.dumps({"mean": [float(mean)], "std": [float(std)]}))
        print(f"{net}: {len(data)} bytes", flush=True)


# ----------------------------------------------------------------------------- 3. expected outputs (hwsim env)
def litert_outputs(model: bytes | str, x_nchw: np.ndarray, resolver: str) -> np.ndarray:
    """int8 outputs of a float-input model (its DEQUANTIZE removed: the int8 tensor it reads) under one resolver,
    one image at a time, one thread."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    kind = {"reference": OpResolverType.BUILTIN_REF, "optimized": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
            "xnnpack": OpResolverType.AUTO}[resolver]
    src = {"model_path": model} if isinstance(model, str) else {"model_content": model}
    it = Interpreter(**src, num_threads=1, experimental_op_resolver_type=kind,
                     experimental_preserve_all_tensors=False)
    it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    # the int8 tensor the output DEQUANTIZE reads
    q_idx = next(t["index"] for t in it.get_tensor_details()
                 if t["dtype"] == np.int8 and tuple(t["shape"]) == tuple(out["shape"])
                 and t["quantization"] == out["quantization"]) if out["dtype"] == np.int8 else None
    scale, zp = _out_grid(it)
    ys = []
    for i in range(len(x_nchw)):
        it.set_tensor(inp["index"], np.ascontiguousarray(x_nchw[i:i + 1].transpose(0, 2, 3, 1)))
        it.invoke()
        y = it.get_tensor(out["index"] if q_idx is None else q_idx)
        ys.append(np.rint(y / np.float32(scale)).astype(np.int64) + zp if y.dtype == np.float32 else y.astype(np.int64))
    return np.concatenate(ys).reshape(len(x_nchw), -1)


def _out_grid(it) -> tuple[float, int]:
    """(scale, zero point) of the int8 tensor the float output is dequantized from."""
    out = it.get_output_details()[0]
    if out["dtype"] == np.int8:
        return out["quantization"]
    ops = it._get_ops_details()
    deq = next(o for o in ops if out["index"] in list(o["outputs"]))
    src = it._get_tensor_details(deq["inputs"][0], 0)
    return src["quantization"]


def expect(work: Path, nets=NETS) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    x01 = np.load(work / "test.npy")
    for net in nets:
        norm = json.loads((work / f"{net}.norm.json").read_text())
        data = (work / f"{net}_int8.tflite").read_bytes()
        (OUT / f"{net}_int8.tflite").write_bytes(data)
        x = ((x01 - np.float32(norm["mean"][0])) / np.float32(norm["std"][0])).astype(np.float32)
        outs = {r: litert_outputs(data, x, r).astype(np.int8) for r in RESOLVERS}
        np.savez_compressed(OUT / f"{net}_int8.npz", **outs, mean=np.float32(norm["mean"]),
                            std=np.float32(norm["std"]))
        diff = {f"{a}/{b}": int((outs[a] != outs[b]).sum()) for a, b in
                (("reference", "optimized"), ("reference", "xnnpack"), ("optimized", "xnnpack"))}
        print(f"{net}: {len(data)} bytes; resolvers differing elements {diff}", flush=True)


# the same imported integers under other hardware: (profile, --set settings); int8-acc16-sat and int8-psum16
# extend PyTorch's uint8 profile, so they take the file's int8 grids with activations.signed = true
TABLE = [("int8-litert-xnnpack", {}), ("int8-litert-reference", {}), ("int8-litert-optimized", {}),
         ("int8-acc16-sat", {"activations.signed": "true"}), ("int8-psum16", {"activations.signed": "true"}),
         ("int8-onnxruntime-s8", {"requant.mean_form": "exact"})]  # ORT's QLinearGlobalAveragePool keeps the grid


def table(nets=NETS) -> None:
    """Accuracy (bundled test set), overflow events and the first layer whose integers differ from the engine
    default's (int8-litert-xnnpack) on the first 64 test images, for each committed fixture."""
    from hwsim.data import load_dataset
    from hwsim.importers import import_model
    from scripts.rerun_table import rerun_rows

    ds = load_dataset("default")
    print("| network | profile | accuracy | overflow events | first layer differing from int8-litert-xnnpack (64 images) |")
    print("|---|---|---|---|---|")
    for net in nets:
        z = np.load(OUT / f"{net}_int8.npz", allow_pickle=False)
        g = import_model(OUT / f"{net}_int8.tflite")
        x = ((np.asarray(ds.x_test, np.float32) - z["mean"][0]) / z["std"][0]).astype(np.float32)
        for label, acc, ev, first in rerun_rows(g, x, ds.y_test, TABLE, "the input's QUANTIZE"):
            print(f"| {net} | {label} | {acc:.2%} | {ev} | {first} |", flush=True)


def main(argv: list[str]) -> None:
    step = argv[0] if argv else "all"
    args = dict(zip(argv[1::2], argv[2::2]))
    nets = tuple(args["--nets"].split(",")) if "--nets" in args else NETS
    if step == "table":
        table(nets)
        return
    work = Path(args.get("--work") or tempfile.mkdtemp(prefix="litert_fixtures_"))
    work.mkdir(parents=True, exist_ok=True)
    if step in ("export", "all"):
        export(work, nets)
    if step == "convert":
        convert(work, nets)
    if step == "all":
        subprocess.run([args.get("--tf-python", "/work/tfvenv/bin/python"), __file__, "convert", "--work", str(work),
                        "--nets", ",".join(nets)], check=True)
    if step in ("expect", "all"):
        expect(work, nets)
    print(f"work directory: {work}")

if __name__ == "__main__":
    main(sys.argv[1:])
