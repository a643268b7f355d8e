"""Evaluation: bits/dim, sample grids, reconstructions, plots."""
from .images import image_grid, plot_metrics, save_image_grid
from .likelihood import bits_per_dim, evaluate_bits_per_dim, log_prob_to_bits_per_dim

__all__ = [
    "bits_per_dim",
    "evaluate_bits_per_dim",
    "log_prob_to_bits_per_dim",
    "image_grid",
    "save_image_grid",
    "plot_metrics",
]
