"""Scale benchmark: prune random-weight LLaMA-7B-shaped decoder blocks, block by block, with every torch solver.

For each of ``--blocks`` decoder blocks of LLaMA-7B shape (hidden 4096, MLP 11008, 32 heads; 8 KV heads, i.e.
the GQA layout of LLaMA-2/3-style models) with random weights, the script

1. builds the block (``transformers`` ``LlamaDecoderLayer``, one at a time, ``--dtype`` bf16 or fp32) on
   ``--device``;
2. runs ``--tokens`` random calibration activations through it (chunks of ``--seqlen``) and accumulates the
   Gram matrix of every linear module's input with :class:`prunekit.formulations.GramAccumulator` (one
   accumulator per distinct input: q/k/v share one, gate/up share one);
3. for every registered **torch** solver (``prunekit.solvers.registry.registered()``) and every setting that
   its formulation type accepts -- ``unstructured50`` (50% per row), ``2:4`` and ``channels30`` (30% of the
   input channels of ``o_proj`` -- whole heads -- and ``down_proj``) -- solves each linear module of the block
   with ``prunekit.solve(formulation, backend="torch", device=...)``, and records the block's solve time
   (sum over its modules), the per-module times, the peak device memory during the block
   (``torch.cuda.max_memory_allocated`` on CUDA; the process's peak RSS on CPU) and the relative
   reconstruction error of each module.

``--scale s`` multiplies every dimension by ``s`` (heads and KV heads are rounded and kept >= 1, the head width
follows) so that the same code runs on a CPU: ``--scale 0.125`` is a block of hidden 512 / MLP 1376.
The output (``--out``, markdown, plus JSON with ``--json``) states the device and the scale, so a reduced-size
CPU run can never pass for the GPU measurement.

Example (the command meant for a lent GPU)::

    python benchmarks/gpu_scale.py --device cuda --blocks 4 --scale 1.0 --tokens 262144 --dtype bf16 --json

CPU check at reduced size::

    python benchmarks/gpu_scale.py --device cpu --blocks 1 --scale 0.125 --tokens 4096 --json
"""

from __future__ import annotations

import argparse
import functools
import math
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Optional

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    REPO,
    PeakMemory,
    command_line,
    machine_info,
    machine_line,
    md_table,
    sync,
    utc_now,
    versions,
    write_json,
)

LLAMA7B = {"hidden": 4096, "mlp": 11008, "heads": 32, "kv_heads": 8}
MODULES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
# Modules whose input columns are channels that can be removed with the coupled upstream rows.
CHANNEL_MODULES = ("self_attn.o_proj", "mlp.down_proj")
SETTINGS = ("unstructured50", "2:4", "channels30")


# ----------------------------------------------------------------------------------------------- the block
def llama_dims(scale: float) -> dict[str, int]:
    """LLaMA-7B block dimensions times ``scale`` (heads rounded, >= 1; widths multiples of 4 for 2:4)."""
    if not 0 < scale <= 1:
        raise ValueError(f"--scale must lie in (0, 1], got {scale}.")
    heads = max(2, round(LLAMA7B["heads"] * scale))
    kv = max(1, round(LLAMA7B["kv_heads"] * scale))
    while heads % kv:
        kv -= 1
    head_dim = max(4, int(round(LLAMA7B["hidden"] * scale / heads / 2)) * 2)
    mlp = max(8, int(math.ceil(LLAMA7B["mlp"] * scale / 4)) * 4)
    return {"hidden": heads * head_dim, "mlp": mlp, "heads": heads, "kv_heads": kv, "head_dim": head_dim}


def build_block(dims: dict[str, int], dtype, device: str, seed: int):
    """A random ``LlamaDecoderLayer`` of the given dims and its rotary embedding (eval mode, no grad)."""
    import torch
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

    config = LlamaConfig(
        hidden_size=dims["hidden"], intermediate_size=dims["mlp"], num_attention_heads=dims["heads"],
        num_key_value_heads=dims["kv_heads"], head_dim=dims["head_dim"], num_hidden_layers=1, vocab_size=128,
        max_position_embeddings=max(4096, 2 * dims["hidden"]),
    )
    config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    with torch.device(device):
        block = LlamaDecoderLayer(config, layer_idx=0).to(dtype)
        rotary = LlamaRotaryEmbedding(config)
    for module in block.modules():  # LLaMA's init: N(0, 0.02)
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.normal_(module.weight, std=config.initializer_range)
    block.eval()
    return block, rotary


def calibrate(block, rotary, dims, *, tokens: int, seqlen: int, device: str, dtype, gram_dtype, seed: int,
              mlp_tokens: int = 0):
    """Stream random activations through ``block``.

    Returns ({module name: GramAccumulator}, MLP inputs (first ``mlp_tokens`` tokens, float32, or None), time).
    """
    import torch
    from prunekit.formulations import GramAccumulator

    shared = {"self_attn.q_proj": "qkv", "self_attn.k_proj": "qkv", "self_attn.v_proj": "qkv",
              "mlp.gate_proj": "gate_up", "mlp.up_proj": "gate_up"}
    accs: dict[str, Any] = {}
    hooks = []
    modules = dict(block.named_modules())
    for name in MODULES:
        key = shared.get(name, name)
        if key not in accs:
            accs[key] = GramAccumulator(modules[name].in_features, dtype=gram_dtype, device=device)

            def hook(_mod, args, _acc=accs[key]):
                _acc.update(args[0])

            hooks.append(modules[name].register_forward_pre_hook(hook))
    mlp_inputs: list = []
    if mlp_tokens > 0:
        def keep_mlp_input(_mod, args):
            have = sum(t.shape[0] for t in mlp_inputs)
            if have < mlp_tokens:
                x = args[0].detach().reshape(-1, args[0].shape[-1])
                mlp_inputs.append(x[: mlp_tokens - have].float().clone())

        hooks.append(modules["mlp.gate_proj"].register_forward_pre_hook(keep_mlp_input))
    gen = torch.Generator(device="cpu").manual_seed(seed)
    start = time.perf_counter()
    done = 0
    with torch.no_grad():
        while done < tokens:
            t = min(seqlen, tokens - done)
            x = torch.randn(1, t, dims["hidden"], generator=gen).to(device=device, dtype=dtype)
            pos = torch.arange(t, device=device)[None]
            block(x, position_embeddings=rotary(x, pos), position_ids=pos)
            done += t
    sync(device)
    elapsed = time.perf_counter() - start
    for h in hooks:
        h.remove()
    x_mlp = torch.cat(mlp_inputs) if mlp_inputs else None
    return {name: accs[shared.get(name, name)] for name in MODULES}, x_mlp, elapsed


# ----------------------------------------------------------------------------------------------- formulations
def spec_for(setting: str, module: str, dims: dict[str, int]):
    """The sparsity spec of ``setting`` on ``module``, or None when the setting does not apply to it."""
    from prunekit.formulations import NM, Channels, Unstructured

    if setting == "unstructured50":
        return Unstructured(0.5)
    if setting == "2:4":
        return NM(2, 4)
    if setting == "channels30":
        if module not in CHANNEL_MODULES:
            return None
        if module == "self_attn.o_proj":  # whole heads: o_proj's input columns come in head_dim blocks
            return Channels(0.3, group_size=dims["head_dim"])
        return Channels(0.3)
    raise ValueError(f"unknown setting {setting!r}; choose from {SETTINGS}")


def _magnitude_mask(layer, spec):
    w = layer.weight.abs()
    if getattr(spec, "structured", False):
        w = w.float().norm(dim=0, keepdim=True).expand_as(w)
    return spec.project(w.float())


def _generic(ftype: type, layer, spec):
    return ftype(layer=layer, sparsity=spec)


def _fixed_mask(ftype: type, layer, spec):
    return ftype(layer=layer, mask=_magnitude_mask(layer, spec))


# Formulation type name -> builder(ftype, layer, spec).  Types not listed use ``ftype(layer=..., sparsity=...)``;
# a type that cannot be built that way is reported as skipped with the error, never silently dropped.
BUILDERS: dict[str, Callable] = {
    "FixedMaskRestoration": _fixed_mask,
}


def _mlp_weights(block):
    mlp = block.mlp
    return (mlp.gate_proj.weight.detach().float(), mlp.up_proj.weight.detach().float(),
            mlp.down_proj.weight.detach().float())


def _sparsellm(ftype: type, block, x, setting: str, dims):
    """SparseLLM's split of the whole MLP (StructPrune's structured option for channels)."""
    gate, up, down = _mlp_weights(block)
    spec = spec_for(setting, "mlp.down_proj", dims)
    return ftype.llama(gate, up, down, x, spec, structured=setting.startswith("channels"))


def _glu_recovery(ftype: type, block, x, setting: str, dims, iterations: int = 5):
    """SPAP's GLU recovery after removing 30% of the neurons (kept = largest FASP-like column scores)."""
    if not setting.startswith("channels"):
        raise ValueError("GLURecovery recovers a channel-pruned MLP: channels settings only")
    gate, up, down = _mlp_weights(block)
    import torch

    z = torch.nn.functional.silu(x @ gate.T) * (x @ up.T)
    score = down.abs().sum(dim=0) * z.norm(dim=0)
    keep = down.shape[1] - int(0.3 * down.shape[1])
    kept = torch.sort(torch.topk(score, keep).indices).values
    return ftype.from_block(x, gate, up, down, kept, iterations=iterations)


# Formulations stated on a whole MLP block (need the block's inputs X, not a single Gram): built from the first
# ``--mlp-tokens`` calibration tokens; timed as one target "mlp".
BLOCK_BUILDERS: dict[str, Callable] = {
    "SparseLLMSplit": _sparsellm,
    "GLURecovery": _glu_recovery,
}
# Registered formulations that are not layer problems at all.
NOT_LAYER_PROBLEMS = {"LayerAllocation": "allocates sparsity across layers; not a per-layer solve"}


def torch_solvers(only: Optional[list[str]] = None) -> list[type]:
    """Registered torch solver classes, optionally filtered by formulation type or solver class name.

    With ``only`` the solvers run in the order given there (cheap ones first keeps a deadline-limited run useful).
    """
    from prunekit.solvers.registry import registered

    out = [cls for cls in registered() if cls.backend == "torch"]
    if only:
        rank = {s.lower(): i for i, s in enumerate(only)}

        def position(c):
            return min(rank.get(c.formulation_type.__name__.lower(), len(rank)), rank.get(c.__name__.lower(), len(rank)))

        out = sorted((c for c in out if position(c) < len(rank)), key=position)
        missing = set(rank) - {c.formulation_type.__name__.lower() for c in out} - {c.__name__.lower() for c in out}
        if missing:
            raise SystemExit(f"--solvers: no registered torch solver matches {sorted(missing)}")
    return out


def build(solver_cls: type, setting: str, module: str, layer, dims, block=None, x_mlp=None,
          block_builders: Optional[dict[str, Callable]] = None) -> tuple[Any, Optional[str]]:
    """(formulation, None) or (None, reason it does not apply)."""
    ftype = solver_cls.formulation_type
    if ftype.__name__ in NOT_LAYER_PROBLEMS:
        return None, NOT_LAYER_PROBLEMS[ftype.__name__]
    try:
        block_builders = BLOCK_BUILDERS if block_builders is None else block_builders
        if ftype.__name__ in block_builders:
            if x_mlp is None:
                return None, "block-level formulation: needs --mlp-tokens > 0"
            formulation = block_builders[ftype.__name__](ftype, block, x_mlp, setting, dims)
        else:
            spec = spec_for(setting, module, dims)
            if spec is None:
                return None, "setting does not apply to this module"
            formulation = BUILDERS.get(ftype.__name__, _generic)(ftype, layer, spec)
    except Exception as exc:  # the formulation rejects this spec (e.g. a channel method given 2:4)
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
    ok, why = solver_cls().accepts(formulation)
    if not ok:
        return None, f"solver declines: {why[:160]}"
    return formulation, None


# ----------------------------------------------------------------------------------------------- run
def _entry_key(entry: dict[str, Any]) -> tuple:
    return (entry["block"], entry["solver"], entry["setting"])


def run(args, checkpoint: Callable[[dict[str, Any]], None] = lambda result: None) -> dict[str, Any]:
    """Run the benchmark; ``checkpoint(result)`` is called after every (solver, setting) entry.

    ``args.deadline_s`` > 0: no entry starts after that many seconds (the rest is listed under ``not_run``), so a
    run under a wall-clock limit ends with its results written.  ``args.resume``: a previous JSON of the same
    configuration; its entries are kept and not re-run.
    """
    import torch

    import prunekit

    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    gram_dtype = {"float64": torch.float64, "float32": torch.float32}[args.gram_dtype]
    device = args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda requested but no CUDA device is available; use --device cpu --scale 0.125.")
    if args.threads:
        torch.set_num_threads(args.threads)
    dims = llama_dims(args.scale)
    solvers = torch_solvers(args.solvers)
    settings = args.settings or list(SETTINGS)
    result: dict[str, Any] = {
        "benchmark": "gpu_scale",
        "date": utc_now(),
        "command": command_line(),
        "device": device,
        "machine": machine_info(device),
        "versions": versions(),
        "scale": args.scale,
        "full_size": args.scale == 1.0,
        "dims": dims,
        "reference_dims": LLAMA7B,
        "dtype": args.dtype,
        "gram_dtype": args.gram_dtype,
        "tokens": args.tokens,
        "seqlen": args.seqlen,
        "blocks": args.blocks,
        "solver_dtype": args.solver_dtype,
        "mlp_tokens": args.mlp_tokens,
        "solvers": [f"{c.__module__}.{c.__name__} ({c.formulation_type.__name__})" for c in solvers],
        "settings": settings,
        "glu_iterations": args.glu_iterations,
        "deadline_s": args.deadline_s,
        "calibration": [],
        "runs": [],
        "skipped": [],
        "not_run": [],
    }
    if args.resume:
        import json

        previous = json.loads(Path(args.resume).read_text())
        for key in ("device", "scale", "dtype", "gram_dtype", "tokens", "seqlen", "solver_dtype", "mlp_tokens",
                    "glu_iterations"):
            if previous.get(key) != result[key]:
                raise SystemExit(f"--resume {args.resume}: {key} differs ({previous.get(key)!r} there, "
                                 f"{result[key]!r} here); resume only a run of the same configuration.")
        result["commands"] = previous.get("commands", [previous["command"]]) + [result["command"]]
        result["date"] = previous["date"]
        result["machine_previous"] = previous.get("machine")
        result["runs"] = previous["runs"]
        result["calibration"] = previous["calibration"]
        result["skipped"] = previous.get("skipped", [])
    done = {_entry_key(e) for e in result["runs"]}
    block_builders = {**BLOCK_BUILDERS,
                      "GLURecovery": functools.partial(_glu_recovery, iterations=args.glu_iterations)}
    t_start = time.perf_counter()
    skipped: dict[tuple, list] = {}
    for b in range(args.blocks):
        todo = [(c, s) for c in solvers for s in settings if (b, c.__name__, s) not in done]
        if not todo:
            continue
        if args.deadline_s and time.perf_counter() - t_start > args.deadline_s:
            result["not_run"] += [{"block": b, "solver": c.__name__, "setting": s, "reason": "deadline"}
                                  for c, s in todo]
            continue
        block, rotary = build_block(dims, dtype, device, seed=args.seed + b)
        with PeakMemory(device) as pm:
            accs, x_mlp, t_cal = calibrate(block, rotary, dims, tokens=args.tokens, seqlen=args.seqlen,
                                           device=device, dtype=dtype, gram_dtype=gram_dtype,
                                           seed=args.seed + 1000 + b, mlp_tokens=args.mlp_tokens)
        result["calibration"] = [c for c in result["calibration"] if c["block"] != b]
        result["calibration"].append({"block": b, "time_s": round(t_cal, 3), "memory": pm.to_dict()})
        modules = dict(block.named_modules())
        layers = {}
        for name in MODULES:
            w = modules[name].weight.detach()
            layers[name] = accs[name].layer_data(w, damping=0.01, check_psd=False)
        del accs
        for solver_cls in solvers:
            for setting in settings:
                if (b, solver_cls.__name__, setting) in done:
                    continue
                if args.deadline_s and time.perf_counter() - t_start > args.deadline_s:
                    result["not_run"].append({"block": b, "solver": solver_cls.__name__, "setting": setting,
                                              "reason": "deadline"})
                    continue
                entry = {"block": b, "solver": solver_cls.__name__,
                         "formulation": solver_cls.formulation_type.__name__, "setting": setting,
                         "modules": {}, "status": "ok"}
                built = []
                block_level = solver_cls.formulation_type.__name__ in BLOCK_BUILDERS
                for name in (("mlp",) if block_level else MODULES):
                    formulation, why = build(solver_cls, setting, name, layers.get(name), dims, block, x_mlp,
                                             block_builders)
                    if formulation is None:
                        if why != "setting does not apply to this module" and b == 0:
                            skipped.setdefault((solver_cls.__name__, setting, why), []).append(name)
                        continue
                    built.append((name, formulation))
                if not built:
                    continue
                total = 0.0
                with PeakMemory(device) as pm:
                    for name, formulation in built:
                        try:
                            sync(device)
                            t0 = time.perf_counter()
                            sol = prunekit.solve(formulation, backend="torch", device=device,
                                                 dtype=args.solver_dtype)
                            sync(device)
                            dt = time.perf_counter() - t0
                        except Exception as exc:
                            entry["status"] = "error"
                            entry["modules"][name] = {"error": f"{type(exc).__name__}: {exc}"[:400],
                                                      "traceback": traceback.format_exc()[-1500:]}
                            continue
                        total += dt
                        if block_level:
                            with torch.no_grad():
                                energy = 0.5 * float((block.mlp(x_mlp.to(dtype)).double() ** 2).sum())
                            name = f"mlp ({x_mlp.shape[0]} tokens)"
                        else:
                            energy = layers[name].dense_energy()
                        entry["modules"][name] = {
                            "shape": list(formulation.layer.shape),
                            "time_s": round(dt, 4),
                            "rel_error": (float(sol.objective) / energy) if energy > 0 else None,
                            "sparsity": round(float(sol.sparsity), 4),
                        }
                        del sol
                entry["block_time_s"] = round(total, 4)
                entry["memory"] = pm.to_dict()
                result["runs"].append(entry)
                checkpoint(result)
                if args.verbose:
                    print(f"block {b} {entry['formulation']:<28} {setting:<15} {total:8.3f} s  "
                          f"peak {entry['memory']['peak_mib']:.0f} MiB  {entry['status']}", flush=True)
        if b == 0 and skipped:
            result["skipped"] = [{"solver": k[0], "setting": k[1], "reason": k[2], "modules": v}
                                 for k, v in skipped.items()]
        del layers, block, rotary, x_mlp
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    import os

    result["load_avg_1m_end"] = round(os.getloadavg()[0], 2)
    result["finished"] = utc_now()
    return result


# ----------------------------------------------------------------------------------------------- output
def summarize(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (formulation, setting): mean/max block time over blocks, max peak memory."""
    rows: dict[tuple, dict[str, Any]] = {}
    for r in result["runs"]:
        key = (r["formulation"], r["solver"], r["setting"])
        row = rows.setdefault(key, {"formulation": r["formulation"], "solver": r["solver"],
                                    "setting": r["setting"], "times": [], "peaks": [], "errors": [],
                                    "rel": [], "modules": len(r["modules"]), "status": "ok"})
        row["times"].append(r["block_time_s"])
        row["peaks"].append(r["memory"]["peak_mib"])
        row["rel"] += [m["rel_error"] for m in r["modules"].values() if m.get("rel_error") is not None]
        if r["status"] != "ok":
            row["status"] = "error"
            row["errors"] += [f"{k}: {m['error']}" for k, m in r["modules"].items() if "error" in m]
    out = []
    for row in rows.values():
        out.append({**row, "mean_block_s": sum(row["times"]) / len(row["times"]), "max_block_s": max(row["times"]),
                    "peak_mib": max(row["peaks"]),
                    "mean_rel_error": (sum(row["rel"]) / len(row["rel"])) if row["rel"] else None})
    return out


def to_markdown(result: dict[str, Any]) -> str:
    d = result["dims"]
    dev = result["device"]
    mem_label = "peak device memory (MiB, max allocated)" if dev.startswith("cuda") else "peak RSS (MiB, process)"
    size = ("full LLaMA-7B block size" if result["full_size"] else
            f"REDUCED SIZE (--scale {result['scale']}): NOT the LLaMA-7B measurement")
    lines = [
        "# GPU scale benchmark: pruning LLaMA-7B-shaped random blocks with every torch solver",
        "",
        f"* **Device:** `{dev}`, {machine_line(result['machine'])}.",
        f"* **Size:** {size}. Block dims: hidden {d['hidden']}, MLP {d['mlp']}, {d['heads']} heads x "
        f"{d['head_dim']}, {d['kv_heads']} KV heads (reference: hidden 4096, MLP 11008, 32 heads, 8 KV heads).",
        f"* **Calibration:** {result['tokens']} random tokens per block (chunks of {result['seqlen']}), block dtype "
        f"{result['dtype']}, Gram accumulation {result['gram_dtype']}; solver dtype {result['solver_dtype']}.",
        f"* **Blocks:** {result['blocks']} (random weights N(0, 0.02), a fresh seed per block).",
        f"* **Machine load:** 1-min load average {result['machine'].get('load_avg_1m')} at start, "
        f"{result.get('load_avg_1m_end')} at the end ({result['machine'].get('cpu_affinity')} cores; other processes "
        "share the machine, so CPU times include their contention).",
        f"* **Date:** {result['date']} to {result.get('finished')}; versions: "
        + ", ".join(f"{k} {v}" for k, v in result["versions"].items()) + ".",
        (f"* **Command:** `{result['command']}`" if not result.get("commands") else
         "* **Commands** (one run resumed with `--resume`; entries of earlier calls kept): "
         + "; ".join(f"`{c}`" for c in result["commands"])),
        "",
    ]
    if not dev.startswith("cuda"):
        lines += ["> Not run on a GPU in this work: no GPU was lent to this task. The command for a lent GPU is",
                  "> `python benchmarks/gpu_scale.py --device cuda --blocks 4 --scale 1.0 --tokens 262144 "
                  "--dtype bf16 --json`.", ""]
    lines += [
        "Time = the sum over the block's modules of `prunekit.solve(...)` wall time (setting `channels30` solves "
        "only o_proj (whole heads) and down_proj; block-level formulations (SparseLLMSplit, GLURecovery) solve the "
        f"whole MLP on the first {result['mlp_tokens']} calibration tokens; GLURecovery runs "
        f"{result.get('glu_iterations', 5)} alternation(s)); memory = peak over the block's solves, "
        f"including the block weights and the Gram matrices held for all 7 modules. {mem_label}. Relative error = "
        "objective / dense output energy of each module (per-module rows: on the block's Gram; block-level rows: in "
        f"sample, on the same {result['mlp_tokens']} tokens they were fitted to -- where the MLP keeps more neurons "
        "than there are tokens it can interpolate them, so those errors are not comparable with the others).",
        "",
    ]
    rows = []
    for s in sorted(summarize(result), key=lambda r: (r["setting"], r["formulation"])):
        rows.append([s["formulation"], s["solver"], s["setting"], len(s["times"]), s["modules"],
                     round(s["mean_block_s"], 3),
                     round(s["max_block_s"], 3), round(s["peak_mib"], 1),
                     None if s["mean_rel_error"] is None else f"{s['mean_rel_error']:.3e}",
                     s["status"] if not s["errors"] else "error: " + "; ".join(s["errors"])[:200]])
    lines.append(md_table(["formulation", "solver", "setting", "blocks", "modules/block", "mean block s", "max block s",
                           "peak MiB", "mean rel. error", "status"], rows))
    lines += ["", "Calibration per block: " + ", ".join(
        f"block {c['block']}: {c['time_s']} s, peak {c['memory']['peak_mib']} MiB" for c in result["calibration"])]
    if result["skipped"]:
        lines += ["", "Not applicable (formulation or solver declined the setting):", ""]
        for s in result["skipped"]:
            mods = "all modules" if len(s["modules"]) == len(MODULES) else ", ".join(s["modules"])
            lines.append(f"* {s['solver']} / {s['setting']} ({mods}): {s['reason']}")
    if result.get("not_run"):
        by_entry: dict[tuple, list] = {}
        for n in result["not_run"]:
            by_entry.setdefault((n["solver"], n["setting"], n["reason"]), []).append(n["block"])
        lines += ["", f"Not run (the `--deadline-s {result.get('deadline_s')}` wall-clock budget was spent first; "
                  "settings a solver would decline are listed too):", ""]
        lines += [f"* {k[0]} / {k[1]}: blocks {', '.join(map(str, v))} ({k[2]})" for k, v in by_entry.items()]
    if not result["runs"]:
        lines += ["", "No torch solver was registered or applicable; nothing was timed."]
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda | cuda:N | cpu (default cuda)")
    p.add_argument("--blocks", type=int, default=2, help="number of decoder blocks (default 2)")
    p.add_argument("--scale", type=float, default=1.0, help="multiply every dimension (0.125 for CPU checks)")
    p.add_argument("--tokens", type=int, default=16 * 2048, help="calibration tokens per block (default 32768)")
    p.add_argument("--seqlen", type=int, default=2048, help="tokens per calibration chunk (default 2048)")
    p.add_argument("--mlp-tokens", type=int, default=4096,
                   help="tokens of MLP input kept for block-level formulations (SparseLLMSplit, GLURecovery)")
    p.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16", help="block weights and activations")
    p.add_argument("--gram-dtype", choices=("float64", "float32"), default="float32")
    p.add_argument("--solver-dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--solvers", nargs="*", help="formulation types or solver classes to run (default: all torch)")
    p.add_argument("--settings", nargs="*", choices=SETTINGS, help=f"default: all of {SETTINGS}")
    p.add_argument("--glu-iterations", type=int, default=5, help="GLURecovery alternations (default 5)")
    p.add_argument("--deadline-s", type=float, default=0.0,
                   help="start no new entry after this many seconds; the rest is reported as not run (0 = none)")
    p.add_argument("--resume", help="JSON of an earlier run of the same configuration: keep its entries, run the rest")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = leave as is)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(REPO / "benchmarks" / "GPU_SCALE.md"), help="markdown output")
    p.add_argument("--json", action="store_true", help="also write the JSON next to --out (.json)")
    p.add_argument("--report-only", metavar="JSON", help="rebuild the markdown (--out) from a result JSON; run nothing")
    p.add_argument("--quiet", dest="verbose", action="store_false")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.report_only:
        import json

        out.write_text(to_markdown(json.loads(Path(args.report_only).read_text())))
        return 0

    def write(result: dict[str, Any]) -> None:  # after every entry, so a killed run keeps what it measured
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(to_markdown(result))
        tmp.replace(out)
        if args.json:
            write_json(out.with_suffix(".json"), result)

    result = run(args, checkpoint=write)
    write(result)
    if args.verbose:
        print(f"wrote {out}" + (f" and {out.with_suffix('.json')}" if args.json else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
