"""reviewgan: a conditional latent-space text GAN that writes positive or negative movie reviews."""

__version__ = "0.9.0"

from .model import Review, ReviewGAN, Rewrite  # noqa: E402

__all__ = ["ReviewGAN", "Review", "Rewrite", "__version__"]
