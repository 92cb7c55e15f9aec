"""batchnorm (eval mode): exists only before compile, which folds it into the preceding conv2d/linear
(WP eq. 11-12, or with ``batchnorm = "scale"`` into the requant multiplier, WP eq. 41:
:func:`hwsim.compile.fold_graph`). Its registry entry: graph schema, shapes, strict value checks,
float reference.
"""

from __future__ import annotations

import numpy as np

from hwsim.ops.registry import OpSpec, register

ROLES = ("weight", "bias", "running_mean", "running_var")


@register
class BatchNormSpec(OpSpec):
    name = "batchnorm"
    attrs = {"eps": "posfloat"}
    params = (ROLES, ())
    folds_into_producer = True

    def infer_shape(self, node, ins, p, fail, tag):
        x = ins[0]
        c = x[0]
        for role in ROLES:
            if p[role] != (c,):
                fail(f"{tag}: {role} shape {p[role]} must be ({c},) (channels of {node.inputs[0]!r})")
        return x

    def check_strict(self, node, graph, fail, tag):
        """running_var >= 0 and the folded scale gamma / sqrt(var + eps) finite in float32 (WP eq. 11)."""
        var = graph.tensors[node.params["running_var"]]
        if (var < 0).any():
            i = int(np.flatnonzero(var.ravel() < 0)[0])
            fail(f"{tag}: tensor {node.params['running_var']!r} (running_var) has {var.ravel()[i]:g} at channel {i} "
                 "(a variance must be >= 0)")
        with np.errstate(all="ignore"):
            scale = graph.tensors[node.params["weight"]] / np.sqrt(var + np.float32(node.attrs["eps"]), dtype=np.float32)
        if not np.isfinite(scale).all():
            i = int(np.flatnonzero(~np.isfinite(scale.ravel()))[0])
            fail(f"{tag}: tensors {node.params['weight']!r} / sqrt({node.params['running_var']!r} + eps) overflow "
                 f"float32 at channel {i} (the folded BatchNorm scale must be finite)")

    def float_forward(self, node, graph, ins):
        x = ins[0]
        shape = (1, -1) + (1,) * (x.ndim - 2)
        g, beta, mu, var = (graph.param(node, r).astype(np.float32).reshape(shape) for r in ROLES)
        return (x - mu) / np.sqrt(var + np.float32(node.attrs["eps"])) * g + beta
