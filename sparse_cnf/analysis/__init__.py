"""Analysis of trained flows: Hessian spectrum over surviving weights, and plots of flows at time t."""

__all__ = [
    "HessianStats",
    "ParameterCoordinates",
    "SpectralDensity",
    "hessian_stats",
    "plot_flow",
    "plot_log_density",
    "plot_samples",
    "plot_sweep",
    "plot_vector_field",
]

from sparse_cnf.analysis.hessian import HessianStats, ParameterCoordinates, SpectralDensity, hessian_stats
from sparse_cnf.analysis.plots import plot_flow, plot_log_density, plot_samples, plot_sweep, plot_vector_field
