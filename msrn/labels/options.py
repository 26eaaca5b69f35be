"""The label options `msrn labels` and `msrn train` share, declared once (msrn.options.option)."""

from __future__ import annotations

from typing import Any

from msrn.labels.graph import REWEIGHT, TAU
from msrn.options import option


def word_vectors_option() -> Any:
    """--word-vectors: where the label vectors come from."""
    return option(
        None,
        "label vector source: 'reference' (the reference's GloVe pickle for the dataset, fetched once and "
        "checked; the default for voc2007, coco2014, nuswide and apparel), 'ngram' (the default otherwise; "
        "hashed character n-grams, offline, spelling similarity only), 'ngram:DIM', 'encoder' or "
        "'encoder:MODEL' (sentence encoder, needs msrn[text]), or a file: GloVe/fastText text (.txt/.vec), "
        "a word-vector pickle (.pkl) or a C x dim .npy",
        metavar="SOURCE",
        aliases=("--vectors",),
    )


def cooccurrence_option() -> Any:
    """--cooccurrence: where the label graph's counts come from."""
    return option(
        None,
        "label co-occurrence: 'reference' (the reference's {'adj','nums'} pickle for the dataset, fetched once "
        "and checked; the default for voc2007, coco2014, nuswide and apparel), 'train' (count the training "
        "split; the default otherwise) or such a pickle file",
        metavar="SOURCE",
    )


def name_map_option() -> Any:
    """--name-map: vector words for label names a vector file lacks."""
    return option(
        None,
        "file of 'label=words' lines for names missing from a vector file, e.g. diningtable=dining table",
        metavar="FILE",
    )


def tau_option() -> Any:
    """--tau: the label graph's edge threshold."""
    return option(TAU, f"edge threshold on P(j|i) of the label graph (default {TAU})", low=0, high=1, bounds="(]")


def reweight_option() -> Any:
    """--reweight: the neighbours' share of the re-weighted adjacency."""
    return option(REWEIGHT, f"neighbour weight p (default {REWEIGHT})", low=0, high=1)
