"""The readers' measure: a blind, shuffled mix of real held-out chunks and texts from models, and the
table of what readers gave each source.

    python scripts/blind_mix.py make --model DIR [--peer NAME=DIR ...] [--samples NAME=FILE ...] [--recon] [--n 30] --out mix/
    python scripts/blind_mix.py score mix/key.json mix/reader1.jsonl mix/reader2.jsonl [--by-length | --split-at WORDS]
    python scripts/blind_mix.py diversity DIR[@T] ... [--n 250]

The model or a peer may name its sampling temperature, `--peer lm=runs/plm@0.9` (else its own default), so sources
can be read at equal diversity; `diversity` gives each model's Self-BLEU-4, distinct-2, exact copies and
share of word 6-grams found in training text over n reviews per sentiment (seed 0).

`make` writes mix/mix.md (numbered texts, no source) for readers who have not seen the code,
mix/key.json (each number's source and the sentiment it was asked for or has) and mix/reader.md (what
each reader is told, with MIXFILE and OUTFILE to fill in: its own copy of mix.md and its ratings file). Sources, n each,
half per sentiment: `real` (held-out test chunks of the model's data), `model` (generate, seed 0),
`recon` (the model's greedy decoding of the codes of other held-out chunks; `NAME-recon` a peer's, of the
same chunks), each peer model and each `--samples` file (its first reviews of each sentiment).
A reader writes one JSON line per text: {"id": 1, "fluency": 1-5, "coherence": 1-5, "human": true,
"sentiment": "positive" | "negative" | "unclear"}. `score` prints, per source, the readers' mean
fluency and coherence, the share taken for human and the share read as the sentiment asked for.
"""

import argparse
import json
import random
from pathlib import Path

import numpy as np

from reviewgan import ReviewGAN
from reviewgan.data import SENTIMENTS
from reviewgan.units import prepare_data


def make(args):
    model_dir = with_temperature(args.model)[0]
    model = ReviewGAN.from_pretrained(model_dir)
    data = prepare_data(model.cfg, model.tokenizer, log=lambda m: None)
    test = data.units["test"]
    rng = random.Random(args.seed)
    by_label = {y: [i for i, l in enumerate(test.labels) if l == y] for y in (0, 1)}
    for y in by_label:
        rng.shuffle(by_label[y])
    half = args.n // 2
    items = []
    for y in (0, 1):  # real chunks, and other chunks for the reconstructions
        items += [("real", SENTIMENTS[y], test.texts[i]) for i in by_label[y][:half]]
    idx = by_label[0][half:2 * half] + by_label[1][half:2 * half]  # other chunks, for the reconstructions
    peers = [("model", args.model)] + [tuple(p.split("=", 1)) for p in args.peer]
    for name, spec in peers:
        folder, temperature = with_temperature(spec)
        m = model if folder == model_dir else ReviewGAN.from_pretrained(folder)
        for s in SENTIMENTS:
            items += [(name, s, t) for t in m.generate(s, n=half, seed=args.seed, temperature=temperature)]
        if args.recon and m.autoencoder is not None and not m.is_lm:  # every decoder reads the same chunks' codes
            codes = m.autoencoder.encode_texts([test.texts[i] for i in idx], m.tokenizer, m.cfg.data.max_len, m.device)
            recon = m.decode(codes, greedy=True, max_len=m.cfg.sample.max_len)
            source = "recon" if name == "model" else f"{name}-recon"
            items += [(source, SENTIMENTS[test.labels[i]], t) for i, t in zip(idx, recon)]
    for spec in args.samples:  # reviews written elsewhere (e.g. scripts/chat_peer.py): the first n/2 of each sentiment
        name, path = spec.split("=", 1)
        rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
        for s in SENTIMENTS:
            items += [(name, s, r["text"]) for r in rows if r["sentiment"] == s][:half]
    rng.shuffle(items)
    write_mix(items, args.out)


# What each reader is told (reader.md): the same words for every mix, so mixes compare. Each reader gets
# a copy of mix.md in a folder of its own and writes its ratings there.
READER = """You are a careful reader rating short English texts. They are openings of movie reviews (one to three
sentences each); some were written by people, some by machines. You do not know which is which, and
you must not try to find out from files: read only the one file named below.

Read the file MIXFILE. It has {n} numbered texts. For EVERY numbered text, write one JSON line to the file
OUTFILE (create it; one line per text, in order, nothing else in the file):

{{"id": 1, "fluency": 3, "coherence": 2, "human": false, "sentiment": "positive"}}

- fluency 1-5: is it grammatical, natural English? (5 = flawless, 1 = broken)
- coherence 1-5: does it mean one thing, without contradiction, nonsense, or details that go nowhere?
  (5 = fully makes sense as a review opening, 1 = meaningless). A text may be cut off at the end;
  do not count that against it.
- human: true if a person could plausibly have written it as a review, else false.
- sentiment: "positive", "negative" or "unclear": the opinion of the film the text expresses.

Rules: judge each text on its own. Do not open, list or search any other file or folder; do not run
any program or script other than what you need to write the output file; do not use git. Write the ratings
yourself by reading; do not generate them with code. When done, check that the output file has exactly one
valid JSON line per numbered text, and reply with the number of lines written and two sentences on
what made texts incoherent.
"""


def write_mix(items: list[tuple[str, str, str]], folder) -> None:
    """(source, sentiment, text) items, in the order given -> folder/mix.md, the numbered texts for the
    readers, folder/key.json, each number's source and sentiment (for `score`), and folder/reader.md,
    the instructions each reader gets (MIXFILE and OUTFILE: its copy of mix.md and its ratings file)."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    lines = ["Rate each text: fluency 1-5, coherence 1-5 (does it mean one thing, without contradiction or "
             "nonsense), human (could a person have written it), sentiment (positive, negative or unclear).", ""]
    lines += [f"{i + 1}. {t}" for i, (_, _, t) in enumerate(items)]
    (out / "mix.md").write_text("\n".join(lines) + "\n")
    key = [{"id": i + 1, "source": src, "sentiment": s, "text": t} for i, (src, s, t) in enumerate(items)]
    (out / "key.json").write_text(json.dumps(key, indent=1))
    (out / "reader.md").write_text(READER.format(n=len(items)))
    print(f"{len(items)} texts in {out / 'mix.md'}; key in {out / 'key.json'}; readers' instructions in "
          f"{out / 'reader.md'}")


def with_temperature(spec: str) -> tuple[str, float | None]:
    """"DIR@T" -> (DIR, T); "DIR" -> (DIR, None: the model's own decoding)."""
    folder, _, t = spec.partition("@")
    return folder, float(t) if t else None


def diversity(args):
    from reviewgan.metrics import copy_frac, distinct_n, self_bleu, train_ngram_frac
    train_texts = None
    for spec in args.models:
        folder, temperature = with_temperature(spec)
        m = ReviewGAN.from_pretrained(folder)
        if train_texts is None:  # the first model's training chunks, the same yardstick for every model
            train_texts = prepare_data(m.cfg, m.tokenizer, log=lambda s: None).units["train"].texts
        texts = [t for s in SENTIMENTS for t in m.generate(s, n=args.n, seed=0, temperature=temperature)]
        print(f"{spec}: Self-BLEU-4 {self_bleu(texts):.3f}, distinct-2 {distinct_n(texts, 2):.3f}, copied "
              f"{copy_frac(texts, train_texts):.3f}, word 6-grams in training text {train_ngram_frac(texts, train_texts):.3f}")


def score(args):
    key = {k["id"]: k for k in json.loads(Path(args.key).read_text())}
    table = {}  # source -> reader -> lists
    given = {}  # id -> the coherence each reader gave it (by_length)
    for r, path in enumerate(args.ratings):
        for line in Path(path).read_text().splitlines():
            if not line.strip():
                continue
            x = json.loads(line)
            k = key[int(x["id"])]
            t = table.setdefault(k["source"], {}).setdefault(r, {"fluency": [], "coherence": [], "human": [], "sent": []})
            t["fluency"].append(float(x["fluency"]))
            t["coherence"].append(float(x["coherence"]))
            given.setdefault(int(x["id"]), []).append(float(x["coherence"]))
            t["human"].append(bool(x["human"]))
            t["sent"].append(x["sentiment"] == k["sentiment"])
    print("| source | texts | fluency (1-5) | coherence (1-5) | taken for human | sentiment read as asked |")
    print("|---|---|---|---|---|---|")
    for src, readers in table.items():
        def mean(f, scale=1.0):
            per = [float(np.mean(v[f])) * scale for v in readers.values()]
            return f"{np.mean(per):.2f} ({' / '.join(f'{p:.2f}' for p in per)})"
        n = len(next(iter(readers.values()))["fluency"])
        print(f"| {src} | {n} | {mean('fluency')} | {mean('coherence')} | {mean('human', 100)} % | {mean('sent', 100)} % |")
    if args.by_length or args.split_at:
        by_length(key, given, args.split_at)


def by_length(key: dict, given: dict[int, list[float]], split_at: int | None = None) -> None:
    """Coherence against length, per source: each source's texts split at their median word count
    (or at `split_at` words for every source), the readers' mean coherence of the shorter and the
    longer part, and Spearman's rho of words against coherence. given: each text's id -> the coherence
    each reader gave it (a text's coherence: their mean)."""
    from scipy.stats import spearmanr
    print(f"\n| source | {'split at words' if split_at else 'median words'} | coherence (texts), shorter | "
          "longer | rho (words, coherence) |")
    print("|---|---|---|---|---|")
    for src in dict.fromkeys(k["source"] for k in key.values()):
        rows = [(len(k["text"].split()), float(np.mean(given[i]))) for i, k in key.items()
                if k["source"] == src and i in given]
        words, coh = np.array(rows).T
        cut = split_at or np.median(words)

        def part(m):
            return f"{coh[m].mean():.2f} ({int(m.sum())})" if m.any() else "-"
        print(f"| {src} | {cut:.0f} | {part(words <= cut)} | {part(words > cut)} | {spearmanr(words, coh)[0]:+.2f} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("--model", required=True, metavar="DIR[@T]")
    m.add_argument("--peer", action="append", default=[], metavar="NAME=DIR[@T]")
    m.add_argument("--samples", action="append", default=[], metavar="NAME=FILE",
                   help="also mix the first n/2 reviews of each sentiment from this JSONL file (generate --format jsonl)")
    m.add_argument("--recon", action="store_true", help="add the model's (and each peer autoencoder's) reconstructions of held-out chunks")
    m.add_argument("--n", type=int, default=30, help="texts per source")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--out", required=True)
    s = sub.add_parser("score")
    s.add_argument("key")
    s.add_argument("ratings", nargs="+")
    s.add_argument("--by-length", action="store_true", help="also each source's coherence in its shorter and "
                   "longer half (by words)")
    s.add_argument("--split-at", type=int, metavar="WORDS", help="as --by-length, every source split at this many words")
    d = sub.add_parser("diversity")
    d.add_argument("models", nargs="+", metavar="DIR[@T]")
    d.add_argument("--n", type=int, default=250, help="reviews per sentiment")
    args = ap.parse_args()
    {"make": make, "score": score, "diversity": diversity}[args.cmd](args)


if __name__ == "__main__":
    main()
