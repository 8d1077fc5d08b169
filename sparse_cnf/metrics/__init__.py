"""Metrics for trained flows: negative log-likelihood (nats, bits/dim) and mode collapse."""

__all__ = [
    "NLL",
    "GoodSampleShare",
    "SampleSetSummary",
    "bits_per_dim",
    "good_sample_share",
    "mode_distances",
    "sample_good_share",
    "threshold_label",
]

from sparse_cnf.metrics.modes import (
    GoodSampleShare,
    SampleSetSummary,
    good_sample_share,
    mode_distances,
    sample_good_share,
    threshold_label,
)
from sparse_cnf.metrics.nll import NLL, bits_per_dim
