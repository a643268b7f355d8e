"""The built-in configuration keys of attnflow, registered in :mod:`attnflow.schema`.

Upper bounds on sizes are generous sanity limits (well above the papers' settings) that keep a
typo such as ``model.hidden=64000`` from becoming an out-of-memory crash.
"""
from __future__ import annotations

from .device import DEVICE_PATTERN
from .flows.invertible_attention import ISDP_INITS
from .precision import PRECISIONS
from .schema import Field, add_family, register

__all__: list[str] = []

COUPLING_FAMILIES = ("glow", "flowpp", "marflow")
ALL_FAMILIES = ("glow", "flowpp", "marflow", "residual", "denseflow")
CONDITIONAL_FAMILIES = ("srflow", "fullglow")


def _dataset_names() -> tuple[str, ...]:
    from .data import dataset_names

    return tuple(dataset_names())


def _model(key: str, kind: type, help: str, families: tuple[str, ...], **kw: object) -> Field:
    return Field("model", key, kind, help, families=families, **kw)


register(
    # -- [data] -------------------------------------------------------------------------------
    Field("data", "name", str, "dataset", choices=_dataset_names, default="digits"),
    Field("data", "root", str, "folder or file of the dataset; empty = its default place", default=""),
    Field("data", "n_bits", int, "reduce to 2**n_bits grey levels; 0 = keep the dataset's", lo=0, hi=8, default=0),
    Field("data", "train_on", str, "images trained on: train, or train+test (AttnFlow Tables 2-3; test bits/dim "
          "are then on seen images)", choices=("train", "train+test"), default="train"),
    Field("data", "test_images", int, "test images evaluated: at most the first N of the test split; 0 = all of them",
          lo=0, hi=10**9, default=0),
    # -- [train] ------------------------------------------------------------------------------
    Field("train", "steps", int, "optimizer steps", lo=1, hi=10**9, default=1000),
    Field("train", "batch_size", int, "images per step", lo=1, hi=2**16, default=64),
    Field("train", "optimizer", str, "optimizer (sgd: plain steps, runs compare to float tolerance)", choices=("adam", "adamax", "sgd"), default="adam"),
    Field("train", "lr", float, "learning rate", lo=0.0, lo_open=True, hi=1e6, default=1e-3),
    Field("train", "weight_decay", float, "weight decay", lo=0.0, hi=1e3, default=0.0),
    Field("train", "warmup_steps", int, "linear learning-rate warm-up; 0 = off", lo=0, hi=10**9, default=100),
    Field("train", "grad_clip", float, "max global gradient norm; 0 = off", lo=0.0, default=100.0),
    Field("train", "ema_decay", float, "EMA of the weights for evaluation; 0 = off", lo=0.0, hi=1.0, hi_open=True,
          default=0.0),
    Field("train", "seed", int, "random seed", lo=0, hi=2**63 - 1, default=0),
    Field("train", "checkpoint_every", int, "steps between checkpoints", lo=1, hi=10**9, default=200),
    Field("train", "log_every", int, "steps between metric lines", lo=1, hi=10**9, default=10),
    Field("train", "eval_every", int, "steps between test evaluations; 0 = only at the end", lo=0, hi=10**9,
          default=0),
    Field("train", "eval_batches", int, "batches per evaluation during training; 0 = whole test set", lo=0,
          hi=10**9, default=0),
    Field("train", "max_bad_steps", int, "consecutive non-finite steps before a rollback to the checkpoint",
          lo=1, hi=10**6, default=5),
    Field("train", "max_rollbacks", int, "rollbacks before training stops as diverged", lo=0, hi=1000, default=5),
    Field("train", "rollback_lr_factor", float, "learning-rate factor at each rollback", lo=0.0, hi=1.0,
          lo_open=True, hi_open=True, default=0.5),
    Field("train", "device", str, "device to train on; auto = CUDA when available", pattern=DEVICE_PATTERN,
          pattern_text="auto, cpu, cuda, cuda:N", default="auto"),
    Field("train", "precision", str, "training autocast of the coupling / dense inner networks; log-dets, priors, "
          "Lipschitz layers and inverses stay float32", choices=tuple(PRECISIONS), default="fp32"),
    Field("train", "threads", int, "torch CPU threads; 0 = torch's default", lo=0, hi=1024, default=0),
    Field("train", "time_limit_s", float, "seconds of training steps before stopping; 0 = no limit", lo=0.0,
          default=0.0),
    Field("train", "compile", bool, "torch.compile the training forward (minutes of compilation first; falls back "
          "to eager with one warning when a part cannot compile)", default=False),
    Field("train", "clock", str, "what train.time_limit_s counts: wall = elapsed seconds; cpu = this process's CPU "
          "seconds (equal compute for runs sharing a machine)", choices=("wall", "cpu"), default="wall"),
    # -- [model], every family ----------------------------------------------------------------
    _model("shape", list, "channels, height and width of the images", ALL_FAMILIES, item=int, length=3, lo=1, hi=4096),
    _model("preprocess", str, "pre-processing bijection", ALL_FAMILIES, choices=("logit", "shift")),
    _model("alpha", float, "logit pre-processing margin", ALL_FAMILIES, lo=0.0, hi=0.5, hi_open=True),
    _model("hidden", int, "width of the coupling networks or residual branches", ALL_FAMILIES, lo=1, hi=4096),
    _model("heads", int, "attention heads", ("glow", "flowpp", "marflow", "residual", *CONDITIONAL_FAMILIES), lo=1,
           hi=256),
    _model("scales", int, "number of scales", ("glow", "flowpp", "marflow", "residual"), lo=1, hi=10),
    _model("learned_prior", bool, "learned prior at each factor-out", ("glow", "residual", "denseflow")),
    # -- coupling flows: glow, flowpp, marflow ------------------------------------------------
    _model("steps", int, "flow steps per scale", COUPLING_FAMILIES, lo=1, hi=256),
    _model("mask", str, "coupling mask", ("glow", "marflow"), choices=("channel", "checkerboard")),
    _model("attention", str, "invertible attention layer", COUPLING_FAMILIES, choices=("none", "imap", "isdp")),
    _model("positions", list, "attention places in a step: 1 before ActNorm, 2 after it, 3 after the 1x1 conv, 4 after the coupling", COUPLING_FAMILIES, item=int, lo=1, hi=4,
           unique=True),
    _model("patches", int, "iSDP patch grid (a perfect square)", COUPLING_FAMILIES, lo=1, hi=4096),
    _model("isdp_init", str, "iSDP initialisation: paper = A + cI (AttnFlow's d = 10, c = 1.01); gated = "
           "tanh(gamma) A + cI with gamma = 0, near the identity at the start (not in the paper)",
           COUPLING_FAMILIES, choices=ISDP_INITS),
    _model("blocks", int, "gated attention blocks per coupling network", ("flowpp", "marflow"), lo=1, hi=64),
    _model("components", int, "logistic mixture components", ("flowpp", "marflow"), lo=1, hi=64),
    _model("coupling_heads", int, "self-attention heads in the coupling networks; 0 = no self-attention",
           ("flowpp", "marflow"), lo=0, hi=256),
    _model("dequantization", str, "dequantization", ("flowpp",), choices=("uniform", "variational")),
    _model("levels", int, "grey levels of the data, for the variational dequantizer", ("flowpp",), lo=2, hi=256),
    _model("deq_steps", int, "couplings of the variational dequantizer", ("flowpp",), lo=1, hi=64),
    _model("deq_hidden", int, "width of the variational dequantizer", ("flowpp",), lo=1, hi=4096),
    _model("coupling", str, "coupling layer", ("marflow",), choices=("mixture", "affine")),
    _model("prior_group", int, "channels per autoregressive prior group", ("marflow",), lo=1, hi=4096),
    _model("prior_hidden", int, "ConvLSTM state channels of the priors", ("marflow",), lo=1, hi=4096),
    # -- contractive residual flows -----------------------------------------------------------
    _model("blocks", int, "residual blocks per scale", ("residual",), lo=1, hi=256),
    _model("branch", str, "residual branch", ("residual",), choices=("iresnet", "residual_flow", "idensenet")),
    _model("kernels", list, "kernel sizes of the branch convolutions", ("residual",), item=int, lo=1, hi=15,
           min_length=1, odd=True),
    _model("growth", int, "i-DenseNet growth (channels per dense layer)", ("residual",), lo=1, hi=4096),
    _model("depth", int, "i-DenseNet dense layers", ("residual",), lo=1, hi=64),
    _model("coeff", float, "spectral-norm coefficient (Lipschitz bound of each layer)", ("residual",), lo=0.0,
           hi=1.0, lo_open=True, hi_open=True),
    _model("attention", str, "Lipschitz attention in the branches", ("residual",),
           choices=("none", "l2", "lipnorm", "dot")),
    _model("attention_scales", list, "scales with attention; empty = all", ("residual",), item=int, lo=0, hi=9,
           unique=True),
    _model("mix_init", float, "initial attention weight", ("residual",), lo=0.0, hi=1.0, lo_open=True,
           hi_open=True),
    _model("actnorm", bool, "ActNorm before each block", ("residual",)),
    _model("squeeze_first", bool, "squeeze before the first scale", ("residual",)),
    _model("factor_out", bool, "factor out half of the channels between scales", ("residual",)),
    _model("estimator", str, "log-det estimator in training", ("residual",),
           choices=("russian_roulette", "power_series", "exact")),
    _model("n_exact", int, "exact terms of the Russian-roulette estimator", ("residual",), lo=0, hi=1000),
    _model("geom_p", float, "Russian-roulette geometric parameter", ("residual",), lo=0.0, hi=1.0, lo_open=True,
           hi_open=True),
    _model("n_terms", int, "power-series terms", ("residual",), lo=1, hi=1000),
    _model("neumann_grad", bool, "Neumann-series gradient", ("residual",)),
    _model("eval_n_exact", int, "exact terms of the evaluation estimator", ("residual",), lo=0, hi=1000),
    _model("inverse_atol", float, "tolerance of the fixed-point inverse", ("residual",), lo=0.0, hi=1.0,
           lo_open=True),
    _model("inverse_max_iter", int, "iterations of the fixed-point inverse", ("residual",), lo=1, hi=10**6),
    # -- DenseFlow ----------------------------------------------------------------------------
    _model("units", list, "invertible units per scale", ("denseflow",), item=int, lo=1, hi=64, min_length=1),
    _model("modules", list, "Glow-like modules per unit, per scale", ("denseflow",), item=int, lo=1, hi=256,
           min_length=1),
    _model("growth", int, "noise channels per cross-unit coupling", ("denseflow",), lo=0, hi=4096),
    _model("depth", int, "dense-block depth of the coupling networks", ("denseflow",), lo=1, hi=64),
    _model("dense_growth", int, "dense-block growth of the coupling networks", ("denseflow",), lo=1, hi=4096),
    _model("heads", int, "Nyström attention heads in the coupling networks; 0 = no attention", ("denseflow",), lo=0,
           hi=256),
    _model("landmarks", int, "Nyström attention landmarks", ("denseflow",), lo=1, hi=4096),
    _model("noise_depth", int, "dense-block depth of the noise network", ("denseflow",), lo=1, hi=64),
    _model("noise_growth", int, "dense-block growth of the noise network", ("denseflow",), lo=1, hi=4096),
)


# -- conditional flows: srflow (SRFlow / cAttnFlow), fullglow (Full-Glow / cAttnFlow) ----------


def _conditions() -> tuple[str, ...]:
    from .data.pairs import CONDITIONS

    return CONDITIONS


register(
    Field("data", "condition", str, "condition image paired with each image: lowres (super-resolution), "
          "labelmap (label-to-image toy), paired (folder-pairs sources); none = unconditional",
          choices=_conditions, default="none"),
    Field("data", "scale", int, "downscaling factor of data.condition=lowres", lo=2, hi=64, default=2),
    Field("data", "pad", int, "zero-pad the images to pad x pad; 0 = no padding", lo=0, hi=4096, default=0),
    _model("scale", int, "super-resolution factor: the input is H/scale x W/scale", ("srflow",), lo=2, hi=64),
    _model("levels", int, "flow levels (a squeeze each)", CONDITIONAL_FAMILIES, lo=1, hi=10),
    _model("attention", str, "invertible attention layer", CONDITIONAL_FAMILIES, choices=("none", "imap", "isdp")),
    _model("positions", list, "attention places: 0 once after each level's steps (cAttnFlow), in every step 1 "
           "before ActNorm, 2 after it, 3 after the 1x1 conv, 4 after the injector, 5 after the coupling",
           CONDITIONAL_FAMILIES, item=int, lo=0, hi=5, unique=True),
    _model("transition_steps", int, "ActNorm + 1x1 conv steps opening each level (SRFlow)", ("srflow",), lo=0, hi=16),
    _model("encoder_features", int, "width of the RRDB low-resolution encoder", ("srflow",), lo=1, hi=4096),
    _model("encoder_blocks", int, "RRDB blocks of the encoder", ("srflow",), lo=0, hi=64),
    _model("encoder_growth", int, "dense growth of the encoder's RRDB blocks", ("srflow",), lo=1, hi=4096),
    _model("source_shape", list, "channels, height and width of the source images", ("fullglow",), item=int,
           length=3, lo=1, hi=4096),
    _model("source_hidden", int, "width of the source flow's coupling networks", ("fullglow",), lo=1, hi=4096),
)
for _family in CONDITIONAL_FAMILIES:
    add_family(_family, "shape", "preprocess", "alpha", "hidden", "learned_prior", "steps", "patches", "isdp_init")


# -- hybrid models (Residual Flows' classifier head on the latent; attnflow.models.hybrid) ----
register(
    _model("classes", int, "classes of the classifier head on the latent (hybrid model); 0 = no head",
           ("residual",), lo=0, hi=100_000),
    _model("classifier_hidden", int, "width of the classifier head's convolutions", ("residual",), lo=1, hi=4096),
    Field("train", "likelihood_weight", float, "hybrid models: weight of bits/dim against the cross-entropy in "
          "bits, lambda*D in E[lambda log p(x) + log p(y|x)] (1 = Residual Flows' lambda 1/D, 0 = classifier only)",
          lo=0.0, hi=1e9, default=1.0),
)
