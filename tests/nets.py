"""Small graphs built with the builder API (no torch), shared by the pipeline tests."""

from __future__ import annotations

import numpy as np

from hwsim.graph import GraphBuilder


def tiny_cnn(seed: int = 0, channels: int = 4, size: int = 8, classes: int = 3, dead_channel: bool = False):
    """conv-bn-relu -> depthwise-bn-relu6 -> maxpool -> conv (residual add) -> gap -> linear."""
    rng = np.random.default_rng(seed)
    c = channels
    b = GraphBuilder(input_shape=(1, size, size), mean=(0.5,), std=(0.25,))
    w1 = rng.normal(0, 0.5, (c, 1, 3, 3)).astype(np.float32)
    var = rng.uniform(0.5, 2.0, c).astype(np.float32)
    beta1, mean1 = rng.normal(0, 0.1, c).astype(np.float32), rng.normal(0, 0.1, c).astype(np.float32)
    if dead_channel:  # channel 1 of relu1 is always 0, so depthwise channel 1 sees only zeros
        w1[1], beta1[1], mean1[1] = 0.0, -1.0, 0.0
    h = b.conv2d("conv1", "input", w1, bias=None, padding=1)
    h = b.batchnorm("bn1", h, rng.uniform(0.5, 1.5, c).astype(np.float32), beta1, mean1, var, eps=1e-5)
    h = b.relu("relu1", h)
    wd = rng.normal(0, 0.5, (c, 1, 3, 3)).astype(np.float32)
    var2 = rng.uniform(0.5, 2.0, c).astype(np.float32)
    mean2 = rng.normal(0, 0.1, c).astype(np.float32)
    if dead_channel:
        var2[1] = 1e-38
    bd = rng.normal(0, 0.1, c).astype(np.float32)
    h2 = b.conv2d("dw", h, wd, bias=bd, padding=1, groups=c)
    if dead_channel:  # its conv output is always its bias: training leaves running_mean there, var ~ 0
        mean2[1] = bd[1]
    h2 = b.batchnorm("bn2", h2, rng.uniform(0.5, 1.5, c).astype(np.float32), rng.normal(0, 0.1, c).astype(np.float32),
                     mean2, var2, eps=1e-5)
    h2 = b.relu6("relu2", h2)
    h3 = b.conv2d("conv3", h2, rng.normal(0, 0.3, (c, c, 1, 1)).astype(np.float32),
                  bias=rng.normal(0, 0.1, c).astype(np.float32))
    h = b.add("add", h3, h)
    h = b.relu("relu3", h)
    h = b.maxpool2d("pool", h, kernel=2)
    h = b.global_avgpool("gap", h)
    h = b.flatten("flat", h)
    h = b.linear("fc", h, rng.normal(0, 0.5, (classes, c)).astype(np.float32), bias=rng.normal(0, 0.1, classes).astype(np.float32))
    return b.build(outputs=[h], metadata={"arch": "tiny"})


def images(n: int = 16, size: int = 8, seed: int = 1) -> np.ndarray:
    """Real-valued normalised inputs (as normalize() would produce)."""
    rng = np.random.default_rng(seed)
    return ((rng.uniform(0, 1, (n, 1, size, size)) - 0.5) / 0.25).astype(np.float32)
