"""msrn: MSRN (Multi-layered Semantic Representation Network) for multi-label image classification."""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

__all__ = ["Predictor", "create_model", "list_models", "load", "load_checkpoint", "__version__"]

# imported on first use, so that torch-free modules (msrn.images, msrn.inference.onnx_predict) import without torch
_LAZY = {
    "Predictor": "msrn.inference.predictor",
    "load": "msrn.inference.predictor",
    "create_model": "msrn.models",
    "list_models": "msrn.models",
    "load_checkpoint": "msrn.models",
}


def __getattr__(name: str) -> Any:
    """The public API's names, imported from their modules when first asked for."""
    if name not in _LAZY:
        raise AttributeError(f"module 'msrn' has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)
