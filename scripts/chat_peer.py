"""The untrained peer: the bundled model's base (SmolLM2-135M-Instruct) asked in its chat template for a
short positive or negative movie review. No training; the reviews to measure beside reviewgan's.

    python scripts/chat_peer.py [--n 500] [--temperature 0.7] [--out chat_peer.jsonl]
    reviewgan evaluate --samples chat_peer.jsonl --json

Writes n reviews per sentiment as `generate --format jsonl` does (sentiment, text, tokens, ended), so
`reviewgan evaluate --samples` measures them and `scripts/blind_mix.py` can mix them with real chunks.
The prompt is SmolLM2-Instruct's ChatML with its default system line; the reply is sampled at the
temperature given (the bundled model's default, 0.7) until <|im_end|> or 48 tokens, seed 0.
"""

import argparse
import json

import torch

from reviewgan.base import load_base
from reviewgan.llama import Llama
from reviewgan.model import default_model_dir, load_spec
from reviewgan.pretrained import next_tokens
from reviewgan.precision import compute_dtype

SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
ASK = "Write a short {} review of a movie, in one or two sentences."


def prompt(sentiment: str) -> str:
    return (f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{ASK.format(sentiment)}<|im_end|>\n"
            "<|im_start|>assistant\n")


@torch.no_grad()
def replies(lm: Llama, tok, sentiment: str, n: int, temperature: float, max_len: int, g: torch.Generator):
    ids = torch.tensor(tok.encode(prompt(sentiment)))[None].expand(n, -1)
    P = ids.size(1)
    cache = lm.new_cache(n, P + max_len)
    h = lm.hidden(lm.embed(ids), 0, cache=cache)  # the prompt, once for every row
    out, ended = torch.full((n, max_len), tok.end_id), torch.zeros(n, dtype=torch.bool)
    banned = torch.tensor([i for i in tok.special_ids if i != tok.end_id])
    for t in range(max_len):
        logits = lm.logits(h[:, -1]).float()
        logits[:, banned] = -float("inf")
        nxt = next_tokens(logits, torch.zeros(n, dtype=torch.bool), temperature, 1.0, generator=g)
        nxt = torch.where(ended, torch.full_like(nxt, tok.end_id), nxt)  # an ended row writes nothing more
        out[:, t] = nxt
        ended |= nxt == tok.end_id
        if bool(ended.all()):
            break
        h = lm.hidden(lm.embed(nxt[:, None]), P + t, cache=cache)
    rows = []
    for r, e in zip(out.tolist(), ended.tolist()):
        r = r[:r.index(tok.end_id)] if e else r
        rows.append({"sentiment": sentiment, "text": tok.decode(r).strip().strip('"'), "tokens": len(r) + int(e),
                     "ended": e})
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=500, help="reviews per sentiment")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--max-len", type=int, default=48)
    p.add_argument("--batch", type=int, default=125, help="rows decoded at once")
    p.add_argument("--out", default="chat_peer.jsonl")
    args = p.parse_args()
    cfg, _, meta = load_spec(default_model_dir())  # the bundled model names its base and the base's sha256
    base = load_base(cfg.ae.base, meta["base"]["sha256"])
    lm = Llama(base.shape, compute_dtype("auto"))
    lm.load_state_dict(base.weights, assign=True)
    lm.set_dtype(compute_dtype("auto"))
    g = torch.Generator().manual_seed(0)
    with open(args.out, "w") as f:
        for s in ("positive", "negative"):
            for a in range(0, args.n, args.batch):
                for row in replies(lm, base.tokenizer, s, min(args.batch, args.n - a), args.temperature,
                                   args.max_len, g):
                    f.write(json.dumps(row) + "\n")
    print(f"{2 * args.n} reviews in {args.out}")


if __name__ == "__main__":
    main()
