"""Local dataset readers (no network), dequantization and a resumable batch sampler."""
from attnflow.data.dataset import ImageDataset, reduce_bits
from attnflow.data.dequantize import dequantize, to_float
from attnflow.data.readers import dataset_names, load_configured, load_dataset
from attnflow.data.sampler import BatchSampler

__all__ = [
    "ImageDataset",
    "load_dataset",
    "load_configured",
    "dataset_names",
    "reduce_bits",
    "dequantize",
    "to_float",
    "BatchSampler",
]
