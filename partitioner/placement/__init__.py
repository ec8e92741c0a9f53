"""Placement: the latency cost model and optimizers. No torch (the edge imports this)."""

from partitioner.placement._costmodel import (
    CloudEstimate,
    Constraints,
    CutProfile,
    Decision,
    LinkEstimate,
    Prediction,
    choose,
    predict,
)

__all__ = [
    "CloudEstimate",
    "Constraints",
    "CutProfile",
    "Decision",
    "LinkEstimate",
    "Prediction",
    "choose",
    "predict",
]
