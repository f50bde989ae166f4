"""Uncased BERT-style WordPiece, trained on the training split and saved as a standard tokenizer.json.

[PAD]=0, [UNK]=1, [START]=2, [END]=3: four distinct ids. (The seed gave [END] the id of padding, so
an unmasked loss taught its decoder to emit [END]... or nothing at all.)
"""

from __future__ import annotations

import re
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

SPECIALS = ["[PAD]", "[UNK]", "[START]", "[END]"]
PAD, UNK, START, END = range(4)


class Tokenizer:
    def __init__(self, hf: HFTokenizer):
        self.hf = hf
        for i, tok in enumerate(SPECIALS):
            if hf.token_to_id(tok) != i:
                raise ValueError(f"tokenizer: {tok} must have id {i}, found {hf.token_to_id(tok)}")
        self.pad_id, self.unk_id, self.start_id, self.end_id = PAD, UNK, START, END

    @classmethod
    def train(cls, texts, vocab_size: int = 8000, min_frequency: int = 2) -> Tokenizer:
        """Train WordPiece on `texts`, deterministically: the same texts always give the same vocabulary.

        HF's trainer creates the "##x" continuation pieces lazily in hash-map order, and their ids
        break ties between equally frequent merges (huggingface/tokenizers#1794), so two runs can
        differ. Declaring every "##x" up front, in sorted order, fixes their ids and so the result.
        """
        texts = list(texts)
        normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True, clean_text=True)
        chars = set().union(*map(set, texts)) if texts else set()
        alphabet = sorted({c for c in normalizer.normalize_str("".join(sorted(chars))) if not c.isspace()})
        hf = _empty(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=100))
        trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                            special_tokens=SPECIALS + ["##" + c for c in alphabet],
                                            initial_alphabet=alphabet, show_progress=False)
        hf.train_from_iterator(texts, trainer=trainer)
        # Rebuild with the learnt vocabulary and only the four real special tokens.
        vocab = hf.get_vocab()
        hf = _empty(models.WordPiece(vocab=vocab, unk_token="[UNK]", max_input_chars_per_word=100))
        hf.add_special_tokens(SPECIALS)
        return cls(hf)

    @classmethod
    def from_file(cls, path: str | Path) -> Tokenizer:
        return cls(HFTokenizer.from_file(str(path)))

    @classmethod
    def from_str(cls, text: str) -> Tokenizer:
        return cls(HFTokenizer.from_str(text))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_str())

    def to_str(self) -> str:
        return self.hf.to_str()

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.hf.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids) -> str:
        """Token ids -> readable text: stops at [END], drops specials, joins ## pieces, tidies punctuation."""
        words: list[str] = []
        for i in ids:
            i = int(i)
            if i == END:
                break
            if i in (PAD, START):
                continue
            piece = self.hf.id_to_token(i) or "[UNK]"
            if piece.startswith("##") and len(piece) > 2:
                if words:
                    words[-1] += piece[2:]
                else:  # a sampled review may start mid-word: show the piece, not the "##"
                    words.append(piece[2:])
            else:
                words.append(piece)
        return detokenize(" ".join(words))


def _empty(model) -> HFTokenizer:
    hf = HFTokenizer(model)
    hf.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True, clean_text=True)
    hf.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    hf.decoder = decoders.WordPiece(prefix="##")
    return hf


_PUNCT_SPACE = re.compile(r" ([.,!?;:])")
_APOS = re.compile(r" ' (s|t|re|ve|ll|d|m)\b")
_HYPHEN = re.compile(r" - ")


def detokenize(text: str) -> str:
    """Undo the spaces the BERT pre-tokenizer puts around punctuation: "it ' s good ." -> "it's good."."""
    text = _APOS.sub(r"'\1", text)
    text = re.sub(r"(\w) ' (\w)", r"\1'\2", text)
    text = _HYPHEN.sub("-", text)
    text = _PUNCT_SPACE.sub(r"\1", text)
    return text.replace("[UNK]", "<unk>").strip()
