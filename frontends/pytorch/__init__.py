"""PyTorch frontend: models, robust-training regularizers, LSQ QAT, training loop and torch.fx export.

Importing this package does not import torch; its modules do.
"""

# the architectures of frontends.pytorch.models (build_model), here so that the CLI's help lists them without torch
ARCHS = ("smallcnn", "resnet8", "resnet20", "mobilenetv2", "mobilenetv2-tiny", "mobilenetv3", "efficientnet",
         "resnet18-narrow")
