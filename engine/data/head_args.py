"""The command line's head syntax, ``NAME:KIND[:COL1,COL2[:WEIGHT]][@LAYER]`` -> :class:`HeadSpec`."""
from __future__ import annotations

import math

from engine.errors import GraftError
from engine.network.heads import DENSE_KINDS, KINDS, HeadSpec

KIND_ALIASES = {"single": "single", "single-label": "single", "softmax": "single",
                "multi": "multi", "multi-label": "multi", "multilabel": "multi", "sigmoid": "multi",
                "regression": "regression", "reg": "regression", "numeric": "regression",
                "segment": "segment", "segmentation": "segment", "mask": "segment",
                "detect": "detect", "detection": "detect", "boxes": "detect", "box": "detect"}


def parse_head_arg(text: str) -> HeadSpec:
    """``NAME:KIND[:COL1,COL2[:WEIGHT]][@LAYER[,LAYER…]]`` (KIND single|multi|regression|segment|detect;
    without columns, or with an empty COLUMNS field as in ``NAME:KIND::WEIGHT``, the head reads the column
    NAME). WEIGHT, the fourth field, is the head's loss weight (default 1): a number of at least 0.
    ``@LAYER``: the head reads that layer's pooled output (``shape:single@features.4``) instead of the
    trunk's end; a segment or detect head reads the maps of one or several layers
    (``seg:segment:mask@features.3,features.5,features.8``; without ``@``, the default layers of
    :func:`engine.network.dense_heads.default_layers`). A segment head's column holds mask files, a detect
    head's boxes (:mod:`engine.data.dense_targets`)."""
    usage = ("use NAME:KIND:COLUMN[,COLUMN…][:WEIGHT][@LAYER] with KIND single, multi, regression, segment or "
             "detect, e.g. tags:multi:red,striped, age:regression:age:0.5, shape:single@features.4 or "
             "seg:segment:mask@features.3,features.5,features.8")
    body, at, layer_text = str(text).partition("@")
    layer = layer_text.strip() or None
    if at and layer is None:
        raise GraftError(f"--head {text!r}: name the layer after '@' (e.g. @features.4); {usage}.")
    if layer is not None and "@" in layer:
        raise GraftError(f"--head {text!r}: only one '@LAYER'; {usage}.")
    layers = [part.strip() for part in layer.split(",")] if layer is not None else []
    if any(not part for part in layers):
        raise GraftError(f"--head {text!r}: an empty layer name after '@'; {usage}.")
    parts = [p.strip() for p in body.split(":")]
    if len(parts) not in (2, 3, 4) or not parts[0] or not parts[1]:
        raise GraftError(f"--head {text!r}: {usage}.")
    name, kind_text = parts[0], parts[1]
    kind = KIND_ALIASES.get(kind_text.lower())
    if kind is None:
        raise GraftError(f"--head {text!r}: unknown kind {kind_text!r}; kind is one of {', '.join(KINDS)}.")
    weight = 1.0
    if len(parts) == 4:
        try:
            weight = float(parts[3])
        except ValueError:
            weight = math.nan
        if not math.isfinite(weight) or weight < 0:
            raise GraftError(f"--head {text!r}: the loss weight (after the third ':') must be a number of at "
                             f"least 0, not {parts[3]!r}; {usage}.")
    columns: list[str] = []
    if len(parts) == 3 or (len(parts) == 4 and parts[2]):
        columns = [c.strip() for c in parts[2].split(",")]
        if not parts[2] or any(not c for c in columns):
            raise GraftError(f"--head {text!r}: empty column name; {usage}.")
        if len(set(columns)) != len(columns):
            raise GraftError(f"--head {text!r}: a column is listed twice.")
    if kind in DENSE_KINDS:
        if len(columns) > 1:
            raise GraftError(f"--head {text!r}: a {kind} head reads one column (of "
                             f"{'mask files' if kind == 'segment' else 'boxes'}), not {len(columns)}.")
        return HeadSpec(name, kind, outputs=2, columns=columns or [name], loss_weight=weight, layers=layers)
    if len(layers) > 1:
        raise GraftError(f"--head {text!r}: a {kind} head reads one layer; only segment and detect heads read "
                         "several.")
    if kind == "single" and len(columns) > 1:
        raise GraftError(f"--head {text!r}: a single-label head reads one column of class names, "
                         f"not {len(columns)}.")
    labels = list(columns) if kind != "single" else []
    if kind != "single" and not labels:
        labels = [name]
    return HeadSpec(name, kind, labels=labels, columns=columns or [name], loss_weight=weight, layer=layer)
