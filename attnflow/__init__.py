"""attnflow: normalizing flows with attention on images (Glow, AttnFlow, ACF, DenseFlow)."""
from .core import Bijection, Chain, Flow

__version__ = "0.1.0"
__all__ = ["Bijection", "Chain", "Flow", "__version__"]
