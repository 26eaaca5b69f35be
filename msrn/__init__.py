"""msrn: MSRN (Multi-layered Semantic Representation Network) for multi-label image classification."""
from msrn.models import create_model, list_models

__version__ = "0.1.0"

__all__ = ["create_model", "list_models", "__version__"]
