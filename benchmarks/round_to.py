"""What rounding kept channel widths to kernel-friendly multiples costs: perplexity and parameters per ``round_to``.

Standard protocol (methods.md §2, benchmarks/RESULTS.md): smollm2-135m, FASP 30% of the MLP channels, 32x512
calibration windows from wiki.valid.raw (seed 0), perplexity on the first 64 windows of 512 tokens of wiki.test.raw.
Kept widths are rounded **up** to a multiple of ``round_to`` (1536 x 0.7 = 1075.2 -> 1076 at round_to=1, 1088 at 64,
1152 at 128), so a larger multiple keeps more channels.  Writes benchmarks/ROUND_TO.md and .json.

    python benchmarks/round_to.py [--values 1 64 128] [--method fasp] [--sparsity 0.3]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv=None) -> int:
    import copy

    import torch

    import prunekit
    from prunekit.data import calibration_windows, evaluation_tokens
    from prunekit.evaluate import perplexity
    from prunekit.models.sources import load_model

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--values", type=int, nargs="+", default=[1, 64, 128])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--method", default="fasp")
    p.add_argument("--sparsity", type=float, default=0.3)
    p.add_argument("--data-dir", default=str(HERE.parent.parent / "shared" / "data"))
    p.add_argument("--out", default=str(HERE / "ROUND_TO"))
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    dense, tokenizer = load_model(args.model)
    calib = calibration_windows(tokenizer, "wikitext2", 32, 512, 0, data_dir=args.data_dir)
    test = evaluation_tokens(tokenizer, "wikitext2", args.data_dir)
    params_before = sum(p.numel() for p in dense.parameters())
    rows = []
    for value in args.values:
        model = copy.deepcopy(dense)
        recipe = prunekit.Recipe(method=args.method, structure="channels", sparsity=args.sparsity, round_to=value,
                                 allocation="uniform")
        result = prunekit.prune(model, recipe, calib, progress=False)
        ppl = perplexity(model, test, 512, windows=64)
        widths = sorted({r.kept_units for r in result.report.layers if r.kept_units is not None})
        rows.append({"round_to": value, "kept_widths": widths, "params_after": result.report.params_after,
                     "params_before": params_before, "ppl_after": ppl["ppl"], "prune_s": result.report.time_prune_s})
        print(json.dumps(rows[-1]), flush=True)
        del model
    Path(args.out + ".json").write_text(json.dumps(rows, indent=2))
    lines = ["# Kept-width rounding (`round_to`): perplexity and parameters", "",
             f"Command: `python benchmarks/round_to.py {' '.join(argv or sys.argv[1:])}`".rstrip(), "",
             f"{args.model}, {args.method} {args.sparsity:.0%} MLP channels, standard protocol (32x512 calibration, "
             f"64x512 evaluation windows).", "",
             "| round_to | kept MLP width | parameters after | ppl after | prune s |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['round_to']} | {', '.join(map(str, r['kept_widths']))} | {r['params_after']:,} | "
                     f"{r['ppl_after']:.2f} | {r['prune_s']:.1f} |")
    lines.append(f"\nDense: {rows[0]['params_before']:,} parameters (ppl 29.93 on this protocol, benchmarks/RESULTS.md).\n")
    Path(args.out + ".md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
