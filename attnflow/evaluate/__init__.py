"""Evaluation of trained flows: likelihoods, samples, reconstructions, certificates, metrics.

===================  ================================================  ===================================
file                 holds                                             paper
===================  ================================================  ===================================
likelihood.py        bits_per_dim, evaluate_bits_per_dim,              Theis et al. 2016 (bits/dim of
                     log_prob_to_bits_per_dim, check_levels            dequantized data)
importance.py        importance-weighted log p of noise-augmented      Burda et al. 2016; DenseFlow
                     flows (DenseFlow's evaluation)
classification.py    evaluate_hybrid, accuracy_summary: a hybrid       Residual Flows; ACF Table 3
                     model's test accuracy beside its bits/dim
reconstruction.py    reconstruct, Reconstruction: each image's         ACF (non-invertible dot-product
                     inverse error; wrong preimages told apart         attention)
perturbation.py      noise_perturbation: bits/dim and inverses of      ACF Sec. 5
                     noisy test images
certificates.py      certify: every residual block's certified         i-ResNet; Residual Flows; ACF
                     Lip(g) and its layers' norms as used
lipschitz_search.py  search_jacobian_norm: empirical lower estimate
                     of a branch's Lipschitz constant
latent.py            interpolate between images in the latent space    Glow
sampling.py          finite_samples: the finite samples of a draw
superres.py          PSNR, SSIM, LR-PSNR and diversity of              SRFlow Sec. 4; AttnFlow Table 4
                     conditional flows; condition images, grids
fidelity.py          FID, KID, Inception Score (torch-fidelity)        Heusel et al. 2017; Binkowski et
                                                                       al. 2018; Salimans et al. 2016
images.py            image_grid, save_image_grid, plot_metrics (PNG)
runs.py              run_summary, plot_runs: comparing training runs
===================  ================================================  ===================================
"""
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
