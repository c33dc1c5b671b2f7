"""Metrics: confusion-matrix scores for 2-D segmentation and binary change maps (``confusion``),
per-volume Dice/HD95/ASD for medical volumes (``volume``)."""
from unimatch.metrics.confusion import ConfusionMatrix

__all__ = ["ConfusionMatrix"]
