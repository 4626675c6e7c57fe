"""Peak host memory of `prunekit prune` vs model depth, and output size vs input size (issue: streaming pipeline).

Writes random-init LLaMA-shaped bf16 safetensors checkpoints of the same width at two depths (default 4 and 16
blocks; speed and memory do not depend on the weights' values), runs ``python -m prunekit prune`` on each in a
fresh process and reads that process's peak RSS from ``os.wait4`` (ru_maxrss).  Targets:

* peak RSS grows by at most a quarter of the checkpoint's extra bytes from the shallow to the deep model;
* the output folder's safetensors are at most 1.1x the input checkpoint's bytes.

Usage (writes benchmarks/PIPELINE_MEMORY.md and .json)::

    python benchmarks/pipeline_memory.py                        # TinyLlama-1.1B block shape, 4 vs 16 blocks
    python benchmarks/pipeline_memory.py --hidden 4096 --intermediate 14336 --heads 32 --kv-heads 8  # LLaMA-3-8B
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def write_checkpoint(folder: Path, layers: int, args) -> int:
    """A random LLaMA-shaped bf16 checkpoint (+ a byte-level tokenizer); returns its safetensors bytes."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    sys.path.insert(0, str(HERE.parent / "tests" / "unit"))
    from _hf_tiny import tiny_tokenizer

    tok = tiny_tokenizer()
    config = LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
                         num_hidden_layers=layers, num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
                         max_position_embeddings=4096, tie_word_embeddings=False, bos_token_id=0, eos_token_id=1)
    torch.manual_seed(0)
    with torch.device("cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(folder, max_shard_size="2GB")
    tok.save_pretrained(folder)
    del model
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


def run_prune(src: Path, out: Path, args) -> dict:
    calib = src.parent / "calib.txt"
    calib.write_text(("The quick brown fox jumps over the lazy dog. " * 400))
    cmd = [sys.executable, "-m", "prunekit", "prune", "--model", str(src), "--method", args.method,
           "--structure", args.structure, "--calib", str(calib), "--nsamples", str(args.nsamples), "--seqlen",
           str(args.seqlen), "--out", str(out), "--no-progress"]
    if args.structure != "2:4":
        cmd += ["--sparsity", str(args.sparsity)]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    stdout, stderr = proc.stdout.read(), proc.stderr.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"prune failed ({' '.join(cmd)}):\n{stdout}\n{stderr}")
    return {"peak_rss_bytes": usage.ru_maxrss * 1024, "wall_s": wall,
            "output_bytes": sum(p.stat().st_size for p in out.glob("*.safetensors"))}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--depths", type=int, nargs=2, default=(4, 16))
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--intermediate", type=int, default=5632)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--method", default="wanda")
    p.add_argument("--structure", default="unstructured")
    p.add_argument("--sparsity", type=float, default=0.5)
    p.add_argument("--nsamples", type=int, default=8)
    p.add_argument("--seqlen", type=int, default=128)
    p.add_argument("--workdir", default=None, help="where checkpoints are written (default: a temp folder)")
    p.add_argument("--out", default=str(HERE / "PIPELINE_MEMORY"))
    args = p.parse_args(argv)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="prunekit-mem-"))
    rows = []
    try:
        for depth in args.depths:
            src = work / f"llama-{depth}"
            if src.exists():
                shutil.rmtree(src)
            src.mkdir(parents=True)
            ckpt = write_checkpoint(src, depth, args)
            out = work / f"out-{depth}"
            shutil.rmtree(out, ignore_errors=True)
            result = run_prune(src, out, args)
            rows.append({"depth": depth, "checkpoint_bytes": ckpt, **result})
            print(json.dumps(rows[-1]), flush=True)
            shutil.rmtree(src)
            shutil.rmtree(out)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    a, b = rows
    extra = b["checkpoint_bytes"] - a["checkpoint_bytes"]
    growth = b["peak_rss_bytes"] - a["peak_rss_bytes"]
    summary = {
        "shape": {k: getattr(args, k) for k in ("hidden", "intermediate", "heads", "kv_heads", "vocab")},
        "method": args.method, "structure": args.structure, "calibration": [args.nsamples, args.seqlen],
        "rows": rows, "rss_growth_bytes": growth, "checkpoint_extra_bytes": extra,
        "rss_growth_over_extra": growth / extra, "target_rss_growth_over_extra": 0.25,
        "output_over_input": [r["output_bytes"] / r["checkpoint_bytes"] for r in rows], "target_output_over_input": 1.1,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores", "python": platform.python_version(),
    }
    Path(args.out + ".json").write_text(json.dumps(summary, indent=2))
    gib = 1 << 30
    lines = [
        "# Pipeline memory: peak host RSS of `prunekit prune` vs depth", "",
        f"Command: `python benchmarks/pipeline_memory.py {' '.join(argv or sys.argv[1:])}`".rstrip(), "",
        f"LLaMA-shaped bf16, hidden {args.hidden}, MLP {args.intermediate}, heads {args.heads}/{args.kv_heads}, "
        f"vocab {args.vocab}; `{args.method}` {args.structure}; calibration {args.nsamples}x{args.seqlen}.", "",
        "| blocks | checkpoint GiB | peak RSS GiB | output / input | wall s |", "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['depth']} | {r['checkpoint_bytes'] / gib:.3f} | {r['peak_rss_bytes'] / gib:.3f} | "
                     f"{r['output_bytes'] / r['checkpoint_bytes']:.4f} | {r['wall_s']:.1f} |")
    ok_rss = growth <= 0.25 * extra
    ok_out = all(x <= 1.1 for x in summary["output_over_input"])
    lines += ["", f"RSS growth {growth / gib:.3f} GiB for {extra / gib:.3f} GiB more checkpoint: ratio "
              f"{growth / extra:.3f} (target <= 0.25): **{'MET' if ok_rss else 'MISSED'}**.",
              f"Output / input bytes: {', '.join(f'{x:.4f}' for x in summary['output_over_input'])} (target <= 1.1): "
              f"**{'MET' if ok_out else 'MISSED'}**.", ""]
    Path(args.out + ".md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0 if ok_rss and ok_out else 1


if __name__ == "__main__":
    sys.exit(main())
