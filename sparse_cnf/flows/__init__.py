"""Continuous normalizing flows in pure torch: fields, divergence, solver options, CNF blocks."""
