"""Graft's engine: pure PyTorch model surgery, training and export. Never imports Qt.

Keep this file free of imports so that light modules (``engine.network.preprocess``) load without torch.
"""

__version__ = "0.1.0"
