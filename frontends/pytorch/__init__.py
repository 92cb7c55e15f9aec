"""PyTorch frontend: models, robust-training regularizers, LSQ QAT, training loop and torch.fx export.

Importing this package does not import torch; its modules do.
"""
