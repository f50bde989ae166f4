"""The `reviewgan` command: train, generate, rewrite, interpolate, evaluate, report, bench, serve, export, stats."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import __version__


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="default", help="config preset: default, paper, tiny, lm... or a .toml file")
    p.add_argument("--data", help="dataset: imdb (default), rotten_tomatoes, an aclImdb/ folder, a .csv or .jsonl file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set ae.epochs=2 (repeatable)")


def _config(args):
    from .config import apply_overrides, load_preset
    overrides = list(args.overrides)
    if args.data:
        overrides.append(f"data.dataset={args.data}")
    if getattr(args, "seed", None) is not None:
        overrides.append(f"train.seed={args.seed}")
    if getattr(args, "device", None):
        overrides.append(f"train.device={args.device}")
    if getattr(args, "dtype", None):
        overrides.append(f"train.dtype={args.dtype}")
    return apply_overrides(load_preset(args.preset), overrides)


def cmd_train(args) -> int:
    from .train import train
    cfg = _config(args)
    if args.ae_from and (args.resume or args.stage == "ae"):
        raise ValueError("--ae-from starts a new run that trains the GAN: it does not combine with --resume or --stage ae")
    model = train(cfg, args.out, stage=args.stage, resume=args.resume, force=args.force, progress=not args.quiet,
                  ae_from=args.ae_from)
    print(f"model written to {args.out}")
    if model.generator is not None:
        for sentiment in ("positive", "negative"):
            print(f"[{sentiment}] {model.generate(sentiment, n=1, seed=0)[0]}")
    return 0


def cmd_generate(args) -> int:
    from .model import ReviewGAN
    from .records import MAX_GENERATE
    if args.sentiment not in ("positive", "negative", "both"):
        raise ValueError(f"unknown sentiment {args.sentiment!r} (use positive, negative or both)")
    if not 1 <= args.n <= MAX_GENERATE:
        raise ValueError(f"-n must be between 1 and {MAX_GENERATE}, got {args.n}")
    model = ReviewGAN.from_pretrained(args.model, device=args.device or "cpu")
    sets = [f"sample.{k}={v!r}" for k, v in (("noise_scale", args.noise_scale), ("push", args.push),
                                              ("screen", args.screen), ("screen_cos", args.screen_cos),
                                              ("code_strength", args.code_strength))
            if v is not None]
    if sets:  # range-checked like every config value
        from .config import apply_overrides
        model.cfg = apply_overrides(model.cfg, sets)
    sentiments = ["positive", "negative"] if args.sentiment == "both" else [args.sentiment]
    greedy = True if args.greedy else (False if args.temperature is not None or args.top_p is not None else None)
    for k, sentiment in enumerate(sentiments):
        seed = None if args.seed is None else args.seed + k
        reviews = model.generate(sentiment, n=args.n, seed=seed, greedy=greedy, temperature=args.temperature,
                                 top_p=args.top_p, max_len=args.max_len, records=True)
        for r in reviews:
            print(json.dumps(r.to_dict()) if args.format == "jsonl" else r.text)
    return 0


def read_rewrite_input(path: str) -> tuple[list[str], list[str | None]]:
    """--input FILE (or - for standard input): one review per line, or JSONL records with `text` and
    an optional `sentiment`. Blank lines are skipped. -> (texts, sentiments or None each)."""
    data = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte {e.start} is {data[e.start]:#04x})") from None
    lines = [(i, line) for i, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not lines:
        raise ValueError(f"{path}: no reviews in it (one per line, or JSONL with a text field)")
    if not lines[0][1].lstrip().startswith("{"):
        return [line for _, line in lines], [None] * len(lines)
    texts, sentiments = [], []
    for i, line in lines:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            raise ValueError(f"{path}:{i}: not a JSON object (the file's first line is JSONL)") from None
        if not isinstance(rec, dict) or not isinstance(rec.get("text"), str):
            raise ValueError(f"{path}:{i}: a record needs a text field holding a string")
        s = rec.get("sentiment")
        if s is not None and s not in ("positive", "negative"):
            raise ValueError(f"{path}:{i}: sentiment must be positive or negative, got {s!r}")
        texts.append(rec["text"])
        sentiments.append(s)
    return texts, sentiments


def cmd_rewrite(args) -> int:
    from .model import ReviewGAN
    texts, sentiments = list(args.texts), [None] * len(args.texts)
    if args.input:
        more, given = read_rewrite_input(args.input)
        texts, sentiments = texts + more, sentiments + given
    if not texts:
        raise ValueError("no reviews to rewrite: give them as arguments or with --input FILE")
    sentiments = [args.source if s is None else s for s in sentiments]
    model = ReviewGAN.from_pretrained(args.model, device=args.device or "cpu")
    records = model.rewrite(texts, to=args.to, strength=args.strength, sentiments=sentiments, method=args.method,
                            seed=args.seed, greedy=True if args.greedy else None, temperature=args.temperature,
                            copy=args.copy)
    for i, r in enumerate(records, 1):
        if args.format == "jsonl":
            print(json.dumps(r.to_dict()))
        else:
            print(r.text)
            if r.note:
                print(f"note: review {i}: {r.note}", file=sys.stderr)
    return 0


def cmd_interpolate(args) -> int:
    from .model import ReviewGAN
    model = ReviewGAN.from_pretrained(args.model, device=args.device or "cpu")
    texts = model.interpolate(args.a, args.b, steps=args.steps, greedy=True if args.greedy else None, seed=args.seed)
    for k, text in enumerate(texts):
        t = k / (len(texts) - 1)
        print(json.dumps({"t": round(t, 4), "text": text}) if args.format == "jsonl" else f"{t:.2f}  {text}")
    return 0


def cmd_stats(args) -> int:
    from .report import stats
    cfg = _config(args)
    result = stats(cfg, Path(args.out) if args.out else None)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    for name in ("reviews_tokens", "units_tokens"):
        s = result[name]
        print(f"{name}: n={s['count']} mean={s['mean']:.1f} variance={s['variance']:.1f} sd={s['std']:.1f} "
              f"min={s['min']} p25={s['p25']:.0f} median={s['p50']:.0f} p75={s['p75']:.0f} p95={s['p95']:.0f} max={s['max']}")
    print("units per split: " + ", ".join(f"{k} {v}" for k, v in result["units"].items()))
    if args.out:
        print(f"length histogram: {Path(args.out) / 'lengths.png'}")
    return 0


def parse_settings(text: str | None) -> dict | None:
    """--strengths "mean=0.5,1,2;invert=1" -> {"mean": (0.5, 1.0, 2.0), "invert": (1.0,)}."""
    from .records import STRENGTH
    from .rewrite import METHODS
    if text is None:
        return None
    out = {}
    for part in text.split(";"):
        method, _, values = part.partition("=")
        if method.strip() not in METHODS or not values.strip():
            raise ValueError(f"--strengths: {part!r} must look like mean=0.5,1 or invert=1")
        try:
            out[method.strip()] = tuple(float(v) for v in values.split(","))
        except ValueError:
            raise ValueError(f"--strengths: {values!r} must be numbers separated by commas") from None
        lo, hi = STRENGTH
        if not all(lo <= v <= hi for v in out[method.strip()]):
            raise ValueError(f"--strengths: strengths must be in [{lo:g}, {hi:g}], got {values!r}")
    return out


def parse_copies(text: str | None) -> tuple[float, ...] | None:
    """--copy "6,0" -> (6.0, 0.0); the range is checked by evaluate_rewrite."""
    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"--copy: {text!r} must be numbers separated by commas") from None


def cmd_evaluate(args) -> int:
    from .evaluate import evaluate, sweep
    from .model import ReviewGAN
    from .report import write_report
    if args.n < 2:
        raise ValueError("--n must be at least 2")
    if args.rewrite:
        from .evaluate import evaluate_rewrite
        from .report import rewrite_table, write_rewrite_report
        if args.real or args.sweep or args.samples:
            raise ValueError("--rewrite measures rewrites of real reviews: it does not combine with --real, "
                             "--sweep or --samples")
        result = evaluate_rewrite(args.model, n=args.n, seed=args.seed, settings=parse_settings(args.strengths),
                                  log=lambda m: print(m, file=sys.stderr), temperature=args.temperature,
                                  greedy=True if args.greedy else None, copies=parse_copies(args.copy))
        if args.out:
            write_rewrite_report(result, args.out)
        print(json.dumps(result) if args.json else rewrite_table(result))
        return 0
    if args.sweep:
        result = sweep(args.model, args.sweep_models or [], n=args.n, seed=args.seed, out=args.out)
        print(json.dumps(result) if args.json else f"sweep written to {args.out}")
        return 0
    greedy = True if args.greedy else (False if args.temperature is not None or args.top_p is not None else None)
    log = (lambda m: print(m, file=sys.stderr)) if args.json else print
    if args.samples and (args.real or args.sweep):
        raise ValueError("--samples measures the reviews in a file: it does not combine with --real or --sweep")
    result = evaluate(args.model, n=args.n, seed=args.seed, greedy=greedy, temperature=args.temperature,
                      top_p=args.top_p, real=args.real, log=log, samples=args.samples, save_samples=args.save_samples,
                      max_len=args.max_len)
    if args.out and args.samples:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "metrics.json").write_text(json.dumps(result, indent=2))
    elif args.out:
        real = None if args.real else evaluate(args.model, n=args.n, seed=args.seed, real=True, log=log)
        path = write_report(result, Path(args.out), ReviewGAN.from_pretrained(args.model), real)
        log(f"report: {path}")
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if k != "lengths"}))
    else:
        for k, v in result.items():
            if k not in ("samples", "lengths", "notes"):
                print(f"{k:24s} {v:.4f}" if isinstance(v, float) else f"{k:24s} {v}")
        for k, why in result["notes"].items():
            print(f"note: {k}: {why}")
    return 0


def cmd_report(args) -> int:
    from .report import comparison_table
    rows: dict[str, list] = {}
    for item in args.results:
        name, _, path = item.rpartition("=") if "=" in item else ("", "", item)
        try:
            r = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: not a metrics.json ({e})") from None
        if not isinstance(r, dict):
            raise ValueError(f"{path}: not a metrics.json (expected one JSON object)")
        rows.setdefault(name or r.get("source", path), []).append(r)
    table = comparison_table(rows)
    if args.out:
        Path(args.out).write_text(table + "\n")
    print(table)
    return 0


def cmd_bench(args) -> int:
    from .bench import format_table, run_bench
    from .checkpoint import read_model_config
    from .model import default_model_dir
    log = (lambda m: print(m, file=sys.stderr)) if args.json else print
    model_dir = args.model
    bundled = default_model_dir()
    if model_dir is None and bundled is not None and not args.quick and not args.overrides \
            and read_model_config(bundled)["config"].get("preset") == args.preset:
        model_dir = bundled  # the bundled model is this recipe's: time generation on its real reviews
    result = run_bench(quick=args.quick, preset=args.preset, log=log, device=args.device, overrides=args.overrides,
                       model_dir=model_dir)
    print(json.dumps(result) if args.json else format_table(result))
    return 0


def cmd_serve(args) -> int:
    try:
        from .serve import serve
    except ImportError:
        raise ValueError("serve needs the serve extra: pip install 'reviewgan[serve]'") from None
    serve(args.model, args.host, args.port, args.max_wait)
    return 0


def cmd_export(args) -> int:
    from .checkpoint import export_model
    files = export_model(Path(args.model), Path(args.out), half=not args.fp32, keep_critic=args.keep_critic,
                         sample=args.overrides, replace=args.force)
    total = sum(f.stat().st_size for f in files)
    print(f"exported {len(files)} files, {total / 2**20:.1f} MiB, to {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="reviewgan", description="Conditional LaTextGAN for positive/negative movie reviews.")
    p.add_argument("--version", action="version", version=f"reviewgan {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model (autoencoder, then conditional WGAN)")
    _add_data_args(t)
    t.add_argument("--out", required=True, help="run directory: the model, its checkpoints and metrics go here")
    t.add_argument("--stage", choices=["ae", "gan", "all"], default="all", help="which stage(s) to train")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    t.add_argument("--force", action="store_true", help="overwrite a different run already in --out")
    t.add_argument("--seed", type=int, help="random seed (default: the preset's, 0)")
    t.add_argument("--device", choices=["auto", "cpu", "cuda"], help="where to train (default cpu)")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    t.add_argument("--ae-from", metavar="RUN", help="reuse the finished autoencoder of RUN (same data and ae config) "
                   "and train only the GAN: compare GAN variants on one autoencoder")
    t.set_defaults(func=cmd_train)

    g = sub.add_parser("generate", help="write reviews of a requested sentiment")
    g.add_argument("--model", help="model directory (default: the bundled pretrained model)")
    g.add_argument("--sentiment", default="positive", help="positive, negative or both (N of each)")
    g.add_argument("-n", "--n", type=int, default=5, help="number of reviews (per sentiment)")
    g.add_argument("--seed", type=int, help="random seed: same seed, same reviews")
    g.add_argument("--temperature", type=float, help="sample with this temperature (implies sampling)")
    g.add_argument("--top-p", type=float, help="nucleus sampling threshold in (0, 1] (implies sampling)")
    g.add_argument("--noise-scale", type=float, help="sd of the generator's noise (default: the model's "
                   "sample.noise_scale, 1.0): below 1, more typical codes, clearer sentiment, less variety")
    g.add_argument("--push", type=float, help="move each generated code this far along the generator's sentiment "
                   "direction toward its sentiment (default: the model's sample.push): clearer sentiment, less variety")
    g.add_argument("--screen", type=float, help="draw a review again when the model's reader, reading the review "
                   "back, gives its sentiment a probability below this (default: the model's sample.screen; 0: off)")
    g.add_argument("--screen-cos", type=float, help="with the screen, also draw a review again when its own code "
                   "(the review read back) has cosine below this to the code it was decoded from (default: the "
                   "model's sample.screen_cos; 0: off): the asked-for sentiment more often, ~1.6x the decoding")
    g.add_argument("--code-strength", type=float, help="the pretrained decoder's code memory times this (default: "
                   "the model's sample.code_strength): below 1 the decoder leans more on what it learnt of reviews, "
                   "above 1 more on the code")
    g.add_argument("--greedy", action="store_true", help="argmax decoding, as in the paper")
    g.add_argument("--max-len", type=int, help="maximum tokens per review (default: the model's max_len)")
    g.add_argument("--format", choices=["text", "jsonl"], default="text", help="plain text or one JSON object per line")
    g.add_argument("--device", choices=["auto", "cpu", "cuda"], help="where to run (default cpu)")
    g.set_defaults(func=cmd_generate)

    w = sub.add_parser("rewrite", help="rewrite reviews into a sentiment: encode, move the code, decode")
    w.add_argument("texts", nargs="*", metavar="TEXT", help="reviews to rewrite (or use --input)")
    w.add_argument("--to", required=True, choices=["positive", "negative", "flip"],
                   help="the target sentiment; flip: each into the other one (the source's sentiment from --input "
                   "JSONL or --from, else the model's own reading with its p_positive, which the output notes; a "
                   "review whose sentiment the model cannot tell is refused)")
    w.add_argument("--from", dest="source", choices=["positive", "negative"],
                   help="the sources' sentiment, for every review that --input does not give one "
                   "(default: the model's reading)")
    w.add_argument("--input", metavar="FILE", help="one review per line, or JSONL with text (and sentiment); - for stdin")
    w.add_argument("--model", help="model directory (default: the bundled pretrained model)")
    w.add_argument("--strength", type=float, help="how far the code moves (default: the model's rewrite.strength, "
                   "2.5 for the bundled model): 0 decodes the source's own code, more trades content for sentiment")
    w.add_argument("--copy", type=float, help="logit bonus for the source's next word after one of its words is "
                   "written, which keeps its phrasing (default: the model's rewrite.copy, 6 for the bundled model; "
                   "0: decode the moved code alone)")
    w.add_argument("--method", choices=["mean", "invert"], help="mean: add the generator's sentiment direction; "
                   "invert: fit the generator's noise to the code, then swap its label (default: the model's)")
    w.add_argument("--seed", type=int, default=0, help="random seed: same seed, same rewrites")
    w.add_argument("--temperature", type=float, help="sampling temperature (default: the model's rewrite decoding, greedy)")
    w.add_argument("--greedy", action="store_true", help="argmax decoding (the default unless the model sets rewrite.greedy=false)")
    w.add_argument("--format", choices=["text", "jsonl"], default="text",
                   help="text: one rewrite per line (notes on stderr); jsonl: {source, text, from, to[, note, read, "
                   "p_positive, unclear]}")
    w.add_argument("--device", choices=["auto", "cpu", "cuda"], help="where to run (default cpu)")
    w.set_defaults(func=cmd_rewrite)

    i = sub.add_parser("interpolate", help="decode evenly spaced codes on the way from one review to another")
    i.add_argument("a", metavar="TEXT_A", help="the review to start from")
    i.add_argument("b", metavar="TEXT_B", help="the review to end at")
    i.add_argument("--steps", type=int, default=5, help="codes to decode, both ends included (2-50)")
    i.add_argument("--model", help="model directory (default: the bundled pretrained model)")
    i.add_argument("--seed", type=int, default=0, help="random seed: same seed, same reviews")
    i.add_argument("--greedy", action="store_true", help="argmax decoding (default: the model's rewrite decoding)")
    i.add_argument("--format", choices=["text", "jsonl"], default="text", help="'t  text' lines or JSON objects")
    i.add_argument("--device", choices=["auto", "cpu", "cuda"], help="where to run (default cpu)")
    i.set_defaults(func=cmd_interpolate)

    e = sub.add_parser("evaluate", help="measure a model (or real reviews) with the field's metrics")
    e.add_argument("--model", help="model directory (default: the bundled pretrained model)")
    e.add_argument("--n", type=int, default=1000, help="reviews to generate, half per sentiment")
    e.add_argument("--seed", type=int, default=0, help="generation seed")
    e.add_argument("--out", help="report folder: metrics.json, report.md, plots")
    e.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    e.add_argument("--real", action="store_true", help="measure real held-out reviews instead (the target row)")
    e.add_argument("--temperature", type=float, help="sample with this temperature instead of the default decoding")
    e.add_argument("--top-p", type=float, help="nucleus sampling threshold")
    e.add_argument("--greedy", action="store_true", help="greedy decoding")
    e.add_argument("--max-len", type=int, help="token budget per review (default: the model's sample.max_len)")
    e.add_argument("--samples", help="measure the reviews in this JSONL file (from --save-samples or generate "
                   "--format jsonl) instead of generating; --model then needs only config.json and tokenizer.json")
    e.add_argument("--save-samples", metavar="FILE", help="also write the measured reviews to this JSONL file")
    e.add_argument("--rewrite", action="store_true", help="flip --n held-out real chunks into the other sentiment "
                   "at several strengths and measure transfer, content kept and fluency beside two baselines "
                   "(with --out: rewrite.json, rewrite.md, rewrite_trade.png)")
    e.add_argument("--strengths", help='with --rewrite: the settings to measure, e.g. "mean=0.5,1,2;invert=1" '
                   "(default: mean at 0.5-3, invert at 0.5-1.5, and the model's default)")
    e.add_argument("--copy", metavar="BONUS[,BONUS...]", help='with --rewrite: measure every setting at each of '
                   'these source-copy bonuses, e.g. "6,0" (default: the model\'s rewrite.copy; 0 decodes the moved '
                   "codes alone)")
    e.add_argument("--sweep", action="store_true", help="temperature sweep: quality-diversity curve (needs --out)")
    e.add_argument("--sweep-models", nargs="*", help="further model directories drawn on the same sweep plot")
    e.set_defaults(func=cmd_evaluate)

    r = sub.add_parser("report", help="comparison table from several metrics.json files")
    r.add_argument("results", nargs="+", help="metrics.json files, optionally NAME=path (same NAME: mean ± std)")
    r.add_argument("--out", help="write the markdown table to this file")
    r.set_defaults(func=cmd_report)

    b = sub.add_parser("bench", help="speed and memory of training and generation, against straightforward baselines")
    b.add_argument("--preset", default="pretrained", help="config whose model sizes are measured (default: the "
                   "bundled model's recipe)")
    b.add_argument("--quick", action="store_true", help="a short run (for tests; figures are rough)")
    b.add_argument("--model", help="time generation with this trained model (default: the bundled model when it is "
                   "the preset's, else an untrained one, whose reviews never end and take the whole token budget)")
    b.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    b.add_argument("--device", choices=["auto", "cpu", "cuda"], default="cpu", help="where to measure (default cpu)")
    b.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="measure a variant of the preset's recipe, e.g. --set ae.batch_size=256 (repeatable)")
    b.set_defaults(func=cmd_bench)

    v = sub.add_parser("serve", help="web page and HTTP API (pip install 'reviewgan[serve]')")
    v.add_argument("--model", help="model directory (default: the bundled pretrained model)")
    v.add_argument("--host", default="127.0.0.1", help="address to listen on")
    v.add_argument("--port", type=int, default=8000, help="port to listen on")
    v.add_argument("--max-wait", type=float, default=60.0, metavar="S",
                   help="refuse new work (503 + Retry-After) once the queue's expected wait would pass S seconds "
                        "(default 60; 0: no bound)")
    v.set_defaults(func=cmd_serve)

    x = sub.add_parser("export", help="release copy of a model: fp16 weights, config, tokenizer, no training state")
    x.add_argument("--model", required=True, help="trained model directory")
    x.add_argument("--out", required=True, help="where to write the release copy")
    x.add_argument("--fp32", action="store_true", help="keep float32 weights")
    x.add_argument("--force", action="store_true", help="replace a reviewgan model already in --out")
    x.add_argument("--keep-critic", action="store_true", help="also ship the critic (not needed to generate)")
    x.add_argument("--set", dest="overrides", action="append", default=[], metavar="sample.KEY=VALUE",
                   help="default decoding of the release, e.g. --set sample.temperature=0.8 --set rewrite.strength=2.5")
    x.set_defaults(func=cmd_export)

    s = sub.add_parser("stats", help="length statistics of a dataset and the length histogram (paper Figure 6)")
    _add_data_args(s)
    s.add_argument("--out", help="folder for lengths.png and stats.json")
    s.add_argument("--json", action="store_true", help="print the statistics as JSON")
    s.set_defaults(func=cmd_stats)
    for cmd in (t, g, w, i, e, b, v):  # every command that runs a model
        cmd.add_argument("--dtype", choices=["auto", "bf16", "fp32"],
                         help="compute precision (default auto: bf16 where the CPU or GPU multiplies it natively, "
                              "AMX or AVX512-BF16, else fp32)")
    return p


def main(argv=None) -> int:
    from .checkpoint import ModelError
    from .config import ConfigError
    from .data import DataError
    from .train import TrainingError

    args = build_parser().parse_args(argv)
    try:
        from .precision import prefer
        prefer(getattr(args, "dtype", None) or "auto")  # for this command (main may run again in one process)
        return args.func(args)
    except (ConfigError, DataError, ModelError, TrainingError, ValueError, OSError) as e:
        print(f"reviewgan: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("reviewgan: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
