"""CLIP training, zero-shot evaluation and weight loading in PyTorch."""

__version__ = "0.1.0"
