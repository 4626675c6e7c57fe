"""RESULTS.md, the automatic targets and the plots of ``benchmarks/models.py``, built from the run JSON files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from _common import REPO, machine_line, md_table, utc_now

DENSE = "dense"
FAR_FACTOR = 2.0  # "Wanda far below magnitude": magnitude ppl >= FAR_FACTOR x Wanda ppl
SPEEDUP_TARGET = 1.2
STRUCTURED_TIME_TARGET_S = 120.0


# ----------------------------------------------------------------------------------------------- loading
def load_runs(out_dir: Path) -> dict[str, dict[str, Any]]:
    runs = {}
    for path in sorted(Path(out_dir).glob("*.json")):
        if path.name.startswith("_"):
            continue
        try:
            rec = json.loads(path.read_text())
        except json.JSONDecodeError:
            continue
        runs[rec.get("run", path.stem)] = rec
    return runs


def ppl(rec: Optional[dict]) -> Optional[float]:
    if not rec or rec.get("status") != "ok":
        return None
    return (rec.get("perplexity") or {}).get("ppl")


def _rid(method: str, setting: str) -> str:
    return f"{method}-{setting.replace(':', '-')}"


# ----------------------------------------------------------------------------------------------- per-layer data
def layer_rows(rec: dict[str, Any]) -> list:
    """The per-layer records of a run: ``rec["report"]["layers"]`` (``RunReport.to_dict()``) read back as typed
    ``LayerRecord``s (fields ``block``, ``sparsity``, ``relative_error``, ...); [] for a run without a report."""
    from prunekit.models.records import LayerRecord

    report = rec.get("report") or {}
    return [LayerRecord.from_dict(row) for row in report.get("layers", [])]


# ----------------------------------------------------------------------------------------------- targets
def _fmt(v: Optional[float]) -> str:
    return "—" if v is None else f"{v:.3f}"


def evaluate_targets(runs: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Each target: id, statement, status (MET / MISSED / NOT RUN), and the numbers behind it."""
    out: list[dict[str, Any]] = []

    def add(tid: str, statement: str, ok: Optional[bool], numbers: str, missing: list[str] = ()):
        if ok is None:
            status = "NOT RUN"
            numbers = numbers + (f" (missing or failed: {', '.join(missing)})" if missing else "")
        else:
            status = "MET" if ok else "MISSED"
        out.append({"id": tid, "target": statement, "status": status, "numbers": numbers})

    def cmp_le(tid, a_m, b_m, setting, statement):
        a, b = runs.get(_rid(a_m, setting)), runs.get(_rid(b_m, setting))
        pa, pb = ppl(a), ppl(b)
        missing = [n for n, p in ((_rid(a_m, setting), pa), (_rid(b_m, setting), pb)) if p is None]
        ok = None if missing else pa <= pb
        add(tid, statement, ok, f"{a_m} {_fmt(pa)} vs {b_m} {_fmt(pb)}", missing)

    for setting, label in (("unstructured50", "50%"), ("2:4", "2:4")):
        cmp_le(f"mrp<=sparsegpt@{setting}", "mrp", "sparsegpt", setting, f"MRP ppl <= SparseGPT ppl at {label}")
        cmp_le(f"fista<=sparsegpt@{setting}", "fista", "sparsegpt", setting, f"FISTA ppl <= SparseGPT ppl at {label}")
        for variant, what in (("fista_refit", "refit=True"), ("fista_fraction", "lambda_init='fraction'"),
                              ("fista_seq", "sequential (pruned-model) inputs")):
            if _rid(variant, setting) in runs:  # informational rows: FISTA variants with [derived] options
                cmp_le(f"{variant}<=sparsegpt@{setting}", variant, "sparsegpt", setting,
                       f"(variant) FISTA with {what} ppl <= SparseGPT ppl at {label}")
        cmp_le(f"sparsegpt<=wanda@{setting}", "sparsegpt", "wanda", setting, f"SparseGPT ppl <= Wanda ppl at {label}")
        w, m = ppl(runs.get(_rid("wanda", setting))), ppl(runs.get(_rid("magnitude", setting)))
        missing = [n for n, p in ((_rid("wanda", setting), w), (_rid("magnitude", setting), m)) if p is None]
        add(f"wanda<<magnitude@{setting}",
            f"Wanda far below magnitude at {label} (magnitude ppl >= {FAR_FACTOR:g} x Wanda ppl)",
            None if missing else m >= FAR_FACTOR * w,
            f"wanda {_fmt(w)} vs magnitude {_fmt(m)}" + (f" (ratio {m / w:.2f})" if not missing else ""), missing)
    cmp_le("spap<=flap@channels30", "spap", "flap", "channels30", "SPAP ppl <= FLAP ppl at 30% MLP channels")
    cmp_le("fasp<=flap@channels30", "fasp", "flap", "channels30", "FASP ppl <= FLAP ppl at 30% MLP channels")

    # Physically smaller and faster: decided on FASP at 30% (the flagship structured run); others listed.
    speed_recs = {k: r for k, r in runs.items() if r.get("setting") == "channels30" and r.get("status") == "ok"}
    fasp = runs.get(_rid("fasp", "channels30"))
    others = ", ".join(
        f"{r['method']} {r['speedup']:.2f}x" for k, r in sorted(speed_recs.items()) if r.get("speedup") is not None)
    if fasp and fasp.get("status") == "ok":
        before, after = fasp["params_before"]["total"], fasp["params_after"]["total"]
        sp = fasp.get("speedup")
        sp_d = fasp.get("speed", {})
        nums = (f"FASP 30%: params {before / 1e6:.2f}M -> {after / 1e6:.2f}M; tokens/s dense "
                f"{_fmt(sp_d.get('dense', {}).get('tokens_per_s'))} -> pruned {_fmt(sp_d.get('pruned', {}).get('tokens_per_s'))}"
                f" = {_fmt(sp)}x (batch 1x{(sp_d.get('dense') or {}).get('batch', ['?', '?'])[1]})"
                + (f"; all 30% runs: {others}" if others else ""))
        add("smaller+faster@channels30", f"30%-channel model physically smaller and >= {SPEEDUP_TARGET:g}x tokens/s "
            "vs dense on CPU", after < before and sp is not None and sp >= SPEEDUP_TARGET, nums)
    else:
        add("smaller+faster@channels30", f"30%-channel model physically smaller and >= {SPEEDUP_TARGET:g}x tokens/s "
            "vs dense on CPU", None, others or "no FASP 30% result", [_rid("fasp", "channels30")])

    times = {k: r.get("prune_time_s") for k, r in runs.items()
             if r.get("setting", "").startswith("channels") and r.get("status") == "ok"}
    f30 = runs.get(_rid("fasp", "channels30"))
    listed = ", ".join(f"{k} {v:.0f} s" for k, v in sorted(times.items()) if v is not None)
    if f30 and f30.get("status") == "ok":
        t = f30["prune_time_s"]
        cpu = f" (process CPU {f30['prune_cpu_s']:.0f} s)" if f30.get("prune_cpu_s") else ""
        add("structured<2min", f"structured pruning of the model under {STRUCTURED_TIME_TARGET_S:g} s wall time "
            "(decided on FASP 30%; every structured run listed)", t < STRUCTURED_TIME_TARGET_S,
            f"FASP 30%: {t:.1f} s{cpu}; all structured runs (wall): {listed}")
    else:
        add("structured<2min", f"structured pruning of the model under {STRUCTURED_TIME_TARGET_S:g} s", None,
            listed or "no structured run", [_rid("fasp", "channels30")])
    return out


# ----------------------------------------------------------------------------------------------- table
def _mib(v: Optional[float]) -> Optional[str]:
    return None if v is None else f"{v:,.0f}"


def table_rows(runs: dict[str, dict[str, Any]], plan: list[str]) -> list[list[Any]]:
    dense_ppl = ppl(runs.get(DENSE))
    order = list(plan) + [k for k in runs if k not in plan]
    rows = []
    for rid in order:
        rec = runs.get(rid)
        if rec is None:
            method, _, setting = rid.partition("-")
            rows.append([method, setting.replace("2-4", "2:4") or "—", "not run", None, None, None, None, None, None,
                         None, None, "not reached in this work (see 'Runs not done')"])
            continue
        p = ppl(rec)
        pb, pa = rec.get("params_before") or {}, rec.get("params_after") or {}
        params = (f"{pb['total'] / 1e6:.2f}M → {pa['total'] / 1e6:.2f}M" if pb and pa else None)
        nz = (f"{100 * pa['block_linear_nonzero'] / pb['block_linear']:.1f}%" if pb.get("block_linear") and pa else None)
        spd = rec.get("speed") or {}
        if "pruned" in spd:
            speed = (f"{spd['dense']['tokens_per_s']:.0f} → {spd['pruned']['tokens_per_s']:.0f} "
                     f"({rec['speedup']:.2f}×" + (f"; best-of {rec['speedup_best']:.2f}×" if rec.get("speedup_best") else "")
                     + ")")
            mem = f"{spd['dense']['memory_mib']:.1f} → {spd['pruned']['memory_mib']:.1f}"
        elif "dense" in spd:
            speed = f"{spd['dense']['tokens_per_s']:.0f}"
            mem = f"{spd['dense']['memory_mib']:.1f}"
        else:
            speed = mem = None
        note = ""
        if rec.get("status") != "ok":
            err = rec.get("error") or {}
            note = f"**{rec.get('status')}** in {err.get('phase')}: {err.get('type')}: {str(err.get('message'))[:160]}"
        else:
            recipe = rec.get("recipe") or {}
            notes = []
            if recipe.get("attention", "none") != "none":
                notes.append(f"attention={recipe['attention']}")
            options = recipe.get("options", recipe.get("method_options"))  # method_options: version-1 result files
            if options:
                notes.append(f"{recipe.get('method')} with " + ", ".join(f"{k}={v!r}" for k, v in options.items()))
            mode = (recipe.get("calibration") or {}).get("mode", "auto")
            if mode != "auto":
                notes.append(f"calibration mode {mode}")
            if rec.get("table_note"):
                notes.append(rec["table_note"])
            note = "; ".join(notes)
        rows.append([
            rec.get("method"), rec.get("label") or rec.get("setting"), rec.get("status"),
            None if p is None else round(p, 3),
            None if (p is None or dense_ppl is None or rid == DENSE) else f"{p / dense_ppl:.2f}×",
            None if rec.get("prune_time_s") is None else (
                f"{rec['prune_time_s']:.1f}" + (f" (CPU {rec['prune_cpu_s']:.0f})" if rec.get("prune_cpu_s") else "")),
            _mib((rec.get("prune_memory") or {}).get("peak_mib")), params, nz, speed, mem if speed else None,
        ] + [note])
    return rows


HEADERS = ["method", "setting", "status", "ppl", "vs dense", "prune wall s (CPU s)", "prune peak MiB", "params before → after",
           "nonzero block weights", "tokens/s dense → pruned (speedup)", "fwd mem MiB dense → pruned", "notes"]


# ----------------------------------------------------------------------------------------------- plots
SETTING_LABELS = {"unstructured50": "50% unstructured", "2:4": "2:4", "channels30": "30% MLP channels",
                  "channels20": "20% MLP channels", "channels30_attn": "30% channels + attention",
                  "channels20_attn": "20% channels + attention"}


def _mean(values):
    vals = [v for v in values if isinstance(v, (int, float))]
    return sum(vals) / len(vals) if vals else None

def make_plots(runs: dict[str, dict[str, Any]], out_dir: Path) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:
        return []
    paths = []
    dense_ppl = ppl(runs.get(DENSE))
    fig, ax = plt.subplots(figsize=(8.5, 4.8))
    methods = sorted({r["method"] for r in runs.values() if r.get("method") != DENSE})
    markers = {"unstructured50": "o", "2:4": "s", "channels30": "^", "channels20": "^", "channels30_attn": "v",
               "channels20_attn": "v"}
    any_point = False
    for i, m in enumerate(methods):
        color = f"C{i % 10}"
        for family in (("unstructured50", "2:4"), ("channels20", "channels30"), ("channels20_attn", "channels30_attn")):
            pts = []
            for s in family:
                rec = runs.get(_rid(m, s))
                p = ppl(rec)
                if p is not None:
                    pts.append((rec["recipe"]["sparsity"] + (0.01 if s == "2:4" else 0), p, s))
            if not pts:
                continue
            any_point = True
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            ax.plot(xs, ys, color=color, alpha=0.5, linestyle=":" if "attn" in family[0] else "-")
            for x, y, s in pts:
                ax.scatter([x], [y], color=color, marker=markers[s], s=40,
                           label=m if s == pts[0][2] and family[0] in ("unstructured50", "channels20") else None)
    if dense_ppl:
        ax.axhline(dense_ppl, color="k", lw=1, ls="--", label=f"dense {dense_ppl:.2f}")
    if any_point or dense_ppl:
        ax.set_yscale("log")
        ax.set_xlabel("target sparsity   (o 50% unstr.,  □ 2:4 (x+0.01),  △ MLP channels,  ▽ + attention)")
        ax.set_ylabel("WikiText-2 perplexity (log)")
        ax.set_title("Perplexity against sparsity per method")
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        fig.tight_layout()
        path = out_dir / "ppl_vs_sparsity.png"
        fig.savefig(path, dpi=110)
        paths.append(path)
    plt.close(fig)

    per_layer = {k: layer_rows(r) for k, r in runs.items() if r.get("status") == "ok" and r.get("method") != DENSE}
    per_layer = {k: v for k, v in per_layer.items() if v}
    settings = [s for s in ("unstructured50", "2:4", "channels30", "channels20", "channels30_attn", "channels20_attn")
                if any(runs[k].get("setting") == s for k in per_layer)]
    if per_layer and settings:
        fig, axes = plt.subplots(2, len(settings), figsize=(4.2 * len(settings), 6.5), squeeze=False)
        colors = {m: f"C{i % 10}" for i, m in enumerate(methods)}
        for col, setting in enumerate(settings):
            for k, rows in sorted(per_layer.items()):
                rec = runs[k]
                if rec.get("setting") != setting:
                    continue
                blocks: dict[int, list] = {}
                for r in rows:
                    blocks.setdefault(r.block, []).append(r)
                xs = sorted(blocks)
                sp = [_mean([r.sparsity for r in blocks[b]]) for b in xs]
                er = [_mean([r.relative_error for r in blocks[b]]) for b in xs]
                style = dict(color=colors.get(rec["method"], "k"), lw=1.2, marker=".", label=rec["method"])
                pts = [(x, v) for x, v in zip(xs, sp) if v is not None]
                if pts:
                    axes[0][col].plot(*zip(*pts), **style)
                pts = [(x, v) for x, v in zip(xs, er) if v is not None and v > 0]
                if pts:
                    axes[1][col].plot(*zip(*pts), **style)
            axes[0][col].set_title(SETTING_LABELS.get(setting, setting))
            axes[1][col].set_yscale("log")
            axes[1][col].set_xlabel("block")
            axes[0][col].legend(fontsize=7)
        axes[0][0].set_ylabel("achieved sparsity (mean over targets)")
        axes[1][0].set_ylabel("relative reconstruction error\n(mean over the block's targets)")
        fig.suptitle("Per-layer sparsity and reconstruction error (from each run's report)")
        fig.tight_layout()
        path = out_dir / "per_layer.png"
        fig.savefig(path, dpi=100)
        paths.append(path)
        plt.close(fig)
    return paths


# ----------------------------------------------------------------------------------------------- markdown
def gpu_scale_section(path: Optional[Path]) -> list[str]:
    path = path or (REPO / "benchmarks" / "GPU_SCALE.json")
    lines = ["## GPU scale (LLaMA-7B-shaped blocks)", ""]
    cmd = ("python benchmarks/gpu_scale.py --device cuda --blocks 4 --scale 1.0 --tokens 262144 --dtype bf16 "
           "--json")
    if not path.exists():
        lines += [f"Not run on a GPU in this work; command delivered: `{cmd}`.", ""]
        return lines
    data = json.loads(path.read_text())
    dev = data.get("device", "?")
    if not str(dev).startswith("cuda") or not data.get("full_size"):
        lines += [f"**Not run on a GPU in this work; command delivered:** `{cmd}`. ",
                  f"What was run instead: `{data.get('command')}` on `{dev}` at --scale {data.get('scale')} "
                  f"(hidden {data['dims']['hidden']}, MLP {data['dims']['mlp']}), {data.get('blocks')} block(s), "
                  f"{data.get('tokens')} calibration tokens: a functional check of the script at reduced size, "
                  "not a LLaMA-7B measurement. Results: `benchmarks/GPU_SCALE.md`.", ""]
    else:
        from gpu_scale import summarize  # benchmarks/ is on sys.path (the harness's own folder)

        d = data["dims"]
        cmds = data.get("commands") or [data.get("command")]
        lines += [
            f"Device: **{data['machine'].get('gpu')}** ({data['machine'].get('gpu_memory_gib')} GiB, CUDA "
            f"{data['machine'].get('cuda')}; torch {data['versions'].get('torch')}). Random-weight LLaMA-7B blocks "
            f"(hidden {d['hidden']}, MLP {d['mlp']}, {d['heads']} heads, {d['kv_heads']} KV heads), "
            f"{data['tokens']} calibration tokens per block, block dtype {data['dtype']}, Grams "
            f"{data['gram_dtype']}, solver dtype {data['solver_dtype']}; up to {data['blocks']} blocks, one after "
            "the other. Time = sum of `prunekit.solve` wall time over the block's modules; memory = "
            "`torch.cuda.max_memory_allocated` during the block's solves (block weights and all 7 Grams included). "
            "The fast solvers ran on all 4 blocks; the slow ones on block 0 only (the session's 30 minutes of "
            "device time). Full table, per-module times and the exact commands (resumed runs): "
            "`benchmarks/GPU_SCALE.md` / `.json`.",
            "",
        ]
        rows = []
        for r in sorted(summarize(data), key=lambda r: (r["setting"], r["mean_block_s"])):
            rows.append([r["formulation"], r["setting"], len(r["times"]), round(r["mean_block_s"], 2),
                         round(r["max_block_s"], 2), round(r["peak_mib"] / 1024, 2), r["status"]])
        lines += [md_table(["formulation", "setting", "blocks", "mean s / block", "max s / block",
                            "peak GiB", "status"], rows), ""]
        lines += [f"Commands ({len(cmds)} calls, each resuming the JSON of the last): "
                  + "; ".join(f"`{c}`" for c in cmds), ""]
    return lines


def reading_notes(runs: dict[str, dict[str, Any]]) -> list[str]:
    """What bounds the measured speedup, computed from the FASP 30% run (no hand-written numbers)."""
    rec = runs.get(_rid("fasp", "channels30"))
    if not rec or rec.get("status") != "ok":
        return []
    pb, pa = rec["params_before"], rec["params_after"]
    other = pb["total"] - pb["block_linear"]  # embedding (tied lm_head) + norms
    ratio = (pb["block_linear"] + other) / (pa["block_linear"] + other)
    return ["### Reading the speed target", "",
            f"Removing 30% of the MLP channels takes the decoder-block linear weights from {pb['block_linear'] / 1e6:.2f}M "
            f"to {pa['block_linear'] / 1e6:.2f}M, but every token also goes through the {other / 1e6:.2f}M parameters "
            "outside the blocks (the output projection, tied to the embedding) and the attention products over the 512-token context, which "
            "channel pruning leaves alone. Counting linear-layer multiply-adds per token (lm_head included), the "
            f"pruned model does {1 / ratio:.3f} of the dense work: at most {ratio:.3f}x faster, less once the unchanged "
            "attention products are counted. The measured speedups sit just under that bound; the +attn rows remove "
            "W_V/W_O channels too, a few percent more. Identically shaped models (all 30% rows) differ by up to "
            "±0.05x between runs: the machine was shared, so speed numbers carry that much noise.", ""]


def _invocations(out_dir: Path, meta: dict[str, Any]) -> list[dict[str, Any]]:
    """Invocations recorded in _meta.json, after any listed by hand in _invocations_prior.json (sorted by start)."""
    invs = list(meta.get("invocations") or [{"command": meta.get("command"), "started": meta.get("started")}])
    prior = Path(out_dir) / "_invocations_prior.json"
    if prior.exists():
        try:
            invs = json.loads(prior.read_text()) + invs
        except json.JSONDecodeError:
            pass
    return sorted(invs, key=lambda i: str(i.get("started")))


def _rel(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def write_report(out_dir: Path, md: Path, meta: dict[str, Any], plan: list[str],
                 gpu_scale_json: Optional[Path] = None, plots: bool = True) -> Path:
    runs = load_runs(out_dir)
    proto = meta.get("protocol", {})
    smoke = proto.get("smoke")
    plot_paths = (make_plots(runs, out_dir) if plots else
                  [q for q in (out_dir / "ppl_vs_sparsity.png", out_dir / "per_layer.png") if q.exists()])
    targets = evaluate_targets(runs)
    machine = meta.get("machine", {})
    ver = meta.get("versions", {})
    cal, ev = proto.get("calibration", {}), proto.get("evaluation", {})
    lines = [f"# Model benchmark results: {proto.get('model')}", ""]
    if smoke:
        lines += ["> **SMOKE RUN** (tiny random model, byte tokenizer): checks the harness only; the numbers mean "
                  "nothing about the methods.", ""]
    lines += [
        f"Generated {utc_now()} by `benchmarks/models.py` (runs started "
        f"{min([str(i.get('started')) for i in _invocations(out_dir, meta)] + [str(meta.get('started'))])}"
        + (f", finished {meta['finished']}" if meta.get("finished") else ", **still running or interrupted**") + ").",
        "",
        "## Protocol",
        "",
        f"* Model: `{proto.get('model')}`, float32, device `{proto.get('device')}`.",
        f"* Calibration: {cal.get('nsamples')} windows × {cal.get('seqlen')} tokens from {cal.get('source')}, "
        f"seed {cal.get('seed')} (`prunekit.data.calibration_windows`).",
        f"* Perplexity: {'all' if ev.get('windows') is None else 'the first ' + str(ev.get('windows'))} "
        f"non-overlapping windows × {ev.get('seqlen')} tokens of {ev.get('source')}; exp(mean window loss) "
        "(`prunekit.evaluate.perplexity`, methods.md §2). seqlen is stored with every number in the JSON.",
        "* Settings: 50% unstructured and 2:4 for magnitude, wanda, sparsegpt, mrp, fista (and three FISTA "
        "variants: `fista_refit` = `refit=True`, `fista_fraction` = `lambda_init='fraction'`, both [derived] options "
        "of `L1Relaxation`, and `fista_seq` = calibration mode `sequential`: pruned-model inputs across blocks "
        "instead of FISTAPruner's dense ones); 20% and 30% of the MLP channels (`attention=none`) for fasp, flap, spap, admm; `+attn` "
        "rows also prune attention channels at the same ratio (`Recipe.attention='vo_channels'`: rows of W_V with the "
        "matching columns of W_O, FASP's scheme, for every method; whole heads are not used because this model's 3 KV "
        "groups leave none removable at 20-30%). Uniform allocation, recipe defaults otherwise.",
        "* Pruning time: wall time of `prunekit.prune(model, recipe, calibration)` (calibration forward passes "
        "included; loading and tokenization excluded), with the process CPU time beside it where recorded (the wall "
        "time includes waiting for the CPU on this shared machine). Peak memory: the process's RSS high-water mark during "
        "`prune` (reset before it via /proc/self/clear_refs; includes the model), or max CUDA memory allocated.",
        f"* Speed: batch 1 × {proto.get('speed', {}).get('batch', [1, '?'])[1]} random tokens, forward without "
        "cache; median of timed forwards after warm-up, dense and pruned interleaved in the same process with the "
        "same thread count, measured only for physically smaller models; the speedup is the ratio of medians "
        "(targets use it), 'best-of' the ratio of the fastest forwards. Memory = parameter bytes + the RSS increment "
        "of one forward.",
        ("* Each run in a fresh subprocess (per-run RSS peaks; a crash or timeout is recorded, not fatal)"
         if meta.get("isolation", "process") == "process" else "* All runs in one process (`--isolation inline`)")
        + f"; per-run JSON in `{_rel(out_dir)}/` (incl. the per-layer report and any error with its traceback).",
        "",
        "Commands that wrote these results (runs whose JSON already existed were skipped by each):",
        "",
        *[f"* `{inv.get('command')}` — started {inv.get('started')}"
          + (f", finished {inv['finished']}" if inv.get("finished") else "")
          + (f" ({inv['note']})" if inv.get("note") else "") for inv in _invocations(out_dir, meta)],
        "",
        "The whole matrix in one command (resumable; `--force` re-runs everything): "
        "`nice -n 5 python benchmarks/models.py" + (" --smoke" if smoke else "") + "`.",
        "",
        f"Machine: {machine_line(machine)}. Shared machine: other processes were running, so times are noisy.",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in ver.items()),
        "",
        "## Results",
        "",
        md_table(HEADERS, table_rows(runs, plan)),
        "",
    ]
    not_done = [r for r in plan if r not in runs]
    failed = [k for k, r in runs.items() if r.get("status") != "ok"]
    if not_done or failed:
        lines += ["## Runs not done or failed", ""]
        for r in not_done:
            lines.append(f"* `{r}`: not run — no result in `{_rel(out_dir)}/` when this file was written "
                         "(not reached within the time budget of this work, or still running).")
        for k in failed:
            err = runs[k].get("error") or {}
            lines.append(f"* `{k}`: **{runs[k].get('status')}** in phase `{err.get('phase')}` — "
                         f"{err.get('type')}: {str(err.get('message'))[:300]}")
        lines.append("")
    lines += ["## Targets (evaluated automatically from the JSON)", ""]
    if smoke:
        lines += ["> Smoke run: the targets are evaluated to exercise the code; they say nothing here.", ""]
    lines += ["The anchors of methods.md §9 are for OPT/LLaMA models and are not numerically comparable with this "
              "model; the targets test the orderings they show (e.g. OPT-125M at 50%: FISTAPruner 33.54 < SparseGPT "
              "37.01 < Wanda 38.96 ≪ magnitude 193.35; FASP +16% and SPAP 1.29× inference speed at 30%).", ""]
    lines.append(md_table(["target", "status", "numbers"],
                          [[t["target"], f"**{t['status']}**", t["numbers"]] for t in targets]))
    lines.append("")
    if not smoke:
        lines += reading_notes(runs)
    if plot_paths:
        lines += ["## Plots", ""]
        for p in plot_paths:
            try:
                rel = p.resolve().relative_to(md.resolve().parent)
            except ValueError:
                rel = p
            lines.append(f"![{p.stem}]({rel})")
        lines.append("")
    lines += gpu_scale_section(gpu_scale_json)
    md.parent.mkdir(parents=True, exist_ok=True)
    md.write_text("\n".join(lines) + "\n")
    (out_dir / "_targets.json").write_text(json.dumps(targets, indent=2) + "\n")
    return md
