"""msrn: MSRN (Multi-layered Semantic Representation Network) for multi-label image classification."""
from msrn.models import create_model, list_models
from msrn.predict import Predictor, load

__version__ = "0.1.0"

__all__ = ["Predictor", "create_model", "list_models", "load", "__version__"]
