"""Time, iterations and error of every registered torch solver on layers of real shapes (CPU or GPU).

    python benchmarks/layer_solvers.py [--shapes 576x1536,2048x8192,4096x11008] [--device cpu|cuda]
        [--tokens N] [--solvers NAME,...] [--out benchmarks/LAYER_SOLVERS.md] [--json FILE] [--quick]
        [--max-seconds S]

Generic over the registry: for every torch solver, a builder table makes a large instance of its formulation
(random W with unit-variance rows; G = X^T X from random activations whose channel scales decay like a power
law with a few outlier channels and a shared low-rank component) for each applicable spec -- 50 % unstructured,
2:4, 30 % channels -- and times ``prunekit.solve``.  Reported: iterations (solver stats), objective, relative
error, the gap to the closed-form optimum **for the solver's own mask** (fixed-mask restoration; computed where
cheap: structured masks, or at most ``--gap-max-weights`` weights) and the objective relative to SparseGPT on
the same spec (FASP's CoupledStructuredRemoval for channels, where SparseGPT does not apply).  Each (solver, spec, shape) runs in a child process killed after ``--max-seconds``; such
entries are marked "skipped (time budget)".  ``--quick`` runs tiny shapes in-process (smoke test).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

SPEC_NAMES = ("unstructured50", "2:4", "channels30")


def make_spec(name: str):
    from prunekit.formulations.sparsity import NM, Channels, Unstructured

    return {"unstructured50": Unstructured(0.5), "2:4": NM(2, 4), "channels30": Channels(ratio=0.3)}[name]


# ----------------------------------------------------------------------------------------------- data
def activations(n: int, tokens: int, seed: int) -> torch.Tensor:
    """(tokens, n) float32: power-law channel scales, 1 % outlier channels (x20), a rank-16 shared part."""
    g = torch.Generator().manual_seed(seed)
    scales = (1.0 + torch.arange(n, dtype=torch.float32)) ** -0.5
    scales = scales[torch.randperm(n, generator=g)]
    scales[torch.randperm(n, generator=g)[: max(1, n // 100)]] *= 20.0
    x = torch.randn(tokens, n, generator=g) * scales
    return x + 0.3 * torch.randn(tokens, 16, generator=g) @ (torch.randn(16, n, generator=g) * scales)


def build_data(m: int, n: int, tokens: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed + 1)
    x = activations(n, tokens, seed)
    data = {"weight": torch.randn(m, n, generator=g) / n ** 0.5, "gram": x.T @ x, "mean": x.mean(0),
            "num_tokens": tokens}
    data["block_inputs"] = activations(m, tokens, seed + 2)  # SparseLLM: d = m inputs, h = n neurons
    data["fc1"] = torch.randn(n, m, generator=g) / m ** 0.5
    return data


def layer_from(data: dict, device: str):
    from prunekit.formulations.layer import LayerData

    gram = data["gram"].to(device)
    return LayerData(weight=data["weight"].to(device), gram=0.5 * (gram + gram.T), num_tokens=data["num_tokens"],
                     input_mean=data["mean"].to(device), check_psd=gram.shape[0] <= 2048)


# ----------------------------------------------------------------------------------------------- builders
def _wanda_mask(layer, spec):
    from prunekit.formulations import scores

    s = scores.wanda(layer)
    return spec.project(s.sum(0) if spec.structured else s)


def build(ftype: type, spec_name: str, data: dict, device: str):
    """Large instance of ``ftype`` for ``spec_name``; None when the formulation does not take that spec."""
    from prunekit.errors import FormulationError

    name = ftype.__name__
    spec = make_spec(spec_name)
    if name == "LayerAllocation":
        if spec_name != "channels30":
            return None
        L, n = 32, data["weight"].shape[1]
        g = torch.Generator().manual_seed(5)
        return ftype(sizes=(n,) * L, mean_sparsity=0.3, energies=tuple(torch.randn(L, generator=g).tolist()),
                     temperature=0.5, s_max=0.8)
    if name == "SparseLLMSplit":
        w2 = data["weight"].to(device)
        kw = dict(structured=True) if spec.structured else {}
        return ftype.opt(data["fc1"].to(device), None, w2, None, data["block_inputs"].to(device), spec, **kw)
    layer = layer_from(data, device)
    try:
        if name == "FixedMaskRestoration":
            return ftype(layer, mask=_wanda_mask(layer, spec))
        fields = {f.name for f in dataclasses.fields(ftype)}
        if "sparsity" not in fields:
            return None
        return ftype(layer, sparsity=spec)
    except (FormulationError, TypeError, ValueError):
        return None


# ----------------------------------------------------------------------------------------------- one run
def _iterations(stats: dict):
    for key in ("iterations", "rounds", "outer_iterations", "iters", "epochs"):
        if key in stats:
            return stats[key]
    return None


def restoration_objective(formulation, sol, max_weights: int):
    """Objective of the closed-form optimum on the solver's own mask (None when too costly)."""
    from prunekit.solvers.torch.closed_form import restore

    layer = getattr(formulation, "layer", None)
    if layer is None or type(formulation).__name__ == "SparseLLMSplit" or sol.bias is not None:
        return None
    mask = sol.mask.bool()
    shared = bool((mask == mask[:1]).all())
    if not shared and mask.numel() > max_weights:
        return None
    w, _ = restore(layer, mask, dtype=torch.float64)
    return formulation.objective(w.to(layer.weight.dtype)) if type(formulation).__name__ != "LayerAllocation" else None


def run_one(solver_name: str, spec_name: str, data: dict, device: str, gap_max_weights: int, partial=None) -> dict:
    import prunekit
    from prunekit.solvers.registry import registered

    cls = next(c for c in registered() if c.__name__ == solver_name)
    f = build(cls.formulation_type, spec_name, data, device)
    if f is None:
        return {"status": "n/a"}
    ok, why = cls().accepts(f)
    if not ok:
        return {"status": f"declined: {why}"}
    if device == "cuda":
        torch.cuda.synchronize()
    sol = prunekit.solve(f, backend=cls.backend, device=device)
    if device == "cuda":
        torch.cuda.synchronize()
    out = {"status": "ok", "time_s": sol.stats["time_s"], "iterations": _iterations(dict(sol.stats)),
           "objective": sol.residuals.get("objective"), "relative_error": sol.residuals.get("relative_error"),
           "mask_violations": sol.residuals.get("mask_violations"), "sparsity": sol.sparsity}
    if partial:
        Path(partial).write_text(json.dumps(out))
    try:
        ref = restoration_objective(f, sol, gap_max_weights)
    except Exception as exc:  # the gap is a bonus; never lose the timing for it
        ref, out["gap_note"] = None, f"gap failed: {type(exc).__name__}"
    if ref is not None:
        out["restored_objective"] = ref
        out["gap_to_restored"] = (out["objective"] - ref) / ref if ref > 0 else 0.0
    return out


# ----------------------------------------------------------------------------------------------- driver
def device_name(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return f"CPU: {line.split(':', 1)[1].strip()} ({os.cpu_count()} logical cores, {torch.get_num_threads()} torch threads)"
    except OSError:
        pass
    return f"CPU: {platform.processor() or platform.machine()}"


def torch_solvers(names=None) -> list:
    from prunekit.solvers.registry import registered

    out = [c for c in registered() if c.backend == "torch"]
    if names:
        out = [c for c in out if c.__name__ in names or c.formulation_type.__name__ in names]
    return out


def _child(args, solver, spec, shape, data_path, tmp) -> dict:
    res, part = Path(tmp) / "res.json", Path(tmp) / "partial.json"
    for p in (res, part):
        p.unlink(missing_ok=True)
    cmd = [sys.executable, __file__, "--_worker", data_path, solver, spec, args.device, str(args.gap_max_weights), str(res), str(part)]
    start = time.perf_counter()
    try:
        subprocess.run(cmd, timeout=args.max_seconds, check=False, capture_output=True, text=True)
    except subprocess.TimeoutExpired:
        if part.exists():
            out = json.loads(part.read_text())
            out["gap_note"] = "gap skipped (time budget)"
            return out
        return {"status": "skipped (time budget)", "time_s": None, "wall_s": time.perf_counter() - start}
    if res.exists():
        return json.loads(res.read_text())
    return {"status": "error (see stderr of the worker)"}


def fmt(v, spec=".4g"):
    if v is None:
        return "–"
    return format(v, spec) if isinstance(v, float) else str(v)


def write_markdown(path: Path, meta: dict, rows: list) -> None:
    lines = ["# Layer solver benchmark", "", f"* device: **{meta['device_name']}** (`--device {meta['device']}`)",
             f"* torch {meta['torch']}, python {meta['python']}, {meta['date']}",
             f"* command: `{meta['command']}`",
             f"* calibration tokens: {meta['tokens']}; per-entry budget (s): {meta['max_seconds']}; solver options: defaults (float32)",
             "* gap = (objective − objective of the closed-form restoration on the solver's own mask) / the latter "
             "(0 = optimal weights for that mask; '–' = not computed: unstructured masks above "
             f"{meta['gap_max_weights']} weights, or not a layer problem)",
             "* vs baseline = objective / baseline objective on the same shape and spec (< 1 = better); baseline = "
             "SparseGPT for unstructured50 and 2:4, FASP (CoupledStructuredRemoval) for channels30",
             "* SparseLLMSplit rows are block problems (OPT MLP: fc1 n x m, ReLU, fc2 = the m x n layer; objective = "
             "block output error, inner pruner SparseGPT); LayerAllocation rows allocate 30 % over 32 layers of n units",
             f"* machine load average at the start: {meta['load']} (shared machine: timings are indicative)", "",
             "| shape | solver | formulation | spec | status | time (s) | iterations | objective | rel. error | gap | vs baseline |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['shape']} | {r['solver']} | {r['formulation']} | {r['spec']} | {r['status']}"
                     f"{' (' + r['gap_note'] + ')' if r.get('gap_note') else ''} | {fmt(r.get('time_s'), '.3f')} | "
                     f"{fmt(r.get('iterations'))} | {fmt(r.get('objective'))} | {fmt(r.get('relative_error'))} | "
                     f"{fmt(r.get('gap_to_restored'), '.2e')} | {fmt(r.get('vs_sparsegpt'), '.3f')} |")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def finalize(rows: list) -> list:
    """Objective relative to SparseGPT (FASP for channels) on the same shape and spec."""
    for r in rows:
        ref_solver = "TorchCoupledRemoval" if r["spec"] == "channels30" else "TorchSparseGPT"
        base = next((b for b in rows if b["solver"] == ref_solver and b["shape"] == r["shape"]
                     and b["spec"] == r["spec"] and b.get("objective")), None)
        if base and r.get("objective") is not None and r["formulation"] not in ("SparseLLMSplit", "LayerAllocation"):
            r["vs_sparsegpt"] = r["objective"] / base["objective"]
        if r["formulation"] == "LayerAllocation":
            r["relative_error"] = None  # an allocation has no reconstruction error (objective = entropy objective)
    return rows


def merge(paths: list, out: Path, json_out: str = "") -> dict:
    """Combine the JSON files of several runs (e.g. one per shape) into one markdown table."""
    runs = [json.loads(Path(p).read_text()) for p in paths]
    meta = dict(runs[0]["meta"])
    for key in ("command", "max_seconds", "load", "date", "tokens"):
        meta[key] = " ; ".join(str(r["meta"][key]) for r in runs)
    best: dict = {}  # one row per (shape, solver, spec); a measured row wins over a skipped one
    for row in (row for r in runs for row in r["rows"]):
        key = (row["shape"], row["solver"], row["spec"])
        if key not in best or (best[key]["status"] != "ok" and row["status"] == "ok"):
            best[key] = row
    order = {n: i for i, n in enumerate(c.__name__ for c in torch_solvers())}
    size = lambda shape: int(shape.split("x")[0]) * int(shape.split("x")[1])  # noqa: E731
    rows = finalize(sorted(best.values(), key=lambda r: (size(r["shape"]), order.get(r["solver"], 99),
                                                         SPEC_NAMES.index(r["spec"]))))
    write_markdown(out, meta, rows)
    names = [c.__name__ for c in torch_solvers()]
    missing = {shape: [n for n in names if not any(r["solver"] == n and r["shape"] == shape for r in rows)]
               for shape in dict.fromkeys(r["shape"] for r in rows)}
    notes = [f"* {shape}: no entry (not reached before the run was stopped at the deadline, or no applicable spec): {', '.join(m)}" for shape, m in missing.items() if m]
    if notes:
        out.write_text(out.read_text() + "\n" + "\n".join(notes) + "\n")
    if json_out:
        Path(json_out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1, default=str))
    return {"meta": meta, "rows": rows}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", default="576x1536,2048x8192,4096x11008")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--solvers", default="")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "LAYER_SOLVERS.md"))
    ap.add_argument("--json", default="")
    ap.add_argument("--max-seconds", type=float, default=300.0, help="per (solver, spec, shape) budget")
    ap.add_argument("--gap-max-weights", type=int, default=1_000_000)
    ap.add_argument("--quick", action="store_true", help="tiny shapes (default 32x64), in-process, smoke test")
    ap.add_argument("--merge", default="", help="comma-separated JSON files of earlier runs: write one table")
    args = ap.parse_args(argv)
    if args.merge:
        return merge(args.merge.split(","), Path(args.out), args.json)
    if args.quick and args.shapes == ap.get_default("shapes"):
        args.shapes, args.tokens = "32x64", min(args.tokens, 256)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error("--device cuda requested but no CUDA device is available.")
    solvers = torch_solvers([s for s in args.solvers.split(",") if s])
    load = " / ".join(f"{v:.1f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    meta = {"device": args.device, "device_name": device_name(args.device), "torch": torch.__version__,
            "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "command": " ".join(["python", "benchmarks/layer_solvers.py", *(argv if argv is not None else sys.argv[1:])]),
            "tokens": args.tokens, "load": load, "max_seconds": args.max_seconds, "gap_max_weights": args.gap_max_weights}
    rows: list = []

    def flush() -> dict:  # written after every entry, so an interrupted run keeps what it measured
        result = {"meta": meta, "rows": finalize(rows)}
        write_markdown(Path(args.out), meta, rows)
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=1, default=str))
        return result

    with tempfile.TemporaryDirectory() as tmp:
        for shape in args.shapes.split(","):
            m, n = (int(v) for v in shape.lower().split("x"))
            data = build_data(m, n, args.tokens)
            data_path = str(Path(tmp) / "data.pt")
            if not args.quick:
                torch.save(data, data_path)
            for cls in solvers:
                for spec in SPEC_NAMES:
                    if args.quick:
                        r = run_one(cls.__name__, spec, data, args.device, args.gap_max_weights)
                    else:
                        r = _child(args, cls.__name__, spec, shape, data_path, tmp)
                    if r["status"] == "n/a":
                        continue
                    rows.append({"shape": shape, "solver": cls.__name__, "formulation": cls.formulation_type.__name__,
                                 "spec": spec, **r})
                    print(json.dumps(rows[-1]), flush=True)
                    flush()
    return flush()


def _worker(argv) -> None:
    data_path, solver, spec, device, gap_max, res, part = argv
    data = torch.load(data_path)
    out = run_one(solver, spec, data, device, int(gap_max), partial=part)
    Path(res).write_text(json.dumps(out, default=float))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--_worker":
        _worker(sys.argv[2:])
    else:
        main()
