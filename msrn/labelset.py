"""Old import path of `msrn.labels.labelset`, kept because docs/labels.md documents `msrn.labelset`."""
from msrn.labels.labelset import LabelSet, build_label_set

__all__ = ["LabelSet", "build_label_set"]
