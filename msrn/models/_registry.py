"""The model registry, as timm's `_registry.py`: architecture files register their names where they define them,
and every build, fresh or from a checkpoint, goes through `build_model` and its checks.

    @register_model(label_graph=True)
    def msrn_tiny(**kwargs: Any) -> MSRN:      # in msrn/models/msrn.py
        ...

    @register_head("mlp")
    class MLPHead(nn.Module): ...               # in msrn/models/heads.py

An architecture file imports nothing else from this package's infrastructure (the `_` files); the files
register when `msrn.models` imports them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

from msrn.errors import MSRNError

_models: dict[str, Callable[..., nn.Module]] = {}  # name -> entrypoint
_label_graph: set[str] = set()  # names whose entrypoints read label vectors and a label graph
_heads: dict[str, Callable[..., nn.Module]] = {}  # head name -> head class
E = TypeVar("E", bound=Callable[..., nn.Module])


def register_model(fn: E | None = None, *, label_graph: bool = False) -> Any:
    """Register an entrypoint under its function name: `fn(num_classes=C, labels=..., **settings)` builds the model.

    `@register_model(label_graph=True)`: it also takes `word_vectors`, `adjacency`, `pool_ratio` and `num_groups`,
    which create_model reads from label files or a LabelSet (for other models those files are not read)."""

    def add(f: E) -> E:
        if f.__name__ in _models:
            raise ValueError(f"model {f.__name__!r} is registered twice")
        _models[f.__name__] = f
        if label_graph:
            _label_graph.add(f.__name__)
        return f

    return add if fn is None else add(fn)


def register_head(name: str) -> Callable[[E], E]:
    """Register a classifier head under `name` (what `--head NAME` and MSRNConfig.head pick)."""

    def add(cls: E) -> E:
        if name in _heads:
            raise ValueError(f"head {name!r} is registered twice")
        _heads[name] = cls
        return cls

    return add


def list_models() -> list[str]:
    """The registered model names, sorted."""
    return sorted(_models)


def list_heads() -> tuple[str, ...]:
    """The registered head names, in registration order (the paper's first)."""
    return tuple(_heads)


def head_class(name: str) -> Callable[..., nn.Module]:
    """The head registered as `name`; ValueError (turned into one line by build_model) for another name."""
    if name not in _heads:
        raise ValueError(f"head must be one of {', '.join(_heads)}, not {name!r}")
    return _heads[name]


def takes_label_inputs(name: str) -> bool:
    """Whether the model reads label vectors and a label graph (so its builder reads those files at all)."""
    _entrypoint(name)  # an unknown name is one line here too
    return name in _label_graph


def _entrypoint(name: str) -> Callable[..., nn.Module]:
    if name not in _models:
        raise MSRNError(f"unknown model {name!r}; choose one of {', '.join(list_models())}")
    return _models[name]


def label_count(num_classes: int | None, labels: list[str] | None) -> tuple[int, list[str] | None]:
    """The number of labels from num_classes and/or label names (which must agree), and the names as a list."""
    if labels is not None:
        labels = list(labels)
        if num_classes is not None and num_classes != len(labels):
            raise MSRNError(f"num_classes={num_classes} but {len(labels)} labels were given")
        num_classes = len(labels)
    if not num_classes or num_classes < 1:
        raise MSRNError("a model needs num_classes or labels")
    return num_classes, labels


def build_model(name: str, num_classes: int | None = None, labels: list[str] | None = None, **kwargs: Any) -> nn.Module:
    """The registered model `name` with fresh weights: a known name, a label count that agrees with the names,
    then the entrypoint, whose refusals (ValueError: settings it lacks or that do not fit) become one line.
    The model remembers its name (`model_name`), which checkpoints record."""
    entry = _entrypoint(name)
    num_classes, labels = label_count(num_classes, labels)
    try:
        model = entry(num_classes=num_classes, labels=labels, **kwargs)
    except ValueError as e:
        raise MSRNError(f"{name}: {e}") from None
    model.model_name = name  # type: ignore[assignment]  # nn.Module's __setattr__ takes any attribute
    return model
