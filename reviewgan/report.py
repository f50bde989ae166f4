"""Reports: an evaluation's metrics.json, report.md and plots; comparison tables; dataset statistics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from . import plots
from .config import Config
from .data import load_records, sentences_of
from .units import length_stats, prepare_data

# Rows of the comparison table: (key, label, format). Keys follow `reviewgan evaluate --json`.
COLUMNS = [
    ("sentiment_acc_positive", "sent. acc +", "{:.3f}"), ("sentiment_acc_negative", "sent. acc -", "{:.3f}"),
    ("self_bleu4", "Self-BLEU-4 ↓", "{:.3f}"), ("distinct2", "distinct-2", "{:.3f}"),
    ("unique_frac", "unique", "{:.3f}"), ("rep4_frac", "rep. 4-gram ↓", "{:.3f}"),
    ("end_frac", "ends", "{:.3f}"), ("copy_frac", "copied ↓", "{:.3f}"), ("test_bleu4", "test-BLEU-4", "{:.3f}"),
    ("forward_ppl", "fwd PPL ↓", "{:.1f}"), ("reverse_ppl", "rev PPL ↓", "{:.1f}"), ("fed", "FED ↓", "{:.3f}"),
    ("mauve", "MAUVE", "{:.3f}"), ("base_ppl", "base-LM PPL ↓", "{:.1f}"),
    ("sentiment_acc_code_only_positive", "code only +", "{:.3f}"),
    ("sentiment_acc_code_only_negative", "code only -", "{:.3f}"), ("mean_tokens", "tokens", "{:.1f}"),
]


def _fmt(values, fmt: str) -> str:
    vals = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if not vals:
        return "n/a"
    if len(vals) == 1:
        return fmt.format(vals[0])
    return f"{fmt.format(float(np.mean(vals)))} ± {fmt.format(float(np.std(vals)))}"


def comparison_table(rows: dict[str, list[dict]]) -> str:
    """Markdown table, one row per name; several results under one name give mean ± std."""
    head = "| | " + " | ".join(label for _, label, _ in COLUMNS) + " | runs |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 2)]
    for name, results in rows.items():
        cells = [_fmt([r.get(k) for r in results], f) for k, _, f in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {len(results)} |")
    return "\n".join(lines)


def write_report(result: dict, out: Path, model=None, real: dict | None = None) -> Path:
    """metrics.json, report.md and the plots for one evaluated model, into `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(result, indent=2))
    figures = []
    if model is not None and model.path is not None and (Path(model.path) / "metrics.jsonl").exists():
        plots.training_curves(model.path, out / "training_curves.png")
        figures.append(("Training curves", "training_curves.png"))
    if model is not None and result.get("lengths"):
        plots.length_histogram({"real test reviews": np.array(result["lengths"]["real"]),
                                "generated": np.array(result["lengths"]["generated"])}, out / "lengths.png")
        figures.append(("Length of real vs generated reviews", "lengths.png"))
    if model is not None and model.generator is not None:
        codes_plot(model, out / "codes.png")
        figures.append(("Real vs generated codes (PCA), by sentiment (paper Figure 8)", "codes.png"))
    rows = {"real reviews": [real]} if real else {}
    rows[result.get("source", "model")] = [result]
    md = [f"# Evaluation of `{result.get('model')}`", "",
          f"{result['n']} reviews (half per requested sentiment), seed {result['seed']}; metrics on the held-out "
          f"test split. Judge accuracy on real held-out reviews: {result['judge_acc_real']:.3f}.", "",
          comparison_table(rows), ""]
    if result.get("recon_token_acc") is not None:
        md += [f"Autoencoder on held-out reviews: token accuracy {result['recon_token_acc']:.3f}, "
               f"reconstruction BLEU-4 {result['recon_bleu4']:.3f}.", ""]
    for key, why in result.get("notes", {}).items():
        md.append(f"- `{key}`: {why}")
    md += ["", "## Samples", ""]
    for s, texts in result.get("samples", {}).items():
        md += [f"**{s}**", ""] + [f"- {t}" for t in texts] + [""]
    for title, name in figures:
        md += [f"## {title}", "", f"![{title}]({name})", ""]
    (out / "report.md").write_text("\n".join(md))
    return out / "report.md"


@torch.no_grad()
def codes_plot(model, path: Path, n: int = 600) -> None:
    """PCA of real test codes and generated codes, coloured by sentiment (the paper's Figure 8)."""
    from .evaluate import yardsticks  # only when a report plots codes: `stats` and `report` need no model
    ys = yardsticks(model.cfg, model.tokenizer, log=lambda m: None)
    units = ys.data.units["test"]
    units = units.subset(range(min(n, len(units))))
    real = model.autoencoder.encode_units(units, model.device).float().cpu().numpy()
    real_y = np.array(units.labels)
    g = torch.Generator(device=model.device).manual_seed(0)
    fake_y = torch.arange(n, device=model.device) % 2
    fake = model.generator(torch.randn(n, model.cfg.gan.noise_dim, generator=g, device=model.device), fake_y)
    plots.codes_scatter(real, real_y, fake.float().cpu().numpy(), fake_y.cpu().numpy(), path)


def stats(cfg: Config, out: Path | None = None, log=print) -> dict:
    """Length statistics of raw reviews and of training units, and the length histogram (paper Figure 6)."""
    data = prepare_data(cfg, None, log)
    records, _ = load_records(cfg.data.dataset, cfg.data.text_column, cfg.data.label_column)
    raw = np.array([len(ids) for ids in data.tokenizer.encode_batch([" ".join(sentences_of([r], "sentence")[0])
                                                                     for r in records])])
    units = np.concatenate([u.lengths() for u in data.units.values()])
    result = {"reviews_tokens": length_stats(raw), "units_tokens": length_stats(units),
              "units": {k: len(u) for k, u in data.units.items()},
              "positive_frac_train": float(np.mean(data.units["train"].labels))}
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        plots.length_histogram({"full reviews": raw, f"training units (<= {cfg.data.max_len})": units}, Path(out) / "lengths.png")
        (Path(out) / "stats.json").write_text(json.dumps(result, indent=2))
    return result


REWRITE_COLUMNS = [
    ("transfer_acc", "transfer", "{:.3f}"), ("transfer_to_positive", "to +", "{:.3f}"),
    ("transfer_to_negative", "to -", "{:.3f}"), ("source_bleu4", "BLEU-4 to source", "{:.3f}"),
    ("source_cosine", "cosine to source", "{:.3f}"), ("identical_frac", "identical ↓", "{:.3f}"),
    ("rep4_frac", "rep. 4-gram ↓", "{:.3f}"), ("base_ppl", "base-LM PPL ↓", "{:.1f}"), ("mauve", "MAUVE", "{:.3f}"),
    ("self_bleu4", "Self-BLEU-4 ↓", "{:.3f}"),
]


def write_rewrite_report(result: dict, out: Path) -> None:
    """`evaluate --rewrite --out DIR`: rewrite.json, rewrite.md (rewrite_table) and rewrite_trade.png."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "rewrite.json").write_text(json.dumps(result, indent=2))
    (out / "rewrite.md").write_text(rewrite_table(result) + "\n")
    plots.rewrite_trade(result, out / "rewrite_trade.png")


def rewrite_table(result: dict) -> str:
    """Markdown table of `evaluate --rewrite`: one row per (method, strength, copy), then the baselines."""
    head = "| rewrite | " + " | ".join(label for _, label, _ in REWRITE_COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(REWRITE_COLUMNS) + 1)]
    named = [(f"{r['method']}, strength {r['strength']:g}, {plots.copy_label(r)}" + (" (default)" if r["default"] else ""), r)
             for r in result["rows"]] + [(f"baseline: {k}", v) for k, v in result["baselines"].items()]
    for name, r in named:
        lines.append(f"| {name} | " + " | ".join(_fmt([r.get(k)], f) for k, _, f in REWRITE_COLUMNS) + " |")
    real = result.get("base_ppl_real")
    lines.append("")
    lines.append(f"{result['n']} held-out chunks, half of each sentiment, each flipped, {result['decoding']}. "
                 f"Base-LM perplexity of the sources: {_fmt([real], '{:.1f}')}. The model's reading of the sources' sentiment: "
                 f"{result['read_acc']:.3f} right (the judge's: {result['judge_acc_sources']:.3f}).")
    return "\n".join(lines)
