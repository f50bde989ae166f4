"""reviewgan: a conditional latent-space text GAN that writes positive or negative movie reviews."""

__version__ = "0.20.0"

from .model import ReviewGAN  # noqa: E402
from .records import Review, Rewrite  # noqa: E402

__all__ = ["ReviewGAN", "Review", "Rewrite", "__version__"]
