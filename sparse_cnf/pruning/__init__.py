"""Pruning of masked layers in pure torch: masks, global and structured pruning, counts, schedules, export."""

__all__ = [
    "METHODS",
    "PAPER_SCHEDULES",
    "RATIO_TOLERANCE",
    "REWIND_MODES",
    "SCHEDULE_KINDS",
    "FieldStructure",
    "ParameterCounts",
    "PruneConfig",
    "PruneSchedule",
    "apply_masks",
    "count_parameters",
    "export_structured",
    "find_fields",
    "prunable_layers",
    "prune",
    "prune_ratio",
    "prune_structured",
    "prune_unstructured",
    "removed_neurons",
    "rewind_weights",
    "snapshot_weights",
]

from sparse_cnf.pruning.counting import ParameterCounts, count_parameters, prune_ratio
from sparse_cnf.pruning.export import export_structured
from sparse_cnf.pruning.masks import apply_masks, rewind_weights, snapshot_weights
from sparse_cnf.pruning.methods import METHODS, RATIO_TOLERANCE, prune, prune_structured, prune_unstructured
from sparse_cnf.pruning.schedules import PAPER_SCHEDULES, REWIND_MODES, SCHEDULE_KINDS, PruneConfig, PruneSchedule
from sparse_cnf.pruning.structure import FieldStructure, find_fields, prunable_layers, removed_neurons
