"""reviewgan: a conditional latent-space text GAN that writes positive or negative movie reviews."""

__version__ = "0.3.0"

from .model import Review, ReviewGAN  # noqa: E402

__all__ = ["ReviewGAN", "Review", "__version__"]
