"""attnflow: normalizing flows with attention on images (Glow, AttnFlow, ACF, DenseFlow)."""
from .core import Batch, Bijection, Chain, Flow

__version__ = "0.1.0"
__all__ = ["Batch", "Bijection", "Chain", "Flow", "__version__"]
