"""LAI's and TracIn's output layer: the recorded layer whose output tensor is the model output."""

from __future__ import annotations

from ..errors import InfluenceError
from .calls import Capture
from .planning import Plan


def output_layer(cap: Capture, pl: Plan) -> str:
    """The layer whose output tensor IS the model output (checked by object identity), so its output gradient
    is g; it must have an LAI term (last-layer LAI, last-layer TracIn)."""
    name = cap.producer
    if name is None:
        raise InfluenceError("the last layer's output is not the model output (the model transforms it further, or "
                             "the output layer has no layer rule), so no layer's output gradient is g; last-layer "
                             "LAI would not be exact")
    if not (pl.rules[name].lai and pl.rules[name].lai_last):
        raise InfluenceError(f"{name}: the output layer is a {type(pl.modules[name]).__name__}, which has no LAI "
                             "term exact at the output; last-layer LAI needs an output layer such as Linear")
    return name
