"""Continuous normalizing flows in pure torch: fields, divergence, solver options, CNF blocks."""

__all__ = [
    "ACTIVATIONS",
    "ADAPTIVE_METHODS",
    "CNF",
    "CNFBlock",
    "ConcatConv2d",
    "ConcatSquashConv2d",
    "ConcatSquashField",
    "ConcatSquashLinear",
    "FIXED_GRID_METHODS",
    "METHODS",
    "ConvField",
    "MLPField",
    "MaskedConv2d",
    "MaskedLinear",
    "SolveError",
    "SolverOptions",
    "build_cnf",
    "build_field",
    "divergence_exact",
    "divergence_hutchinson",
    "is_masked",
    "sample_noise",
    "standard_normal_log_prob",
]

from sparse_cnf.flows.cnf import CNF, CNFBlock, build_cnf, standard_normal_log_prob
from sparse_cnf.flows.conv import ConcatConv2d, ConcatSquashConv2d, ConvField
from sparse_cnf.flows.divergence import divergence_exact, divergence_hutchinson, sample_noise
from sparse_cnf.flows.fields import ACTIVATIONS, ConcatSquashField, ConcatSquashLinear, MLPField, build_field
from sparse_cnf.flows.layers import MaskedConv2d, MaskedLinear, is_masked
from sparse_cnf.flows.solver import ADAPTIVE_METHODS, FIXED_GRID_METHODS, METHODS, SolveError, SolverOptions
