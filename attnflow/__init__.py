"""attnflow: normalizing flows with attention on images (Glow, AttnFlow, ACF, DenseFlow).

=============  ======================================================================================
module         holds
=============  ======================================================================================
core.py        the contract: Bijection, Chain, Flow (z, logdet = f(x); x = f.inverse(z); log p(x))
flows/         the bijections (couplings, 1x1 convolutions, invertible attention, residual blocks)
nets/          the networks inside them (coupling nets, Lipschitz layers and attention, encoders)
models/        one model family a file and the family registry; ``build`` a preset's model
data/          local dataset readers, the memory-mapped cache, dequantization, batches
train/         the Trainer, its end-of-run report, checkpoints, data-parallel training
evaluate/      bits/dim, samples, reconstructions, certificates, sample-quality metrics
experiments/   the papers' experiments as commands
presets/       the bundled TOML presets
schema.py      Field and Key: a configuration value's type, range, choices and help
sections.py    DataConfig and TrainConfig: the typed ``[data]`` and ``[train]`` sections and their keys
config.py      RunConfig: presets, files, overrides and saved configurations, resolved and checked
rundir.py      RunDir: the run directory's file names and formats
cli/           the ``attnflow`` command, a module per command group
heartbeat.py   a progress line every few seconds for long steps without a bar
device.py      devices and CPU threads (``train.device``, ``--device``)
precision.py   mixed precision inside the inner networks only (``train.precision``)
sharding.py    a process's shard of the global batch (data-parallel training)
testing.py     numerical checks: brute-force log-dets and Lipschitz estimates for new layers
=============  ======================================================================================
"""
from .core import Batch, Bijection, Chain, Flow

__version__ = "0.1.0"
__all__ = ["Batch", "Bijection", "Chain", "Flow", "__version__"]
