"""prunekit's prune time against the public reference implementations of the same method, same run (issue 10).

    python benchmarks/reference_speed.py                       # all rows, 2 repetitions, 2 threads (about an hour)
    python benchmarks/reference_speed.py --rows wanda-unstructured50 sparsegpt-2:4 --reps 3
    python benchmarks/reference_speed.py --smoke               # 2 windows x 64 tokens, 1 rep, wanda only
    python benchmarks/reference_speed.py --report-only         # rebuild the markdown from the JSON

References: Wanda and magnitude from locuslab/wanda (``lib.prune.prune_wanda`` / ``prune_magnitude``), SparseGPT
from IST-DASLab/sparsegpt (``llama.py``'s ``llama_sequential``), FLAP from CASIA-IVA-Lab/FLAP
(``lib.prune.prune_flap``, WIFV).  Their code is never copied here: it runs, unmodified, from a *refbench* folder
outside the project (``--refbench``, default ``$PRUNEKIT_REFBENCH``) holding their trees, a separate virtual
environment with the older transformers their code needs (``venv/``), and thin glue scripts
(``glue_wanda.py``, ``glue_sparsegpt.py``, ``glue_flap.py``) that load the same float32 checkpoint, take the
calibration windows from a file, time only the reference's prune call and write a JSON record
``{method, structure, prune_s, threads, transformers, commit, ...}``.

Protocol: the calibration windows are built once with prunekit's own data functions (``--nsamples 32`` x
``--seqlen 512`` tokens of WikiText-2 ``wiki.valid.raw``, seed 0, :func:`prunekit.data.calibration_windows`) and
saved; both sides prune from exactly these windows.  For each of ``--reps`` repetitions every row runs its pair
(reference, prunekit) in fresh subprocesses with the same thread count (``torch.set_num_threads`` and
``OMP_NUM_THREADS``/``MKL_NUM_THREADS``), interleaved, the order inside a pair alternating between repetitions so
that load from other processes hits both alike.  prunekit's side times :func:`prunekit.bench.timed_prune` (the
model loaded from prunekit's source of the same checkpoint); each repetition also times one plain forward pass of
the calibration windows (:func:`prunekit.bench.calibration_forward_time`) for the "prune / one calibration
forward" ratio.  Reported per row: medians over the repetitions, prunekit / reference (target <= 1.0) and
prune / forward (target <= 2.5 for Wanda), with the machine, threads, load averages and the busiest other
processes at start and end ("what else ran").

Outputs: ``--out`` (default ``benchmarks/REFERENCE_SPEED.md``; ``--smoke`` writes into the work folder) and the
JSON beside it; per-run JSON and logs in ``--work-dir``.  Both files are rewritten after every run.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

if str(Path(__file__).resolve().parent) not in sys.path:  # run as a script or as benchmarks.reference_speed
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (REPO, command_line, machine_info, machine_line, md_table, utc_now, versions,  # noqa: E402
                     write_json)

DEFAULT_OUT = REPO / "benchmarks" / "REFERENCE_SPEED.md"
DEFAULT_WORK = REPO / "benchmarks" / "_work" / "reference_speed"
RATIO_TARGET = 1.0
SETUP_HINT = ("Fix: create it with its setup script (bash <refbench>/setup.sh: reference trees, venv/ and the glue "
              "scripts; see benchmarks/README.md) and pass --refbench DIR or set PRUNEKIT_REFBENCH.")


# ----------------------------------------------------------------------------------------------- the matrix
@dataclass(frozen=True)
class PrunekitRun:
    """One prunekit recipe timed on the prunekit side (several reference rows may share it).  ``round_to`` 1 for
    FLAP: the kept MLP width is then n - floor(0.3 n) (1076 of 1536), as in FLAP's UL-UM, instead of "auto"'s
    multiple of 64 (1088)."""

    key: str
    method: str
    structure: str
    sparsity: float
    attention: str = "none"
    round_to: Any = "auto"


@dataclass(frozen=True)
class Row:
    """One table row: a reference implementation's prune call paired with a prunekit run.

    ``glue`` is the refbench script and ``glue_args`` its method arguments; ``forward_target`` the bound on
    prunekit's prune / one calibration forward (None: reported without a target)."""

    id: str
    label: str
    reference: str
    glue: str
    glue_args: tuple[str, ...]
    prunekit: str
    forward_target: Optional[float] = None
    same_work: bool = True  # False: the prunekit run is another variant (perplexities not compared)


PRUNEKIT_RUNS: dict[str, PrunekitRun] = {r.key: r for r in (
    PrunekitRun("wanda-unstructured50", "wanda", "unstructured", 0.5),
    PrunekitRun("wanda-2:4", "wanda", "2:4", 0.5),
    PrunekitRun("sparsegpt-unstructured50", "sparsegpt", "unstructured", 0.5),
    PrunekitRun("sparsegpt-2:4", "sparsegpt", "2:4", 0.5),
    PrunekitRun("magnitude-unstructured50", "magnitude", "unstructured", 0.5),
    PrunekitRun("flap-channels30", "flap", "channels", 0.3, "none", round_to=1),
)}

ROWS: dict[str, Row] = {r.id: r for r in (
    Row("wanda-unstructured50", "Wanda 50%", "locuslab/wanda prune_wanda", "glue_wanda.py",
        ("--method", "wanda", "--structure", "unstructured", "--sparsity", "0.5"), "wanda-unstructured50", 2.5),
    Row("wanda-2:4", "Wanda 2:4", "locuslab/wanda prune_wanda", "glue_wanda.py",
        ("--method", "wanda", "--structure", "2:4", "--sparsity", "0.5"), "wanda-2:4", 2.5),
    Row("sparsegpt-unstructured50", "SparseGPT 50%", "IST-DASLab/sparsegpt llama_sequential", "glue_sparsegpt.py",
        ("--structure", "unstructured", "--sparsity", "0.5"), "sparsegpt-unstructured50"),
    Row("sparsegpt-2:4", "SparseGPT 2:4", "IST-DASLab/sparsegpt llama_sequential", "glue_sparsegpt.py",
        ("--structure", "2:4", "--sparsity", "0.5"), "sparsegpt-2:4"),
    Row("magnitude-unstructured50", "magnitude 50%", "locuslab/wanda prune_magnitude", "glue_wanda.py",
        ("--method", "magnitude", "--structure", "unstructured", "--sparsity", "0.5"), "magnitude-unstructured50"),
    Row("flap-channels30", "FLAP 30% MLP ch. (UL-UM)", "CASIA-IVA-Lab/FLAP prune_flap UL-UM", "glue_flap.py",
        ("--structure", "UL-UM", "--mlp-fraction", "0.3"), "flap-channels30"),
    Row("flap-channels30-AL-MM", "FLAP 30% MLP ch. (AL-MM)", "CASIA-IVA-Lab/FLAP prune_flap AL-MM", "glue_flap.py",
        ("--structure", "AL-MM", "--mlp-fraction", "0.3"), "flap-channels30", same_work=False),
)}
SMOKE_ROWS = ("wanda-unstructured50",)


def build_recipe(run: PrunekitRun, nsamples: int, seqlen: int):
    """The prunekit Recipe of ``run`` with the protocol's calibration settings (the windows are passed in)."""
    from prunekit.models.recipe import CalibrationSettings, Recipe

    return Recipe(method=run.method, structure=run.structure, sparsity=run.sparsity, attention=run.attention,
                  round_to=run.round_to, allocation="uniform",  # the references prune uniformly (FLAP: UL-UM)
                  calibration=CalibrationSettings(source="wikitext2", nsamples=nsamples, seqlen=seqlen, seed=0))


def safe(name: str) -> str:
    return name.replace(":", "-").replace("/", "-")


# ----------------------------------------------------------------------------------------------- prunekit side
def _load_windows(path):
    import torch

    return torch.load(path, weights_only=True)


def mlp_widths(model) -> list[int]:
    """The MLP width (down_proj's input channels) of every decoder block."""
    return [int(layer.mlp.down_proj.weight.shape[1]) for layer in model.model.layers]


def structure_facts(model, widths_before: Sequence[int]) -> dict[str, Any]:
    """Zero fraction of the decoder blocks' linear weights and the MLP channels removed since ``widths_before``
    (the glue scripts report the same facts, so the table shows both sides did the same work)."""
    import torch

    zeros = total = 0
    for mod in model.model.layers.modules():
        if isinstance(mod, torch.nn.Linear):
            zeros += mod.weight.numel() - int(torch.count_nonzero(mod.weight))
            total += mod.weight.numel()
    kept = mlp_widths(model)
    return {"achieved_sparsity": zeros / total if total else 0.0, "mlp_kept_per_layer": kept,
            "mlp_channels_removed": sum(widths_before) - sum(kept)}


def prunekit_one(key: str, windows_path, out, *, model: str = "smollm2-135m", threads: int = 2,
                 device: str = "cpu", eval_path=None) -> dict[str, Any]:
    """Time prunekit's prune of ``PRUNEKIT_RUNS[key]`` in this process and write the record to ``out``.

    The model is loaded with :func:`prunekit.models.sources.load_model` (float32) after
    ``torch.set_num_threads(threads)``; the time is :func:`prunekit.bench.timed_prune` on the saved windows.
    With ``eval_path`` (test windows (k, L)) the perplexity after pruning is added (not timed).  Returns the record.
    """
    import torch

    torch.set_num_threads(threads)
    from prunekit.bench import timed_prune
    from prunekit.models.sources import load_model

    run = PRUNEKIT_RUNS[key]
    windows = _load_windows(windows_path)
    recipe = build_recipe(run, int(windows.shape[0]), int(windows.shape[1]))
    net, _ = load_model(model)
    net.eval()
    widths = mlp_widths(net)
    timed = timed_prune(net, recipe, windows, device=device)
    rec: dict[str, Any] = {
        "side": "prunekit", "key": key, "method": run.method, "structure": run.structure, "sparsity": run.sparsity,
        "attention": run.attention, "prune_s": timed.wall_s, "threads": threads,
        "torch_threads": torch.get_num_threads(), "device": device, "model": model,
        "nsamples": int(windows.shape[0]), "seqlen": int(windows.shape[1]), "recipe": recipe.to_dict(),
        "time_prune_s_report": getattr(timed.report, "time_prune_s", None),
        "attn_implementation": getattr(net.config, "_attn_implementation", None),
        "load_avg": [round(v, 2) for v in os.getloadavg()], "versions": versions(),
    }
    rec.update(structure_facts(net, widths))
    if eval_path:
        from prunekit.evaluate import perplexity

        test = _load_windows(eval_path)
        rec["ppl"] = perplexity(net, test.reshape(-1), int(test.shape[1]), windows=int(test.shape[0]),
                                device=device)["ppl"]
    write_json(Path(out), rec)
    return rec


def forward_one(windows_path, out, *, model: str = "smollm2-135m", threads: int = 2,
                device: str = "cpu") -> dict[str, Any]:
    """Time one plain forward pass of the saved windows (:func:`prunekit.bench.calibration_forward_time`, batch 1,
    one untimed warm-up batch) on the dense model and write the record to ``out``."""
    import torch

    torch.set_num_threads(threads)
    from prunekit.bench import calibration_forward_time
    from prunekit.models.sources import load_model

    windows = _load_windows(windows_path)
    recipe = build_recipe(PRUNEKIT_RUNS["wanda-unstructured50"], int(windows.shape[0]), int(windows.shape[1]))
    net, _ = load_model(model)
    seconds = calibration_forward_time(net.eval(), recipe, windows, device=device)
    rec = {"side": "forward", "key": "forward", "forward_s": seconds, "threads": threads,
           "torch_threads": torch.get_num_threads(), "device": device, "model": model,
           "nsamples": int(windows.shape[0]), "seqlen": int(windows.shape[1]),
           "load_avg": [round(v, 2) for v in os.getloadavg()]}
    write_json(Path(out), rec)
    return rec


# ----------------------------------------------------------------------------------------------- data
def model_folder(model: str) -> Path:
    """The float32 safetensors folder behind ``model`` (a prunekit built-in name, created on first use, or a
    folder), which the reference glue loads with transformers' LlamaForCausalLM."""
    from prunekit.models.sources import ensure_builtin, resolve_source

    src = resolve_source(model)
    if src.kind == "builtin":
        return Path(ensure_builtin(src.name))
    if src.kind == "folder":
        return Path(src.path)
    raise SystemExit(f"--model {model!r} is a {src.kind} source; the reference glue needs a safetensors folder. "
                     f"Fix: pass a prunekit built-in name (smollm2-135m) or a float32 safetensors folder.")


def prepare_inputs(args, work: Path) -> tuple[Path, Path, Optional[Path]]:
    """The model folder, and the saved calibration windows (prunekit's WikiText-2 sampler, seed 0) and, when
    ``args.eval_windows`` > 0, the first ``eval_windows`` test windows of ``seqlen`` tokens (else None)."""
    import torch
    from transformers import AutoTokenizer

    from prunekit.data import calibration_windows, evaluation_tokens

    folder = model_folder(args.model)
    nsamples, seqlen, eval_windows, data_dir = args.nsamples, args.seqlen, args.eval_windows, args.data_dir
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    work.mkdir(parents=True, exist_ok=True)
    calib = calibration_windows(tokenizer, "wikitext2", nsamples, seqlen, seed=0, data_dir=data_dir)
    calib_path = work / f"calibration_{nsamples}x{seqlen}.pt"
    torch.save(calib.contiguous(), calib_path)
    test_path = None
    if eval_windows > 0:
        stream = evaluation_tokens(tokenizer, "wikitext2", data_dir=data_dir)
        test = stream[: eval_windows * seqlen].reshape(eval_windows, seqlen)
        test_path = work / f"test_{eval_windows}x{seqlen}.pt"
        torch.save(test.contiguous(), test_path)
    return folder, calib_path, test_path


# ----------------------------------------------------------------------------------------------- runs
@dataclass(frozen=True)
class Job:
    """One subprocess: ``side`` is "reference", "prunekit" or "forward"; ``key`` the row id (reference), the
    prunekit run key, or "forward"."""

    rep: int
    side: str
    key: str

    @property
    def name(self) -> str:
        return f"rep{self.rep}-{self.side}-{safe(self.key)}"


def plan_jobs(rows: Sequence[str], reps: int) -> list[Job]:
    """The run order: per repetition one forward, then per row the pair (reference, prunekit), the order inside
    a pair alternating between repetitions; a prunekit run shared by rows runs once per repetition."""
    jobs: list[Job] = []
    for rep in range(reps):
        jobs.append(Job(rep, "forward", "forward"))
        done: set[str] = set()
        for row_id in rows:
            row = ROWS[row_id]
            pair = [Job(rep, "reference", row_id)]
            if row.prunekit not in done:
                done.add(row.prunekit)
                pair.append(Job(rep, "prunekit", row.prunekit))
            jobs.extend(pair if rep % 2 == 0 else pair[::-1])
    return jobs


def job_argv(job: Job, args, calib: Path, test: Optional[Path], out: Path, folder: Path) -> list[str]:
    """The command line of ``job``."""
    if job.side == "reference":
        row = ROWS[job.key]
        argv = [str(args.ref_python), str(Path(args.refbench) / row.glue), *row.glue_args, "--windows", str(calib),
                "--out", str(out), "--model", str(folder), "--threads", str(args.threads), "--device", args.device]
        return argv + (["--eval", str(test)] if test and job.rep == 0 else [])
    flag = "--prunekit-one" if job.side == "prunekit" else "--forward-one"
    argv = [sys.executable, str(Path(__file__).resolve()), flag, job.key, "--windows", str(calib), "--job-out",
            str(out), "--model", args.model, "--threads", str(args.threads), "--device", args.device]
    return argv + (["--eval-path", str(test)] if test and job.side == "prunekit" and job.rep == 0 else [])


def describe_command(args: str) -> str:
    """A short, safe name for a process: the program's base name, and for Python the module (-m) or script base
    name; never the rest of its command line (which may carry tokens or environment)."""
    tokens = args.split()
    if not tokens:
        return "?"
    prog = os.path.basename(tokens[0])
    if prog.startswith("python"):
        rest = tokens[1:]
        if "-m" in rest and rest.index("-m") + 1 < len(rest):
            return f"{prog} -m {rest[rest.index('-m') + 1]}"
        script = next((t for t in rest if not t.startswith("-")), None)
        return f"{prog} {os.path.basename(script)}" if script else prog
    return prog


def busy_processes(limit: int = 8, min_cpu: float = 1.0) -> list[str]:
    """The busiest other processes now (``ps``: pid, lifetime %CPU, elapsed, short name), this one and its
    ``ps`` excluded: what else ran.  Only :func:`describe_command` names are kept."""
    try:
        out = subprocess.run(["ps", "-eo", "pid=,pcpu=,etime=,args=", "--sort=-pcpu"], capture_output=True,
                             text=True, timeout=10).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        return []
    rows = []
    for line in out:
        parts = line.split(None, 3)
        if len(parts) < 4 or parts[0] == str(os.getpid()) or parts[3].startswith("ps "):
            continue
        try:
            if float(parts[1]) < min_cpu:
                continue
        except ValueError:
            continue
        rows.append(f"{parts[0]} {parts[1]}% {parts[2]} {describe_command(parts[3])}")
    return rows[:limit]


def run_job(argv: list[str], out: Path, *, threads: int, timeout: float) -> dict[str, Any]:
    """Run one job in a fresh process (same thread count through the environment) and return its record, or an
    error record with the end of its log."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    log = out.with_suffix(".log")
    out.unlink(missing_ok=True)  # written by this benchmark only (its work folder)
    load_before = [round(v, 2) for v in os.getloadavg()]
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        try:
            proc = subprocess.run(argv, stdout=fh, stderr=subprocess.STDOUT, env=env, timeout=timeout,
                                  cwd=str(REPO))
            status = "ok" if proc.returncode == 0 and out.is_file() else f"exit code {proc.returncode}"
        except subprocess.TimeoutExpired:
            status = "timeout"
    wall = time.perf_counter() - t0
    rec: dict[str, Any] = {"status": status, "wall_s": wall, "load_avg_before": load_before,
                           "load_avg_after": [round(v, 2) for v in os.getloadavg()],
                           "command": " ".join(shlex.quote(a) for a in argv)}
    if status == "ok":
        rec["record"] = json.loads(out.read_text())
    else:
        rec["log_tail"] = log.read_text()[-3000:] if log.is_file() else ""
    return rec


# ----------------------------------------------------------------------------------------------- summary
def _median(values: list[float]) -> Optional[float]:
    return statistics.median(values) if values else None


def _times(runs: list[dict[str, Any]], side: str, key: str, field: str = "prune_s") -> list[float]:
    return [r["record"][field] for r in runs
            if r.get("side") == side and r.get("key") == key and r.get("status") == "ok" and "record" in r]


def _first(runs: list[dict[str, Any]], side: str, key: str, field: str) -> Any:
    """``field`` of the first ok record of (side, key) that has it (perplexity is measured in repetition 0 only)."""
    return next((r["record"][field] for r in runs if r.get("side") == side and r.get("key") == key
                 and r.get("status") == "ok" and r.get("record", {}).get(field) is not None), None)


PPL_TOLERANCE = 0.01
"""prunekit's perplexity within 1% of the reference implementation's on the same windows (issue 13)."""


def summarize(runs: list[dict[str, Any]], rows: Sequence[str]) -> list[dict[str, Any]]:
    """Per row: medians over the repetitions, the two ratios and their verdicts (MET / MISSED / NOT RUN)."""
    forward = _median(_times(runs, "forward", "forward", "forward_s"))
    out = []
    for row_id in rows:
        row = ROWS[row_id]
        ref_t = _times(runs, "reference", row_id)
        pk_t = _times(runs, "prunekit", row.prunekit)
        ref, pk = _median(ref_t), _median(pk_t)
        ratio = pk / ref if pk is not None and ref else None
        per_forward = pk / forward if pk is not None and forward else None
        ref_rec = next((r["record"] for r in runs if r.get("side") == "reference" and r.get("key") == row_id
                        and r.get("status") == "ok"), {})
        pk_rec = next((r["record"] for r in runs if r.get("side") == "prunekit" and r.get("key") == row.prunekit
                       and r.get("status") == "ok"), {})
        out.append({
            "row": row_id, "label": row.label, "reference": row.reference, "prunekit_run": row.prunekit,
            "prunekit_s": pk, "reference_s": ref, "prunekit_times": pk_t, "reference_times": ref_t,
            "ratio": ratio, "ratio_verdict": _verdict(ratio, RATIO_TARGET),
            "forward_s": forward, "prune_per_forward": per_forward,
            "reference_per_forward": ref / forward if ref is not None and forward else None,
            "forward_target": row.forward_target,
            "forward_verdict": _verdict(per_forward, row.forward_target) if row.forward_target else None,
            "reference_commit": ref_rec.get("commit"), "reference_transformers": ref_rec.get("transformers"),
            "prunekit_ppl": _first(runs, "prunekit", row.prunekit, "ppl"),
            "reference_ppl": _first(runs, "reference", row_id, "ppl"),
            "prunekit_sparsity": pk_rec.get("achieved_sparsity"), "reference_sparsity": ref_rec.get("achieved_sparsity"),
            "prunekit_mlp_removed": pk_rec.get("mlp_channels_removed"),
            "reference_mlp_removed": ref_rec.get("mlp_channels_removed"),
            "failed": [r["name"] for r in runs if r.get("status") != "ok"
                       and ((r.get("side") == "reference" and r.get("key") == row_id)
                            or (r.get("side") == "prunekit" and r.get("key") == row.prunekit))],
        })
    return out


def _ppl_verdict(pk: Optional[float], ref: Optional[float]) -> str:
    if pk is None or not ref:
        return "—"
    ratio = pk / ref
    return f"{ratio:.3f} " + ("MET" if abs(ratio - 1.0) <= PPL_TOLERANCE else ("BETTER" if ratio < 1 else "MISSED"))


def _verdict(value: Optional[float], target: Optional[float]) -> str:
    if value is None or target is None:
        return "NOT RUN"
    return f"{'MET' if value <= target else 'MISSED'} ({value:.2f} vs <= {target:g})"


def _fmt(v: Optional[float], digits: int = 1) -> Optional[str]:
    return None if v is None else f"{v:.{digits}f}"


def render(data: dict[str, Any]) -> str:
    """The markdown report of a benchmark JSON (see :func:`main`)."""
    meta, summary, runs = data["meta"], data["summary"], data["runs"]
    proto = meta["protocol"]
    lines = [
        "# prunekit vs the reference implementations: prune time, same run",
        "",
        "Written by `benchmarks/reference_speed.py`" + (" (**SMOKE RUN**: tiny protocol, numbers mean nothing)"
                                                        if proto.get("smoke") else "") + ".",
        "",
        f"- command: `{meta['command']}`",
        f"- started {meta['started']}, last update {meta.get('updated', '—')}"
        + (f", finished {meta['finished']}" if meta.get("finished") else " (running or cut short)"),
        f"- machine: {meta['machine_line']}",
        f"- threads: {proto['threads']} on both sides (torch.set_num_threads, OMP_NUM_THREADS, MKL_NUM_THREADS); "
        f"device {proto['device']}",
        f"- protocol: {proto['nsamples']} x {proto['seqlen']} calibration windows of WikiText-2 wiki.valid.raw, "
        f"seed 0 (prunekit.data.calibration_windows), the same file for both sides; model {proto['model']} "
        f"(float32); {proto['reps']} repetition(s), each row's pair (reference, prunekit) in fresh subprocesses, "
        "interleaved, order alternating per repetition; times are medians",
        f"- prunekit: {meta['versions'].get('prunekit')} (git {meta['versions'].get('git')}), transformers "
        f"{meta['versions'].get('transformers')}, torch {meta['versions'].get('torch')}; references run in the "
        f"refbench venv `{meta.get('ref_python')}`",
        f"- what else ran: load average at start {meta.get('load_start')}, at end {meta.get('load_end', '—')}; "
        "busiest other processes listed below; " + (meta.get("note") or "no note given (--note)"),
        "",
        "## Same-run table",
        "",
    ]
    headers = ["row", "reference", "prunekit s", "reference s", "prunekit / reference", "target <= 1.0",
               "prune / 1 calib. forward", "target", "reference / forward"]
    table = []
    for s in summary:
        table.append([s["label"], s["reference"], _fmt(s["prunekit_s"]), _fmt(s["reference_s"]),
                      _fmt(s["ratio"], 2), s["ratio_verdict"], _fmt(s["prune_per_forward"], 2),
                      s["forward_verdict"] or "—", _fmt(s["reference_per_forward"], 2)])
    lines += [md_table(headers, table), ""]
    forward = summary[0]["forward_s"] if summary else None
    lines += [f"One plain forward of the calibration windows (dense model, batch 1, "
              f"prunekit.bench.calibration_forward_time): {_fmt(forward, 2) or '—'} s (median).", ""]
    checks = [[s["label"], _fmt(s["prunekit_sparsity"], 3), _fmt(s["reference_sparsity"], 3),
               s["prunekit_mlp_removed"], s["reference_mlp_removed"], _fmt(s["prunekit_ppl"], 2),
               _fmt(s["reference_ppl"], 2),
               _ppl_verdict(s["prunekit_ppl"], s["reference_ppl"]) if ROWS[s["row"]].same_work
               else "— (prunekit ran the uniform variant)",
               s["reference_commit"] and s["reference_commit"][:12],
               s["reference_transformers"], ", ".join(s["failed"]) or "—"] for s in summary]
    lines += ["## Same work on both sides", "",
              md_table(["row", "prunekit zeros", "reference zeros", "prunekit MLP ch. removed",
                        "reference MLP ch. removed", "prunekit ppl", "reference ppl",
                        "prunekit / reference ppl (within 1%)", "reference commit",
                        "reference transformers", "failed runs"], checks), "",
              "Zeros: fraction of zero weights in the decoder blocks' linear layers after pruning; ppl only with "
              "`--eval-windows` (repetition 0 only; untimed, after the prune).", ""]
    patches: dict[str, list[str]] = {}
    for r in runs:
        rec = r.get("record") or {}
        if r.get("side") == "reference" and rec.get("glue_patches"):
            patches.setdefault(rec.get("reference", r["key"]), rec["glue_patches"])
    if patches:
        lines += ["## What the glue changes around the references (their code runs unmodified)", ""]
        for ref, items in sorted(patches.items()):
            lines.append(f"- {ref}: " + "; ".join(items))
        lines.append("")
    lines += ["## Runs", ""]
    run_rows = [[r["name"], r["status"], _fmt((r.get("record") or {}).get("prune_s")
                                              or (r.get("record") or {}).get("forward_s"), 2),
                 _fmt(r.get("wall_s"), 1), r.get("load_avg_before"), r.get("load_avg_after")] for r in runs]
    lines += [md_table(["run", "status", "timed s", "process wall s", "load before", "load after"], run_rows), ""]
    for tag in ("busy_start", "busy_end"):
        if meta.get(tag):
            lines += [f"Busiest other processes at {tag.split('_')[1]} (pid, lifetime %CPU, elapsed, program):", ""]
            lines += ["    " + p for p in meta[tag]] + [""]
    return "\n".join(lines)


def write_report(data: dict[str, Any], out: Path) -> None:
    """Write ``out`` (markdown) and the JSON beside it."""
    write_json(out.with_suffix(".json"), data)
    tmp = out.with_suffix(".md.tmp")
    tmp.write_text(render(data))
    os.replace(tmp, out)


# ----------------------------------------------------------------------------------------------- driver
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--refbench", default=os.environ.get("PRUNEKIT_REFBENCH"),
                   help="the refbench folder (reference trees, venv/, glue scripts); default $PRUNEKIT_REFBENCH")
    p.add_argument("--ref-python", default=None, help="interpreter of the references (default <refbench>/venv/bin/"
                                                      "python)")
    p.add_argument("--rows", nargs="+", default=None, help=f"rows to run (default all): {', '.join(ROWS)}")
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--nsamples", type=int, default=32)
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--model", default="smollm2-135m", help="prunekit source name or float32 safetensors folder")
    p.add_argument("--device", default="cpu")
    p.add_argument("--data-dir", default=None, help="data folder (default $PRUNEKIT_DATA_DIR, else ../shared/data)")
    p.add_argument("--eval-windows", type=int, default=0, help="also report perplexity on this many wiki.test "
                                                               "windows of --seqlen tokens (not timed)")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds per subprocess")
    p.add_argument("--out", default=None, help=f"markdown report (default {DEFAULT_OUT.relative_to(REPO)}; JSON "
                                               "beside it)")
    p.add_argument("--work-dir", default=str(DEFAULT_WORK), help="windows, per-run JSON and logs")
    p.add_argument("--note", default="", help="what else ran on the machine (free text, copied to the report)")
    p.add_argument("--smoke", action="store_true", help="2 windows x 64 tokens, 1 repetition, wanda only; writes "
                                                        "into --work-dir unless --out is given")
    p.add_argument("--report-only", action="store_true", help="rebuild the markdown from the JSON beside --out")
    # one job of the benchmark, run by the driver in a fresh process
    p.add_argument("--prunekit-one", default=None, metavar="KEY", help=argparse.SUPPRESS)
    p.add_argument("--forward-one", default=None, metavar="KEY", help=argparse.SUPPRESS)
    p.add_argument("--windows", default=None, help=argparse.SUPPRESS)
    p.add_argument("--job-out", default=None, help=argparse.SUPPRESS)
    p.add_argument("--eval-path", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.smoke:
        args.nsamples, args.seqlen, args.reps = min(args.nsamples, 2), min(args.seqlen, 64), 1
        args.rows = args.rows or list(SMOKE_ROWS)
    args.rows = args.rows or list(ROWS)
    unknown = [r for r in args.rows if r not in ROWS]
    if unknown:
        p.error(f"unknown row(s) {unknown}; known: {list(ROWS)}")
    if args.out is None:
        args.out = str(Path(args.work_dir) / "REFERENCE_SPEED_smoke.md") if args.smoke else str(DEFAULT_OUT)
    return args


def check_refbench(args) -> None:
    """Stop with one message when the refbench folder, its glue scripts or its interpreter are missing."""
    if not args.refbench:
        raise SystemExit("no refbench folder given: the reference implementations run from a folder outside "
                         "prunekit. " + SETUP_HINT)
    root = Path(args.refbench)
    args.ref_python = args.ref_python or str(root / "venv" / "bin" / "python")
    missing = [str(root / g) for g in sorted({ROWS[r].glue for r in args.rows}) if not (root / g).is_file()]
    if not Path(args.ref_python).exists():
        missing.append(args.ref_python)
    if missing:
        raise SystemExit(f"the refbench folder {root} lacks {', '.join(missing)}. " + SETUP_HINT)


def run_benchmark(args, *, launch: Callable[..., dict[str, Any]] = run_job,
                  prepare: Callable[..., tuple[Path, Path, Optional[Path]]] = prepare_inputs) -> dict[str, Any]:
    """Run every job of the plan in order, rewriting the report after each; returns the benchmark data.

    ``launch(argv, out, threads=, timeout=)`` runs one job (default :func:`run_job`, a fresh subprocess);
    ``prepare(args, work)`` returns (model folder, calibration file, test file or None) (default
    :func:`prepare_inputs`) -- both replaceable for tests."""
    work = Path(args.work_dir)
    (work / "runs").mkdir(parents=True, exist_ok=True)
    folder, calib, test = prepare(args, work)
    info = machine_info(args.device)
    info["torch_threads"] = args.threads
    meta = {"command": command_line(), "started": utc_now(), "machine": info, "machine_line": machine_line(info),
            "versions": versions(), "ref_python": args.ref_python, "refbench": str(args.refbench),
            "note": args.note, "load_start": [round(v, 2) for v in os.getloadavg()], "busy_start": busy_processes(),
            "protocol": {"nsamples": args.nsamples, "seqlen": args.seqlen, "reps": args.reps,
                         "threads": args.threads, "device": args.device, "model": args.model,
                         "model_folder": str(folder), "calibration_file": str(calib), "smoke": args.smoke,
                         "eval_windows": args.eval_windows, "rows": list(args.rows)}}
    data: dict[str, Any] = {"meta": meta, "summary": [], "runs": []}
    out = Path(args.out)
    jobs = plan_jobs(args.rows, args.reps)
    for i, job in enumerate(jobs):
        job_out = work / "runs" / f"{job.name}.json"
        print(f"[{i + 1}/{len(jobs)}] {job.name} ({utc_now()})", flush=True)
        rec = launch(job_argv(job, args, calib, test, job_out, folder), job_out, threads=args.threads,
                     timeout=args.timeout)
        rec.update(name=job.name, rep=job.rep, side=job.side, key=job.key)
        data["runs"].append(rec)
        timed = (rec.get("record") or {}).get("prune_s", (rec.get("record") or {}).get("forward_s"))
        print(f"    -> {rec['status']}" + (f", {timed:.2f} s" if timed is not None else ""), flush=True)
        meta["updated"] = utc_now()
        data["summary"] = summarize(data["runs"], args.rows)
        write_report(data, out)
    meta["finished"] = utc_now()
    meta["load_end"] = [round(v, 2) for v in os.getloadavg()]
    meta["busy_end"] = busy_processes()
    write_report(data, out)
    print(f"wrote {out} and {out.with_suffix('.json')}")
    return data


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.prunekit_one or args.forward_one:
        if not (args.windows and args.job_out):
            raise SystemExit("--prunekit-one / --forward-one need --windows and --job-out")
        if args.prunekit_one:
            prunekit_one(args.prunekit_one, args.windows, args.job_out, model=args.model, threads=args.threads,
                         device=args.device, eval_path=args.eval_path)
        else:
            forward_one(args.windows, args.job_out, model=args.model, threads=args.threads, device=args.device)
        return 0
    out = Path(args.out)
    if args.report_only:
        data = json.loads(out.with_suffix(".json").read_text())
        data["meta"]["report_command"] = command_line()
        write_report(data, out)
        print(f"wrote {out}")
        return 0
    check_refbench(args)
    data = run_benchmark(args)
    return 0 if all(r["status"] == "ok" for r in data["runs"]) else 1


__all__ = ["Job", "PRUNEKIT_RUNS", "PrunekitRun", "ROWS", "Row", "build_recipe", "check_refbench", "forward_one",
           "job_argv", "main", "plan_jobs", "prepare_inputs", "prunekit_one", "render", "run_benchmark", "run_job",
           "summarize", "write_report"]

if __name__ == "__main__":
    sys.exit(main())
