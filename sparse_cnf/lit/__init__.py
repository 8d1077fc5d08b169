"""Lightning pieces: the training system, the prune-and-fine-tune and analysis callbacks."""

__all__ = ["AtomicCheckpointIO", "CNFSystem", "PruneFinetune", "RoundAnalysis", "write_results"]

from sparse_cnf.lit.analysis_callback import RoundAnalysis
from sparse_cnf.lit.io import AtomicCheckpointIO, write_results
from sparse_cnf.lit.prune_callback import PruneFinetune
from sparse_cnf.lit.system import CNFSystem
