"""Evaluation: bits/dim, sample grids, reconstructions, interpolations, plots, run comparisons."""
from .images import image_grid, plot_metrics, save_image_grid
from .latent import interpolate
from .likelihood import bits_per_dim, evaluate_bits_per_dim, log_prob_to_bits_per_dim
from .perturbation import noise_perturbation
from .reconstruction import DEFAULT_TOLERANCE, Reconstruction, reconstruct
from .runs import plot_runs, run_summary
from .sampling import finite_samples

__all__ = [
    "bits_per_dim",
    "evaluate_bits_per_dim",
    "log_prob_to_bits_per_dim",
    "image_grid",
    "save_image_grid",
    "plot_metrics",
    "interpolate",
    "noise_perturbation",
    "reconstruct",
    "Reconstruction",
    "DEFAULT_TOLERANCE",
    "finite_samples",
    "plot_runs",
    "run_summary",
]
