"""Model-level allocation benchmark: uniform vs OWL / adaptive / softmax on the standard protocol, one run per call.

    nice -n 10 python benchmarks/allocation.py --method sparsegpt --sparsity 0.7 --allocation owl
    nice -n 10 python benchmarks/allocation.py --method flap --structure channels --sparsity 0.3 --allocation adaptive
    python benchmarks/allocation.py --method fasp_refit --structure channels --sparsity 0.3 --allocation auto \
        --block-refit auto                                  # a method's own defaults, recorded as resolved
    python benchmarks/allocation.py --report-only        # rebuild ALLOCATION.md from ALLOCATION.json

Protocol (as benchmarks/models.py): smollm2-135m in float32 on CPU; calibration 32 windows x 512 tokens of WikiText-2
``wiki.valid.raw`` (seed 0); perplexity on the first 64 non-overlapping 512-token windows of ``wiki.test.raw``.
Each run appends (or replaces, same run id) one record in ``benchmarks/ALLOCATION.json``: the recipe, perplexity,
the allocation (budget, pruned weights, min / max / per-target ratios), parameters and nonzero block weights, the
wall times and the command; ``benchmarks/ALLOCATION.md`` is rebuilt from the JSON.  Perplexity only: times are
recorded but were taken on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import command_line, machine_info, utc_now, versions  # noqa: E402

JSON = HERE / "ALLOCATION.json"
MD = HERE / "ALLOCATION.md"


def run_id(a) -> str:
    extra = "".join(f"-{k}{v}" for k, v in sorted(a.options.items()))
    opts = f"-m{a.owl_m:g}-l{a.owl_lambda:g}" if a.allocation == "owl" else (
        f"-T{a.temperature:g}" if a.allocation == "softmax" else "")
    rt = f"-r{a.round_to}" if a.round_to != "auto" else ""
    refit = "" if a.block_refit == "off" else "-refitauto" if a.block_refit == "auto" else (
        "-refit" + "".join(f"-{k}{v:g}" if isinstance(v, float) else f"-{k}{v}"
                           for k, v in sorted(a.block_refit_fields.items())))
    return f"{a.method}{extra}-{a.structure}{a.sparsity:g}-{a.allocation}{opts}{rt}{refit}"


def run(a) -> dict:
    import torch

    import prunekit
    from prunekit.data import calibration_windows, evaluation_tokens
    from prunekit.evaluate import perplexity
    from prunekit.models.allocate import allocation
    from prunekit.models.recipe import CalibrationSettings, Recipe
    from prunekit.models.sources import load_model

    if a.threads:
        torch.set_num_threads(a.threads)
    rec = {"run": run_id(a), "date": utc_now(), "command": command_line(), "machine": machine_info("cpu"),
           "versions": versions(), "status": "running"}
    try:
        model, tok = load_model(a.model)
        model.eval()
        round_to = a.round_to if a.round_to == "auto" else int(a.round_to)
        recipe = Recipe(method=a.method, structure=a.structure, sparsity=a.sparsity, allocation=a.allocation,
                        temperature=a.temperature, owl_m=a.owl_m, owl_lambda=a.owl_lambda, options=a.options,
                        block_refit=a.block_refit_value,
                        round_to=round_to, calibration=CalibrationSettings(source="wikitext2", nsamples=a.nsamples,
                                                                           seqlen=a.seqlen, seed=0))
        rec["recipe"] = recipe.to_dict()
        calib = calibration_windows(tok, "wikitext2", a.nsamples, a.seqlen, seed=0, data_dir=a.data_dir)
        t0 = time.perf_counter()
        ratios = None
        if a.allocation != "uniform":
            alloc = allocation(model, recipe, calib, progress=False, prepass=_cached_prepass(a, model, recipe, calib))
            ratios = alloc.ratios
            vals = list(ratios.values())
            rec["allocation"] = {"budget_weights": alloc.budget, "pruned_weights": alloc.pruned_weights,
                                 "budget_error": alloc.budget_error, "min": min(vals), "max": max(vals),
                                 "ratios": ratios, "time_s": time.perf_counter() - t0}
        result = prunekit.prune(model, recipe, calib, progress=False, ratios=ratios)
        rec["prune_time_s"] = time.perf_counter() - t0
        rep = result.report
        if "auto" in (a.allocation, a.block_refit):
            rec["resolved"] = {k: rep.recipe[k] for k in ("allocation", "block_refit")}  # what "auto" ran
        if rep.refits:
            rec["refits"] = [r.to_dict() for r in rep.refits]
        rec["params_before"], rec["params_after"] = rep.params_before, rep.params_after
        rec["nonzero_before"], rec["nonzero_after"] = rep.nonzero_params_before, rep.nonzero_params_after
        rec["pruned_targets"] = sum(round(r.shape[0] * r.shape[1] * r.sparsity) for r in rep.layers
                                    if r.group is None and r.sparsity is not None)
        rec["target_weights"] = sum(r.shape[0] * r.shape[1] for r in rep.layers if r.group is None)
        ev = evaluation_tokens(tok, "wikitext2", data_dir=a.data_dir)
        rec["perplexity"] = perplexity(model, ev, a.eval_seqlen, windows=a.eval_windows)
        rec["status"] = "ok"
    except Exception as exc:  # recorded, never hidden
        rec["status"] = "error"
        rec["error"] = {"type": type(exc).__name__, "message": str(exc)[:2000], "traceback": traceback.format_exc()}
    return rec


def _cached_prepass(a, model, recipe, calib):
    """The dense pre-pass depends on the model, the calibration, the rule and what the method scores, not on the
    sparsity: cache it in --cache-dir (None: no cache) so that e.g. OWL at 50% and 70% share one pass."""
    import torch

    from prunekit.models.allocate import importance_prepass
    from prunekit.models.allocation_default import resolve_allocation
    from prunekit.models.stores import ModelBlocks

    if not a.cache_dir:
        return None
    recipe = resolve_allocation(recipe)  # "auto" -> its rule: the adaptive rule's pre-pass keeps unit scores
    scope = (recipe.method.column_score if recipe.structure.kind == "channels"
             else recipe.method.formulation.unstructured_scope)
    key = f"{a.model}-{a.nsamples}x{a.seqlen}-{recipe.structure}-{recipe.allocation}-{scope}-{a.round_to}" + (
        f"-M{a.owl_m:g}" if recipe.allocation == "owl" else "")
    path = Path(a.cache_dir) / f"{key}.pt"
    if path.exists():
        return torch.load(path, weights_only=False)
    stats = importance_prepass(ModelBlocks(model), recipe, calib, progress=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(stats, path)
    return stats


def load_records() -> list[dict]:
    return json.loads(JSON.read_text())["runs"] if JSON.exists() else []


def save(records: list[dict]) -> None:
    JSON.write_text(json.dumps({"protocol": PROTOCOL, "runs": records}, indent=1) + "\n")
    write_md(records)


PROTOCOL = {"model": "smollm2-135m (float32, cpu)", "calibration": "32 x 512 tokens of wiki.valid.raw, seed 0",
            "evaluation": "first 64 non-overlapping 512-token windows of wiki.test.raw"}


def _ppl(r):
    p = r.get("perplexity")
    return p.get("ppl") if isinstance(p, dict) else p


def write_md(records: list[dict]) -> None:
    lines = ["# Model-level allocation: uniform vs OWL / adaptive on the standard protocol", "",
             "Generated by `benchmarks/allocation.py` from `benchmarks/ALLOCATION.json` (one record per run; the "
             "command of each is in the JSON).", "",
             f"Protocol: {PROTOCOL['model']}; calibration {PROTOCOL['calibration']}; perplexity on the "
             f"{PROTOCOL['evaluation']} (as benchmarks/models.py).  Budget: round(S x weights of the pruned "
             f"targets) (channels: the weights every unit spans); 'pruned' is what the allocation realized.", "",
             "| run | method | setting | allocation | ppl | budget → pruned (weights) | per-target ratios min–max | "
             "block nonzero after | prune s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        rc = r.get("recipe", {})
        al = r.get("allocation")
        alloc = rc.get("allocation", "?")
        if alloc == "auto" and r.get("resolved"):
            alloc = f"auto = {r['resolved']['allocation']}"
        if alloc == "owl":
            alloc += f" (M={rc.get('owl_m'):g}, λ={rc.get('owl_lambda'):g})"
        if rc.get("round_to") not in (None, "auto"):
            alloc += f", round_to={rc['round_to']}"
        budget = f"{al['budget_weights']:,} → {al['pruned_weights']:,}" if al else "uniform"
        span = f"{al['min']:.3f}–{al['max']:.3f}" if al else f"{rc.get('sparsity', 0):g}"
        ppl = _ppl(r)
        ppl_s = f"{ppl:.2f}" if isinstance(ppl, (int, float)) else r.get("status")
        opts = "".join(f" {k}={v}" for k, v in (rc.get("options") or {}).items())
        nz = r.get("nonzero_after")
        lines.append(f"| {r['run']} | {rc.get('method')}{opts} | {rc.get('structure')} {rc.get('sparsity', 0):g} | "
                     f"{alloc} | {ppl_s} | {budget} | {span} | {nz:,} |" if nz is not None else
                     f"| {r['run']} | {rc.get('method')} | — | {alloc} | {ppl_s} | {budget} | {span} | — |")
        lines[-1] += f" {r.get('prune_time_s', 0):.0f} |"
    notes = ""  # a hand-written "## Notes" section below the table survives rebuilds
    if MD.exists() and "\n## Notes" in MD.read_text():
        notes = "\n## Notes" + MD.read_text().split("\n## Notes", 1)[1]
    MD.write_text("\n".join(lines) + "\n" + notes)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--method", default="sparsegpt")
    p.add_argument("--structure", default="unstructured")
    p.add_argument("--sparsity", type=float, default=0.5)
    p.add_argument("--allocation", default="uniform")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--owl-m", type=float, default=5.0)
    p.add_argument("--owl-lambda", type=float, default=0.08)
    p.add_argument("--round-to", default="auto")
    p.add_argument("--option", action="append", default=[], help="formulation option KEY=JSON (e.g. refit=true)")
    p.add_argument("--block-refit", default="off",
                   help="off (default: the uniform rows above), on (BlockRefit's defaults), auto (the method's own "
                        "default), or a JSON mapping of BlockRefit fields (epochs / lr / seed / schedule / retries / "
                        "scope / targets)")
    p.add_argument("--nsamples", type=int, default=32)
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--eval-windows", type=int, default=64)
    p.add_argument("--eval-seqlen", type=int, default=512)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--data-dir", default=os.environ.get("PRUNEKIT_DATA_DIR") or str(HERE.parent.parent / "shared" / "data"))
    p.add_argument("--cache-dir", default=None, help="cache the dense allocation pre-pass here (reused across runs)")
    p.add_argument("--report-only", action="store_true")
    a = p.parse_args(argv)
    a.options = {k: json.loads(v) for k, v in (o.split("=", 1) for o in a.option)}
    a.block_refit_fields = {} if a.block_refit in ("off", "on", "auto") else json.loads(a.block_refit)
    a.block_refit_value = {"off": False, "auto": "auto"}.get(a.block_refit, dict(a.block_refit_fields))
    if not a.report_only:
        rec = run(a)
        records = load_records()  # read after the run: runs in parallel each add their own record
        records = [r for r in records if r["run"] != rec["run"]] + [rec]
        ppl = _ppl(rec)
        print(rec["run"], rec["status"], ppl, rec.get("allocation", {}).get("budget_error"), flush=True)
        if rec["status"] != "ok":
            print(rec["error"]["traceback"], file=sys.stderr)
    else:
        records = load_records()
    save(records)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
