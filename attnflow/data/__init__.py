"""Local dataset readers (no network) through a memory-mapped cache, dequantization, a resumable
batch sampler and the prefetching batch stream of training.

=============  =========================================================  ===========================
file           holds                                                      paper
=============  =========================================================  ===========================
readers.py     load_dataset / load_configured: one entry over the readers
source.py      Source: a split's files, decoded chunk by chunk on demand
cache.py       the on-disk cache: decoded once, .npy arrays that every
               process memory-maps
dataset.py     ImageDataset, reduce_bits (n_bits)                         Glow (Kingma & Dhariwal 2018)
dequantize.py  uniform dequantization (k + u) / L                         Theis et al. 2016
sampler.py     BatchSampler: seeded, resumable epochs of index batches
batches.py     BatchStream: a process's rows, gathered and dequantized
               ahead of the step on a thread
idx.py         MNIST-format IDX files                                     LeCun et al. 1998
cifar.py       CIFAR-10 python batches (restricted unpickler)             Krizhevsky 2009
npz.py         downsampled ImageNet .npz files                            Chrabaszcz et al. 2017
folder.py      image folders (PNG / JPEG)
pairs.py       condition images: low resolution, label maps, paired       SRFlow (Lugmayr et al. 2020)
               folders
=============  =========================================================  ===========================
"""
from attnflow.data.batches import Batch, BatchStream
from attnflow.data.cache import CacheError
from attnflow.data.dataset import ImageDataset, reduce_bits
from attnflow.data.dequantize import dequantize, to_float
from attnflow.data.readers import dataset_names, load_configured, load_dataset
from attnflow.data.sampler import BatchSampler

__all__ = [
    "Batch",
    "BatchStream",
    "CacheError",
    "ImageDataset",
    "load_dataset",
    "load_configured",
    "dataset_names",
    "reduce_bits",
    "dequantize",
    "to_float",
    "BatchSampler",
]
