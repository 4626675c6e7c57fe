"""End-to-end model benchmark: every method at the standard settings on one model, one command.

    nice -n 5 python benchmarks/models.py                 # smollm2-135m, the standard protocol below
    python benchmarks/models.py --smoke --out-dir /tmp/b  # tiny random LLaMA, 2 windows (what CI runs)

Protocol (fixed; recorded in every JSON and in RESULTS.md):

* calibration: ``--nsamples 32`` windows x ``--seqlen 512`` tokens from WikiText-2 ``wiki.valid.raw``
  (``prunekit.data.calibration_windows``, seed 0);
* perplexity: the first ``--eval-windows 64`` non-overlapping windows x 512 tokens of ``wiki.test.raw``
  (rows joined with "\\n\\n"); ``--full``: the whole test split at seqlen 2048 (methods.md §2);
* settings: ``unstructured50`` and ``2:4`` for magnitude, wanda, sparsegpt, mrp, fista; ``channels30`` and
  ``channels20`` (MLP channels) for every method whose formulation supports channels (fasp, flap, spap, admm);
  ``channels30_attn`` / ``channels20_attn`` add attention pruning (``Recipe.attention``) for the methods that
  support it, and run last;
* per run: perplexity, pruning wall time (``prunekit.prune``), peak memory during pruning (process RSS high-water
  mark on CPU; ``torch.cuda.max_memory_allocated`` on CUDA), parameters before/after (and nonzero weights), the
  per-layer report, and for physically smaller models tokens/s and memory at batch 1 x 512 against the dense
  model (median of timed forwards after warm-up, interleaved dense/pruned, same thread count).

Method names are those of ``prunekit.models.methods.builtin_methods()`` plus the variant rows of ``VARIANTS``; each
run's ``report`` is ``PruneResult.report.to_dict()`` (a ``RunReport``: ``layers`` = LayerRecord dicts).

Each run executes in a fresh subprocess (``--isolation process``, the default) with a timeout, so RSS peaks are
per run and a crash cannot take the table down; finished runs (``results/<run>.json``) are skipped unless
``--force`` (``--retry-failed`` re-runs only failed ones).  ``benchmarks/RESULTS.md`` and the plots are
rebuilt from all JSON files at the end (``--report-only`` rebuilds them without running anything).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Optional

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, PeakMemory, command_line, machine_info, sync, utc_now, versions, write_json  # noqa: E402

# ----------------------------------------------------------------------------------------------- the matrix
SETTINGS: dict[str, dict[str, Any]] = {
    "unstructured50": {"structure": "unstructured", "sparsity": 0.5, "attention": "none", "label": "50% unstr."},
    "2:4": {"structure": "2:4", "sparsity": 0.5, "attention": "none", "label": "2:4"},
    "channels30": {"structure": "channels", "sparsity": 0.3, "attention": "none", "label": "30% MLP ch."},
    "channels20": {"structure": "channels", "sparsity": 0.2, "attention": "none", "label": "20% MLP ch."},
    "channels30_attn": {"structure": "channels", "sparsity": 0.3, "attention": "auto", "label": "30% ch.+attn"},
    "channels20_attn": {"structure": "channels", "sparsity": 0.2, "attention": "auto", "label": "20% ch.+attn"},
}
UNSTRUCTURED_METHODS = ("wanda", "magnitude", "sparsegpt", "mrp", "fista", "fista_refit", "fista_fraction",
                        "fista_seq")  # run order
# Variants: a table row = a pipeline method with formulation options (``Recipe.options``) and, optionally, a
# calibration mode (``CalibrationSettings.mode``; None = the method's own).  The FISTA options are marked [derived]
# in prunekit.formulations.l1: ``refit`` re-solves the least squares on the final support; ``lambda_init="fraction"``
# is the earlier initial-lambda rule (1e-2 lambda_max), kept as a row so the effect of the default ``"kkt"`` stays
# visible.  ``fista_seq`` feeds every block the pruned model's inputs (``"sequential"``: inter-layer correction)
# instead of FISTAPruner's dense inputs (methods.md §5.4 says the paper found that correction hurts).
VARIANTS: dict[str, tuple[str, dict[str, Any], Optional[str]]] = {
    "fista_refit": ("fista", {"refit": True}, None),
    "fista_fraction": ("fista", {"lambda_init": "fraction"}, None),
    "fista_seq": ("fista", {}, "sequential"),
}
CHANNEL_METHODS = ("fasp", "flap", "spap", "admm")  # run order; others supporting channels are appended
# Built-in methods whose layer problem and solver are another row's and which differ only in model-level defaults
# (allocation, block refit): this table's rows are uniform, so such a row would repeat its base method's solve.
# Their defaults are measured in benchmarks/allocation.py (ALLOCATION.md; RESULTS.md, "Quality targets").
MODEL_LEVEL_VARIANTS = {"fasp_refit": "fasp", "spap_refit": "spap"}
# Attention pruning mode per method (Recipe.attention) in the *_attn settings: W_V rows + W_O columns per channel
# (FASP's scheme, methods.md §4.1) for every channel method, so the attention rows compare solvers on one structure.
# Whole heads (``"heads"``, FLAP §8.4) are not used here: smollm2-135m has 3 KV groups, and 20-30% of 3 groups
# rounds to none removed.  Methods missing here get no *_attn run.
ATTENTION_MODE = {"fasp": "vo_channels", "flap": "vo_channels", "spap": "vo_channels", "admm": "vo_channels"}
DENSE = "dense"


def run_id(method: str, setting: str) -> str:
    return DENSE if method == DENSE else f"{method}-{setting.replace(':', '-')}"


def channel_methods() -> list[str]:
    """fasp, flap, spap, admm, then any other built-in method whose formulation supports channels (but the
    :data:`MODEL_LEVEL_VARIANTS`)."""
    from prunekit.models.methods import builtin_methods

    out = list(CHANNEL_METHODS)
    out += [name for name, method in builtin_methods().items()
            if "channels" in method.structures and name not in out and name not in MODEL_LEVEL_VARIANTS]
    return out


def base_method(method: str) -> str:
    """The built-in method behind a table row (a variant's base, else the row's own name)."""
    return VARIANTS[method][0] if method in VARIANTS else method


def plan_runs(methods: Optional[list[str]], settings: Optional[list[str]]) -> list[tuple[str, str]]:
    """(method, setting) pairs in execution order: dense, channels 30 -> 20, 50% -> 2:4, attention variants."""
    runs: list[tuple[str, str]] = [(DENSE, "dense")]
    order = [("channels30", channel_methods()), ("channels20", channel_methods()),
             ("unstructured50", list(UNSTRUCTURED_METHODS)), ("2:4", list(UNSTRUCTURED_METHODS)),
             ("channels30_attn", [m for m in channel_methods() if m in ATTENTION_MODE]),
             ("channels20_attn", [m for m in channel_methods() if m in ATTENTION_MODE])]
    for setting, ms in order:
        for m in ms:
            runs.append((m, setting))
    from prunekit.models.methods import builtin_methods

    builtin = builtin_methods()
    stale = sorted({m for m, _ in runs if m != DENSE and base_method(m) not in builtin})
    if stale:
        raise SystemExit(f"benchmark rows name no built-in method: {stale}; built-in: {sorted(builtin)}")
    if methods:
        wanted = set(methods) | {DENSE}
        unknown = set(methods) - {m for m, _ in runs}
        if unknown:
            raise SystemExit(f"unknown method(s) {sorted(unknown)}; known: {sorted({m for m, _ in runs})}")
        runs = [r for r in runs if r[0] in wanted]
    if settings:
        unknown = set(settings) - set(SETTINGS)
        if unknown:
            raise SystemExit(f"unknown setting(s) {sorted(unknown)}; known: {list(SETTINGS)}")
        runs = [r for r in runs if r[0] == DENSE or r[1] in settings]
    return runs


# ----------------------------------------------------------------------------------------------- the model
class ByteTokenizer:
    """Smoke-test tokenizer: UTF-8 bytes (vocab 256). ``prunekit.data.encode`` accepts any callable."""

    vocab_size = 256
    bos_token_id = None
    eos_token_id = None

    def __call__(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))


def smoke_model(seed: int = 0):
    """A tiny random LLaMA (2 layers, hidden 64, MLP 128, 4 heads / 2 KV heads, vocab 256)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=1024,
                         tie_word_embeddings=True)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    return model, ByteTokenizer()


def load(args):
    """(model, tokenizer) in eval mode, float32 (``prunekit.models.sources.load_model`` for real models)."""
    if args.smoke:
        return smoke_model()
    from prunekit.models.sources import load_model

    model, tokenizer = load_model(args.model)
    return model.eval(), tokenizer


def count_params(model) -> dict[str, int]:
    """Distinct parameters (tied counted once), of which in decoder-block linear layers, and nonzero ones there."""
    import torch

    seen, total = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    linear = nonzero = 0
    layers = getattr(getattr(model, "model", model), "layers", None)
    if layers is not None:
        for mod in layers.modules():
            if isinstance(mod, torch.nn.Linear):
                linear += mod.weight.numel()
                nonzero += int(torch.count_nonzero(mod.weight))
    return {"total": total, "block_linear": linear, "block_linear_nonzero": nonzero}


def model_bytes(model) -> int:
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total


# ----------------------------------------------------------------------------------------------- speed
def _forward_time(model, ids, device) -> float:
    import torch

    with torch.no_grad():
        sync(device)
        t0 = time.perf_counter()
        model(input_ids=ids, use_cache=False)
        sync(device)
    return time.perf_counter() - t0


def speed(models: dict[str, Any], ids, device: str, warmup: int = 2, reps: int = 7) -> dict[str, dict[str, Any]]:
    """Tokens/s and forward memory of each model at batch ``ids.shape``; timed forwards interleaved between models.

    Interleaving (dense, pruned, dense, pruned, ...) makes load from other processes hit both alike.  Memory =
    parameter bytes + the peak memory increment of one forward pass.
    """
    out: dict[str, dict[str, Any]] = {}
    for name, model in models.items():
        for _ in range(warmup):
            _forward_time(model, ids, device)
        with PeakMemory(device) as pm:
            _forward_time(model, ids, device)
        out[name] = {"times": [], "forward_peak_delta_mib": round(pm.delta_bytes / 2**20, 1),
                     "model_mib": round(model_bytes(model) / 2**20, 1)}
    for _ in range(reps):
        for name, model in models.items():
            out[name]["times"].append(_forward_time(model, ids, device))
    for name, rec in out.items():
        med = statistics.median(rec["times"])
        rec.update(median_s=med, tokens_per_s=ids.numel() / med, min_s=min(rec["times"]),
                   tokens_per_s_best=ids.numel() / min(rec["times"]), batch=list(ids.shape), warmup=warmup, reps=reps,
                   memory_mib=round(rec["model_mib"] + rec["forward_peak_delta_mib"], 1))
        rec["times"] = [round(t, 5) for t in rec["times"]]
    return out


# ----------------------------------------------------------------------------------------------- one run
def protocol(args) -> dict[str, Any]:
    seqlen_eval = 2048 if args.full else args.eval_seqlen
    return {
        "model": "smoke-tiny-llama (random, 2 layers, hidden 64)" if args.smoke else args.model,
        "calibration": {"source": "wikitext2 (wiki.valid.raw)", "nsamples": args.nsamples, "seqlen": args.seqlen,
                        "seed": 0},
        "evaluation": {"source": "wikitext2 (wiki.test.raw, rows joined with \\n\\n)", "seqlen": seqlen_eval,
                       "windows": None if args.full else args.eval_windows},
        "speed": {"batch": [1, args.speed_seqlen]},
        "device": args.device,
        "threads": args.threads,
        "smoke": args.smoke,
        "full": args.full,
    }


def build_recipe(method: str, setting: str, args):
    from prunekit.models.recipe import CalibrationSettings, Recipe

    spec = SETTINGS[setting]
    attention = ATTENTION_MODE.get(method, "none") if spec["attention"] == "auto" else spec["attention"]
    base, options, mode = VARIANTS.get(method, (method, {}, None))
    return Recipe(method=base, structure=spec["structure"], sparsity=spec["sparsity"], attention=attention,
                  options=options, allocation="uniform",  # the table's rows are uniform (allocation.py: others)
                  calibration=CalibrationSettings(source="wikitext2", nsamples=args.nsamples, seqlen=args.seqlen,
                                                  seed=0, mode=mode or "auto"))


def worker(args, method: str, setting: str) -> dict[str, Any]:
    """Run one (method, setting) in this process and return its record (errors recorded, not raised)."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    rec: dict[str, Any] = {
        "run": run_id(method, setting), "method": method, "setting": setting,
        "label": SETTINGS.get(setting, {}).get("label", "dense"),
        "status": "running", "date": utc_now(), "protocol": protocol(args), "machine": machine_info(args.device),
        "versions": versions(), "command": command_line(),
    }
    started = time.perf_counter()
    phase = "load"
    try:
        from prunekit.data import calibration_windows, evaluation_tokens
        from prunekit.evaluate import perplexity

        model, tokenizer = load(args)
        model.to(args.device)
        phase = "evaluation data"
        eval_tokens = evaluation_tokens(tokenizer, "wikitext2", data_dir=args.data_dir)
        seqlen_eval = rec["protocol"]["evaluation"]["seqlen"]
        windows = rec["protocol"]["evaluation"]["windows"]
        gen = torch.Generator().manual_seed(0)
        vocab = model.config.vocab_size
        speed_ids = torch.randint(0, vocab, (1, args.speed_seqlen), generator=gen).to(args.device)
        rec["params_before"] = count_params(model)
        if method == DENSE:
            phase = "perplexity"
            rec["perplexity"] = perplexity(model, eval_tokens, seqlen_eval, windows=windows)
            rec["params_after"] = rec["params_before"]
            phase = "speed"
            rec["speed"] = speed({"dense": model}, speed_ids, args.device, args.speed_warmup, args.speed_reps)
        else:
            import prunekit

            phase = "recipe"
            recipe = build_recipe(method, setting, args)
            rec["recipe"] = recipe.to_dict()
            phase = "calibration data"
            calib = calibration_windows(tokenizer, "wikitext2", args.nsamples, args.seqlen, seed=0,
                                        data_dir=args.data_dir)
            rec["calibration_shape"] = list(calib.shape)
            phase = "prune"
            with PeakMemory(args.device) as pm:
                t0, c0 = time.perf_counter(), time.process_time()
                result = prunekit.prune(model, recipe, calib, device=args.device, progress=False)
                sync(args.device)
                rec["prune_time_s"] = time.perf_counter() - t0
                rec["prune_cpu_s"] = time.process_time() - c0  # CPU seconds of this process (all threads)
            rec["load_avg_after_prune"] = [round(v, 2) for v in os.getloadavg()]
            rec["prune_memory"] = pm.to_dict()
            rec["report"] = result.report.to_dict()  # RunReport: recipe, parameters, times, per-layer records
            phase = "perplexity"
            rec["perplexity"] = perplexity(model, eval_tokens, seqlen_eval, windows=windows)
            rec["params_after"] = count_params(model)
            rec["physically_smaller"] = rec["params_after"]["total"] < rec["params_before"]["total"]
            if rec["physically_smaller"]:
                phase = "speed"
                dense, _ = load(args)
                dense.to(args.device)
                rec["speed"] = speed({"dense": dense, "pruned": model}, speed_ids, args.device, args.speed_warmup,
                                     args.speed_reps)
                rec["speedup"] = rec["speed"]["pruned"]["tokens_per_s"] / rec["speed"]["dense"]["tokens_per_s"]
                rec["speedup_best"] = (rec["speed"]["pruned"]["tokens_per_s_best"]
                                       / rec["speed"]["dense"]["tokens_per_s_best"])
        rec["status"] = "ok"
    except Exception as exc:  # recorded in the table, never hidden
        rec["status"] = "error"
        rec["error"] = {"phase": phase, "type": type(exc).__name__, "message": str(exc)[:2000],
                        "traceback": traceback.format_exc()[-4000:]}
    rec["wall_time_s"] = time.perf_counter() - started
    return rec


# ----------------------------------------------------------------------------------------------- driver
def result_path(out_dir: Path, method: str, setting: str) -> Path:
    return out_dir / f"{run_id(method, setting)}.json"


def _worker_argv(args, method: str, setting: str, out: Path) -> list[str]:
    argv = [sys.executable, str(Path(__file__).resolve()), "--worker", method, setting, "--worker-out", str(out),
            "--model", args.model, "--nsamples", str(args.nsamples), "--seqlen", str(args.seqlen),
            "--eval-windows", str(args.eval_windows), "--eval-seqlen", str(args.eval_seqlen),
            "--speed-seqlen", str(args.speed_seqlen), "--speed-warmup", str(args.speed_warmup),
            "--speed-reps", str(args.speed_reps), "--device", args.device, "--threads", str(args.threads)]
    if args.data_dir:
        argv += ["--data-dir", str(args.data_dir)]
    for flag in ("full", "smoke"):
        if getattr(args, flag):
            argv.append(f"--{flag}")
    return argv


def run_one(args, method: str, setting: str, out: Path) -> dict[str, Any]:
    if args.isolation == "inline":
        rec = worker(args, method, setting)
        write_json(out, rec)
        return rec
    log = out.with_suffix(".log")
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        try:
            proc = subprocess.run(_worker_argv(args, method, setting, out), stdout=fh, stderr=subprocess.STDOUT,
                                  timeout=args.timeout, cwd=str(REPO))
            rc, status = proc.returncode, None
        except subprocess.TimeoutExpired:
            rc, status = None, "timeout"
    if out.exists() and status is None:
        rec = json.loads(out.read_text())
        if rec.get("status") != "running":
            return rec
    tail = log.read_text()[-3000:] if log.exists() else ""
    rec = {"run": run_id(method, setting), "method": method, "setting": setting,
           "label": SETTINGS.get(setting, {}).get("label", "dense"), "status": status or "crashed",
           "date": utc_now(), "protocol": protocol(args), "wall_time_s": time.perf_counter() - t0,
           "error": {"phase": "subprocess", "type": status or f"exit code {rc}",
                     "message": (f"no result within --timeout {args.timeout} s" if status == "timeout"
                                 else f"worker exited with code {rc} without writing its result"),
                     "traceback": tail}}
    write_json(out, rec)
    return rec


def main(argv=None) -> int:
    args = parse_args(argv)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.worker:
        method, setting = args.worker
        rec = worker(args, method, setting)
        write_json(Path(args.worker_out), rec)
        return 0 if rec["status"] == "ok" else 1
    runs = plan_runs(args.methods, args.settings)
    meta = {"command": command_line(), "started": utc_now(), "protocol": protocol(args),
            "machine": machine_info(args.device), "versions": versions(),
            "planned": [run_id(m, s) for m, s in runs], "isolation": args.isolation}
    meta = _merge_meta(out_dir, meta, record=not args.report_only)
    if not args.report_only:
        write_json(out_dir / "_meta.json", meta)
        for i, (method, setting) in enumerate(runs):
            out = result_path(out_dir, method, setting)
            if out.exists() and not args.force:
                prev = json.loads(out.read_text())
                if prev.get("status") == "ok" or not args.retry_failed:
                    print(f"[{i + 1}/{len(runs)}] {out.stem}: exists ({prev.get('status')}), skipped", flush=True)
                    continue
            print(f"[{i + 1}/{len(runs)}] {out.stem}: running ({utc_now()})", flush=True)
            rec = run_one(args, method, setting, out)
            ppl = (rec.get("perplexity") or {}).get("ppl")
            print(f"    -> {rec['status']}" + (f", ppl {ppl:.3f}" if ppl else "")
                  + (f", prune {rec['prune_time_s']:.1f} s" if rec.get("prune_time_s") else "")
                  + (f", {rec['error']['type']}: {rec['error']['message'][:200]}" if rec.get("error") else ""),
                  flush=True)
            if not args.no_report:  # keep RESULTS.md current while a long benchmark runs
                _write_report(args, out_dir, meta, plots=False)
        meta["finished"] = utc_now()
        meta["invocations"][-1]["finished"] = meta["finished"]
        write_json(out_dir / "_meta.json", meta)
    else:
        meta["report_command"] = command_line()
    path = _write_report(args, out_dir, meta)
    print(f"wrote {path}")
    return 0


def _merge_meta(out_dir: Path, meta: dict[str, Any], record: bool) -> dict[str, Any]:
    """Keep the history of invocations that wrote into ``out_dir`` (subset runs must not hide earlier ones)."""
    path = out_dir / "_meta.json"
    prev: dict[str, Any] = {}
    if path.exists():
        try:
            prev = json.loads(path.read_text())
        except json.JSONDecodeError:
            prev = {}
    history = list(prev.get("invocations") or ([{"command": prev["command"], "started": prev.get("started"),
                                                  "finished": prev.get("finished"), "runs": prev.get("planned")}]
                                                if prev.get("command") else []))
    if record:
        history.append({"command": meta["command"], "started": meta["started"], "runs": meta["planned"]})
    if prev.get("started"):
        meta["started"] = min(prev["started"], meta["started"])
    if not record:  # --report-only: describe the runs, not the moment the report was rebuilt
        for key in ("finished", "machine", "versions", "isolation"):
            if prev.get(key):
                meta[key] = prev[key]
    if prev.get("protocol") and prev["protocol"] != meta["protocol"]:
        meta["protocol_mismatch"] = {"previous": prev["protocol"], "now": meta["protocol"]}
    meta["invocations"] = history
    return meta


def _write_report(args, out_dir: Path, meta: dict[str, Any], plots: bool = True) -> Path:
    from _report import write_report

    md = Path(args.md) if args.md else (out_dir / "RESULTS.md" if args.smoke else REPO / "benchmarks" / "RESULTS.md")
    # The standard benchmark always reports against the full matrix, so that runs not done stay visible.
    plan = plan_runs(args.methods, args.settings) if args.smoke else plan_runs(None, None)
    return write_report(out_dir, md, meta, plan=[run_id(m, s) for m, s in plan],
                        gpu_scale_json=Path(args.gpu_scale_json) if args.gpu_scale_json else None,
                        plots=plots and not args.no_plots)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--model", default="smollm2-135m", help="model name for prunekit.models.sources.load_model")
    p.add_argument("--data-dir", default=os.environ.get("PRUNEKIT_DATA_DIR") or str(REPO.parent / "shared" / "data"),
                   help="folder holding wikitext-2-raw/ (default $PRUNEKIT_DATA_DIR or ../shared/data)")
    p.add_argument("--methods", nargs="*", help="subset of methods (default: all)")
    p.add_argument("--settings", nargs="*", help=f"subset of settings (default: all of {list(SETTINGS)})")
    p.add_argument("--nsamples", type=int, default=32)
    p.add_argument("--seqlen", type=int, default=512, help="calibration window length")
    p.add_argument("--eval-windows", type=int, default=64)
    p.add_argument("--eval-seqlen", type=int, default=512)
    p.add_argument("--full", action="store_true", help="evaluate on the whole test split at seqlen 2048")
    p.add_argument("--speed-seqlen", type=int, default=512, help="tokens of the batch-1 speed forward")
    p.add_argument("--speed-warmup", type=int, default=2)
    p.add_argument("--speed-reps", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads in every run (0 = torch default)")
    p.add_argument("--timeout", type=int, default=2400, help="seconds per run (subprocess isolation)")
    p.add_argument("--isolation", choices=("process", "inline"), default="process")
    p.add_argument("--force", action="store_true", help="re-run runs whose JSON exists")
    p.add_argument("--retry-failed", action="store_true", help="re-run runs whose JSON records a failure")
    p.add_argument("--report-only", action="store_true", help="only rebuild RESULTS.md and plots from the JSON")
    p.add_argument("--no-report", action="store_true", help="do not rewrite RESULTS.md after every run")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--out-dir", default=None, help="JSON folder (default benchmarks/results; smoke: benchmarks/_work/smoke)")
    p.add_argument("--md", default=None, help="markdown report (default benchmarks/RESULTS.md; smoke: <out-dir>/RESULTS.md)")
    p.add_argument("--gpu-scale-json", default=None, help="GPU_SCALE.json to summarize (default benchmarks/GPU_SCALE.json)")
    p.add_argument("--smoke", action="store_true",
                   help="tiny random LLaMA, byte tokenizer, 2 x 64 calibration, 2 x 64 evaluation windows")
    p.add_argument("--worker", nargs=2, metavar=("METHOD", "SETTING"), help=argparse.SUPPRESS)
    p.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.smoke:
        for name, value in (("nsamples", 2), ("seqlen", 64), ("eval_windows", 2), ("eval_seqlen", 64),
                            ("speed_seqlen", 64), ("speed_reps", 3), ("speed_warmup", 1)):
            if getattr(args, name) == p.get_default(name):
                setattr(args, name, value)
        if args.model == p.get_default("model"):
            args.model = "smoke"
    if args.out_dir is None:
        args.out_dir = str(REPO / "benchmarks" / ("_work/smoke" if args.smoke else "results"))
    return args


if __name__ == "__main__":
    sys.exit(main())
