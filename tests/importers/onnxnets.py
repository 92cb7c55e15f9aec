"""Small ONNX models written with onnx.helper (and onnxruntime's float outputs) for the importer tests."""

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
