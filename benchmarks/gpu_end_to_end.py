"""End-to-end check on a lent GPU: a random-init LLaMA-3-8B-shaped bf16 checkpoint pruned disk to disk.

Writes the checkpoint (safetensors, bf16; hidden 4096, MLP 14336, 32 heads / 8 KV heads, vocab 128256; speed and memory
do not depend on the weights' values), then prunes it with ``prunekit.models.pipeline.prune_checkpoint`` for each of
sparsegpt 50%, mrp 2:4 and fasp 30% channels, each in a fresh process, and reports wall time, peak device memory
(``torch.cuda.max_memory_allocated``), peak host RSS (``ru_maxrss`` of that process) and the device name.  Sized for a
15-minute lease with ``--layers 4 --nsamples 32 --seqlen 512`` (the defaults on CUDA).

Without a GPU (``--device cpu``) it runs at a reduced size (``--scale``: widths divided by 8 by default) and says so.

    python benchmarks/gpu_end_to_end.py --device cuda                   # on the lent GPU
    python benchmarks/gpu_end_to_end.py --device cpu                    # reduced size on CPU
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
RUNS = (("sparsegpt", "unstructured", 0.5), ("mrp", "2:4", None), ("fasp", "channels", 0.3))
CHILD = """
import json, sys, time, torch
from prunekit.models.pipeline import prune_checkpoint
src, out, method, structure, sparsity, device, nsamples, seqlen, calib = sys.argv[1:10]
recipe = dict(method=method, structure=structure, calibration=dict(source=calib, nsamples=int(nsamples),
              seqlen=int(seqlen)))
if sparsity != "None":
    recipe["sparsity"] = float(sparsity)
t0 = time.perf_counter()
report = prune_checkpoint(src, recipe, out, device=device, progress=False, echo=None)
peak = torch.cuda.max_memory_allocated() if device.startswith("cuda") else 0
print("RESULT " + json.dumps({"wall_s": time.perf_counter() - t0, "prune_s": report.time_prune_s,
                              "peak_device_bytes": peak, "params_before": report.params_before,
                              "params_after": report.params_after, "format": report.output_format,
                              "device_name": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"}))
"""


def main(argv=None) -> int:
    sys.path.insert(0, str(HERE))
    from pipeline_memory import write_checkpoint

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--scale", type=int, default=None, help="divide widths by this (default 1 on cuda, 8 on cpu)")
    p.add_argument("--nsamples", type=int, default=None)
    p.add_argument("--seqlen", type=int, default=None)
    p.add_argument("--out", default=str(HERE / "GPU_END_TO_END"))
    args = p.parse_args(argv)
    cuda = args.device.startswith("cuda")
    scale = args.scale or (1 if cuda else 8)
    nsamples = args.nsamples or (32 if cuda else 8)
    seqlen = args.seqlen or (512 if cuda else 128)
    shape = argparse.Namespace(hidden=4096 // scale, intermediate=14336 // scale, heads=32 // min(scale, 4),
                               kv_heads=8 // min(scale, 4), vocab=128256 // scale)
    work = Path(tempfile.mkdtemp(prefix="prunekit-e2e-"))
    rows = []
    try:
        src = work / "llama3-8b-shaped"
        src.mkdir()
        ckpt = write_checkpoint(src, args.layers, shape)
        calib = work / "calib.txt"
        calib.write_text("The quick brown fox jumps over the lazy dog. " * 2000)
        for method, structure, sparsity in RUNS:
            out = work / f"out-{method}"
            cmd = [sys.executable, "-c", CHILD, str(src), str(out), method, structure, str(sparsity), args.device,
                   str(nsamples), str(seqlen), str(calib)]
            start = time.perf_counter()
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            _, status, usage = os.wait4(proc.pid, 0)
            stdout, stderr = proc.stdout.read(), proc.stderr.read()
            row = {"method": method, "structure": structure, "sparsity": sparsity,
                   "exit": os.waitstatus_to_exitcode(status), "process_wall_s": time.perf_counter() - start,
                   "peak_rss_bytes": usage.ru_maxrss * 1024}
            result = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
            row.update(json.loads(result[-1][7:]) if result else {"error": stderr[-2000:]})
            rows.append(row)
            print(json.dumps(row), flush=True)
            shutil.rmtree(out, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    gib = 1 << 30
    summary = {"device": args.device, "reduced": not cuda or scale != 1, "scale": scale, "layers": args.layers,
               "shape": vars(shape), "checkpoint_bytes": ckpt, "calibration": [nsamples, seqlen], "rows": rows,
               "machine": f"{platform.machine()}, {os.cpu_count()} cores"}
    Path(args.out + ".json").write_text(json.dumps(summary, indent=2))
    lines = ["# End to end on a LLaMA-3-8B-shaped bf16 checkpoint", "",
             f"Command: `python benchmarks/gpu_end_to_end.py {' '.join(argv or sys.argv[1:])}`".rstrip(), "",
             (f"Device {rows[0].get('device_name', args.device) if rows else args.device}; " +
              ("full LLaMA-3-8B widths" if scale == 1 else f"**reduced size** (widths / {scale}; no GPU lent)") +
              f"; {args.layers} blocks, checkpoint {ckpt / gib:.2f} GiB; calibration {nsamples}x{seqlen}."), "",
             "| method | structure | exit | prune s | process wall s | peak device GiB | peak host RSS GiB | format |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['structure']} | {r['exit']} | {r.get('prune_s', float('nan')):.1f} | "
                     f"{r['process_wall_s']:.1f} | {r.get('peak_device_bytes', 0) / gib:.2f} | "
                     f"{r['peak_rss_bytes'] / gib:.2f} | {r.get('format', '-')} |")
    Path(args.out + ".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if all(r["exit"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
