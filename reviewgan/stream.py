"""Continuous batching for the pretrained decoder (PretrainedAutoencoder): reviews decode in a fixed
set of slots, each at its own position (llama.SlotCache); one that ends gives its slot to the next
waiting review at the next step, so the matrix units see full batches instead of a batch that thins
out as its reviews end. ReviewGAN._stream feeds it the screen's draws; the batch-by-batch decoder
(PretrainedAutoencoder.generate) is the reference it is tested against.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from .pretrained import PretrainedAutoencoder, next_tokens

# Slots of continuous batching (stream). Its cache is allocated whole, STREAM_ROWS x (memory slots +
# max_len) positions: 289 MB for the bundled model, against at most 128 MiB for the batch-by-batch
# KVCache, and generation's peak RSS is 1,428 MB (1,322 at 192 slots, which decode ~5 % slower).
STREAM_ROWS = 256
SAMPLE_ROWS = 16  # rows whose next tokens are picked at once (stream)
# Finished reviews are handed to `finished` in groups of at least this many while enough others wait
# for a slot (the screen reads them in one batch), and as they come once few wait (so redraws join
# the batch before it drains).
HAND_OVER = 32


@torch.no_grad()
def stream(ae: PretrainedAutoencoder, rows: Rows, max_len: int, finished, drop=None, width: int | None = None,
           spare=None, strength: float = 1.0) -> None:
    """Decode `rows` with the autoencoder's decoder in `width` slots (default: one per row; at most
    STREAM_ROWS); a review that ends leaves its slot and the next waiting one takes it at the next
    step, so the matrix units see full batches until the last reviews. Each row decodes as
    `PretrainedAutoencoder._generate` decodes it alone (its own code, uniforms and settings; tests
    compare the two), up to the rounding a batch of other rows can bring.

    finished(ids, token lists, ended flags) -> Rows to decode as well, or None: called with reviews
    as they end (the screen's redraws come back this way). drop() -> (n,) bools over ids: reviews to
    stop (cancelled requests). spare(free slots, busy slots) -> Rows or None: asked whenever none
    waits and a slot is free, for work to fill them with (the screen's next draws, started early).
    strength: the code memory's (CodeMemory), for every row."""
    lm, tok, dev, M = ae.lm, ae.tokenizer, rows.codes.device, ae.memory_slots
    W = max(1, min(STREAM_ROWS, width or len(rows)))  # slots: up to STREAM_ROWS (memory)
    cache = lm.new_slot_cache(W, M + max_len)
    ids = torch.full((W,), -1, dtype=torch.long, device=dev)  # each slot's review, -1: free
    t = torch.zeros(W, dtype=torch.long, device=dev)  # tokens written so far
    tokens = torch.zeros(W, dtype=torch.long, device=dev)  # the last one (the input of the next step)
    greedy = torch.zeros(W, dtype=torch.bool, device=dev)
    temp, top_p = torch.ones(W, 1, device=dev), torch.ones(W, 1, device=dev)
    offset = torch.zeros(W, 1, lm.shape.dim, device=dev)
    u = torch.zeros(W, max_len, device=dev)
    out = torch.zeros(W, max_len, dtype=torch.long, device=dev)
    banned = torch.tensor([i for i in tok.special_ids if i != tok.end_id], device=dev)
    V = lm.shape.vocab_size
    low, full = torch.empty(W, V, dtype=lm.dtype, device=dev), torch.empty(SAMPLE_ROWS, V, device=dev)
    done_buf = []
    waiting = rows

    def hand_over():
        nonlocal waiting
        if not done_buf:
            return
        i, r, e = zip(*done_buf)
        done_buf.clear()
        more = finished(list(i), list(r), list(e))
        if more is not None and len(more):  # first in line: a review's next draw waits for its last
            waiting = Rows.cat(more, waiting)

    while True:
        if drop is not None:
            gone = drop()
            if gone is not None:
                live = ids[:cache.used] >= 0
                out_ = live & gone[ids[:cache.used].clamp(min=0)]
                ids[:cache.used][out_] = -1
                cache.lengths[:cache.used][out_] = 0
                if len(waiting) and bool(gone[waiting.ids].any()):
                    waiting = waiting.where(~gone[waiting.ids])
        if len(done_buf) >= HAND_OVER or (len(waiting) < len(done_buf) + HAND_OVER and done_buf):
            hand_over()
        if spare is not None and not len(waiting):
            busy = int((ids[:cache.used] >= 0).sum())
            more = spare(W - busy, busy) if busy < W else None
            if more is not None and len(more):
                waiting = more
        holes = (ids[:cache.used] < 0).nonzero().squeeze(1)
        free = torch.cat([holes, torch.arange(cache.used, W, device=dev)])[:len(waiting)]
        if free.numel():  # waiting reviews take the free slots, then the unused ones
            new, waiting = waiting.take(free.numel())
            memory, off = ae.memory(new.codes, strength)
            cache.start(free, memory)
            ids[free], t[free], tokens[free] = new.ids, 0, tok.start_id
            greedy[free], temp[free, 0], top_p[free, 0] = new.greedy, new.temperature, new.top_p
            offset[free], u[free] = off, new.uniforms
            cache.used = max(cache.used, int(free.max()) + 1)
        idle = int((ids[:cache.used] < 0).sum())
        # None waits: the batch shrinks to the reviews still writing, once an eighth of it is idle.
        # Compacting moves the whole cache (~1 ms a layer at 256 rows); an idle row costs a row's
        # share of a step, so shrinking at every review's end cost more than it saved.
        if not len(waiting) and idle and (idle * 8 >= cache.used or idle == cache.used):
            keep = (ids[:cache.used] >= 0).nonzero().squeeze(1)
            cache.keep(keep)
            n = keep.numel()
            for x in (ids, t, tokens, greedy, temp, top_p, offset, u, out):
                x[:n] = x[keep].clone()
            ids[n:] = -1
        n = cache.used
        if n == 0:
            hand_over()
            if not len(waiting):
                break
            continue
        cache.prepare()
        h = lm.hidden(lm.embed(tokens[:n, None]) + offset[:n], start=t[:n], cache=cache)
        lm.logits(h[:, 0], out=low[:n])  # (n, V) in the model's dtype
        draw = u[:n].gather(1, t[:n, None].clamp(max=max_len - 1))
        nxt = torch.empty(n, dtype=torch.long, device=dev)
        # The next tokens SAMPLE_ROWS rows at a time, as `_generate` picks them for all rows at once:
        # the float32 logits of a few rows stay in the processor's cache through the half-dozen
        # passes sampling makes over them, and take 3 MB instead of 50.
        for a in range(0, n, SAMPLE_ROWS):
            r = slice(a, min(n, a + SAMPLE_ROWS))
            logits = full[:r.stop - a].copy_(low[r])  # float32
            logits[:, banned] = -float("inf")
            nxt[r] = next_tokens(logits, greedy[r], temp[r], top_p[r], draw[r])
        live = ids[:n] >= 0  # (a slot left free while too few reviews wait is computed, not kept)
        cache.advance(live)
        at = live.nonzero().squeeze(1)
        out[at, t[at]] = nxt[at]
        t[:n] += live.long()
        tokens[:n] = nxt
        ended = nxt == tok.end_id
        stop = (ended | (t[:n] >= max_len)) & live
        for slot in stop.nonzero().squeeze(1).tolist():
            k = int(t[slot]) - 1 if bool(ended[slot]) else int(t[slot])
            done_buf.append((int(ids[slot]), out[slot, :k].tolist(), bool(ended[slot])))
        ids[:n][stop] = -1
        cache.lengths[:n][stop] = 0  # a free slot is computed at length 0 until a review takes it


@dataclass
class Rows:
    """Reviews waiting for the decoder (stream), one entry per review: the caller's id for it, its
    code, the uniforms its sampling draws with (one per step), and its decoding settings."""
    ids: torch.Tensor  # (n,) long
    codes: torch.Tensor  # (n, C)
    uniforms: torch.Tensor  # (n, max_len)
    greedy: torch.Tensor  # (n,) bool
    temperature: torch.Tensor  # (n,) float
    top_p: torch.Tensor  # (n,) float

    def __len__(self) -> int:
        return self.ids.numel()

    def take(self, k: int) -> tuple[Rows, Rows]:
        """-> the first k, the rest."""
        return (Rows(*(x[:k] for x in _fields_of(self))), Rows(*(x[k:] for x in _fields_of(self))))

    def where(self, keep: torch.Tensor) -> Rows:
        return Rows(*(x[keep] for x in _fields_of(self)))

    @staticmethod
    def cat(a: Rows, b: Rows) -> Rows:
        return Rows(*(torch.cat([x, y]) for x, y in zip(_fields_of(a), _fields_of(b))))


def _fields_of(rows: Rows) -> tuple:
    return tuple(getattr(rows, f.name) for f in fields(rows))
