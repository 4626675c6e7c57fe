"""Disk to disk: prune a checkpoint into an output folder, block by block, resumable (what ``prunekit prune`` runs).

:func:`prune_checkpoint` is the whole walk, each step one call with a typed value:

1. ``Recipe.coerce`` -- the typed recipe (method = a formulation class, structure parsed once);
2. ``checkpoint_folder`` -- a local safetensors folder for the model (hub id, folder, GGUF, built-in);
3. ``OutputFolder.open`` -- every output check (path, ownership, lock, free space) *before* anything is loaded;
4. ``CheckpointBlocks`` -- the model opened on the meta device, its tensors checked against its config;
5. calibration windows; ``allocate`` when the recipe allocates non-uniformly (persisted for ``resume``);
6. ``runner.run`` into a ``CheckpointSink``: each block is read from the input shards, pruned, written to its own
   output shard in the checkpoint's dtype and committed as a resume point;
7. ``finalize`` -- the tensors outside the blocks, the stock layout (``export.stock_layout``: config flags, exact
   padding), config / tokenizer files, the shard index;
8. optional perplexity before (input) and after (the written output, loaded by stock ``from_pretrained``);
9. ``report.json`` + ``plot.png``, then ``OutputFolder.finish``: the one atomic rename.

Host memory stays O(embeddings + one block) except for the optional perplexity, which loads whole models.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch

from .allocation_default import resolve_allocation
from .block_refit import resolve_block_refit
from .recipe import Recipe
from .records import RunReport, versions

log = logging.getLogger("prunekit.pipeline")

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json",
                   "generation_config.json")
REST_SHARD = "model-rest.safetensors"


@dataclass(frozen=True)
class EvalSettings:
    """What to evaluate before (the input) and after (the written output); checked on construction.

    Perplexity (methods.md §2, when ``perplexity``): ``data`` ("wikitext2" test or a text file), ``seqlen`` (None =
    the calibration seqlen), the first ``windows`` windows (None = all).  Zero-shot (when ``tasks``): lm-eval task
    names or YAML files run through :mod:`prunekit.zero_shot`, with ``include_path`` (a folder of task YAMLs),
    ``limit`` (documents per task), ``num_fewshot`` and ``batch_size``.  ``progress``: bars with ETA on stderr.
    """

    data: str = "wikitext2"
    seqlen: Optional[int] = None
    windows: Optional[int] = None
    tasks: tuple[str, ...] = ()
    include_path: Optional[str] = None
    limit: Optional[Union[int, float]] = None
    num_fewshot: int = 0
    batch_size: int = 1
    perplexity: bool = True
    progress: bool = True

    def __post_init__(self):
        from ..evaluate import check_window_args

        check_window_args(self.seqlen if self.seqlen is not None else 2, self.windows, self.batch_size)
        if self.tasks:
            object.__setattr__(self, "tasks", self.zero_shot().tasks)
        elif self.include_path is not None or self.limit is not None:
            from ..errors import DataError

            raise DataError("include_path / limit apply to zero-shot tasks, and no task is given. Fix: set tasks "
                            "(e.g. tasks=('hellaswag',)) or drop them.")

    def zero_shot(self):
        """The :class:`prunekit.zero_shot.ZeroShotSettings` of ``tasks`` (validated), or None without tasks."""
        if not self.tasks:
            return None
        from ..zero_shot import ZeroShotSettings

        return ZeroShotSettings(tasks=self.tasks, include_path=self.include_path, limit=self.limit,
                                num_fewshot=self.num_fewshot, batch_size=self.batch_size)

    def prepare(self) -> None:
        """Check what can fail before pruning starts: lm-eval installed, task names known, task datasets
        loadable (downloaded and cached now).  A no-op without tasks."""
        settings = self.zero_shot()
        if settings is not None:
            from ..zero_shot import check_tasks

            check_tasks(settings)


def fingerprint(recipe: Recipe, model: str, folder: Path, reader) -> dict[str, Any]:
    """What must not change between a killed run and its ``--resume``: recipe, model identity and tensor layout."""
    names = hashlib.sha256("\n".join(f"{n}:{reader.shape(n)}" for n in reader.names).encode()).hexdigest()[:16]
    return {"recipe": recipe.to_dict(), "model": {"name": str(model), "folder": str(folder.resolve()),
                                                  "bytes": reader.total_bytes, "tensors": names}}


def prune_checkpoint(model: Union[str, Path], recipe: Union[Recipe, Mapping[str, Any], str], out: Union[str, Path], *,
                     overwrite: bool = False, resume: bool = False, device="cpu", progress: bool = True,
                     data_dir=None, cache_dir=None, evaluate: Optional[EvalSettings] = None,
                     on_block=None, echo=print) -> RunReport:
    """Prune checkpoint ``model`` with ``recipe`` into folder ``out`` (see the module docstring).

    Parameters
    ----------
    model : hub id, local HF folder, ``.gguf`` file or built-in name (``smollm2-135m``).
    overwrite : replace an earlier prunekit output (never a folder prunekit did not write) or discard an
        unfinished run at ``out``.
    resume : continue an unfinished run with the same settings from its last committed block.
    evaluate : perplexity before and after (loads whole models; everything else streams).
    echo : where progress lines go (``print``), or None.

    Under a torch.distributed launcher (``torchrun --nproc_per_node N -m prunekit prune ...``, multi-node included;
    ``prunekit.distributed``) every rank runs this function: the calibration windows are split across ranks, the
    statistics summed, the layer problems of each block solved in parallel; rank 0 alone reads the calibration
    source, opens ``out``, writes the output and evaluates.  The model must be readable on every node.  Every rank
    returns the report (on ranks other than 0 without the evaluation, which rank 0 runs after the others leave);
    an error on any rank is raised on every rank.
    """
    from ..distributed import session
    from ..solvers.options import parse_device

    device = parse_device(device)
    with session(device) as (ctx, device):
        return _prune_checkpoint(ctx, model, recipe, out, overwrite=overwrite, resume=resume, device=device,
                                 progress=progress and ctx.is_main, data_dir=data_dir, cache_dir=cache_dir,
                                 evaluate=evaluate, on_block=on_block, echo=echo if ctx.is_main else None)


def _prune_checkpoint(ctx, model, recipe, out, *, overwrite, resume, device, progress, data_dir, cache_dir, evaluate,
                      on_block, echo) -> RunReport:
    from .checkpoint import CheckpointReader
    from .output import OutputFolder
    from .sinks import CheckpointSink, RankZeroSink
    from .sources import checkpoint_folder
    from .stores import CheckpointBlocks

    from ..calibration_sources import check_source
    from .recipe import check_recipe_fits

    start = time.perf_counter()
    say = echo or (lambda *a, **k: None)

    def checked_recipe() -> Recipe:
        typed = Recipe.coerce(recipe)
        if ctx.is_main:  # rank 0 alone evaluates and reads the calibration source
            if evaluate is not None:
                evaluate.prepare()
            check_source(typed.calibration.source, data_dir)
        return typed

    recipe = ctx.checked(checked_recipe)
    folder = ctx.node_first(lambda: checkpoint_folder(model, cache_dir=cache_dir))

    def checked_reader() -> CheckpointReader:
        _refuse_rebuild_format(folder)
        check_recipe_fits(recipe, _read_config(folder))
        return CheckpointReader(folder)

    reader = ctx.checked(checked_reader)

    def new_sink() -> CheckpointSink:
        output = OutputFolder.open(out, overwrite=overwrite, resume=resume,
                                   fingerprint=fingerprint(recipe, str(model), folder, reader),
                                   needed_bytes=int(reader.total_bytes * 1.1) + (64 << 20), protected=[folder])
        try:
            return CheckpointSink(output)
        except BaseException:
            _abandon(output)
            raise

    sink = RankZeroSink.open(ctx, new_sink) if ctx.active else new_sink()
    output = sink.output  # None on ranks other than 0
    try:
        for note in output.notes if output is not None else ():
            say(f"prunekit: {note}")
        store = ctx.checked(CheckpointBlocks, folder)
        recipe = resolve_block_refit(resolve_allocation(recipe))  # "auto" -> the setting's rules, recorded
        kept = {}

        def read_calibration():  # rank 0: the tokenizer and the windows (they reach every rank)
            kept["tokenizer"] = tokenizer = _tokenizer(folder)
            if sink.resume_from:
                say(f"resuming {output.out}: {sink.resume_from} of {len(store)} blocks already committed", flush=True)
            return _calibration(recipe, tokenizer, folder, data_dir)

        tokens = ctx.from_main(read_calibration)
        ratios = _ratios(ctx, store, recipe, tokens, sink, device=device, progress=progress)
        t0 = time.perf_counter()
        from .runner import run

        plan = run(store, recipe, tokens, sink, device=device, progress=progress, ratios=ratios, on_block=on_block)
        prune_s = time.perf_counter() - t0

        def conclude() -> RunReport:  # rank 0: the model files; the report reaches every rank
            kept["layout"] = layout = finalize(store, sink, output, folder)
            outside = _nonzero_tensors(store.reader, store.outside_names())
            blocks_before, blocks_after = sink.nonzero_parameters()
            return RunReport(
                recipe=recipe.to_dict(), model=str(model), family=store.adapter.name, mode=recipe.mode,
                device=str(device), calibration_shape=tuple(tokens.shape),
                params_before=_numel(reader, reader.names), params_after=_numel_written(output),
                nonzero_params_before=blocks_before + outside, nonzero_params_after=blocks_after + outside,
                time_prune_s=prune_s, resumed_from_block=sink.resume_from, output_format=layout.format,
                output_dtype=str(store.dtype).replace("torch.", ""), layers=list(plan.records), refits=list(plan.refits),
                notes=list(layout.notes), versions=versions())

        report = ctx.from_main(conclude)
        if output is None:  # not rank 0: done (rank 0 evaluates and finishes the output on its own)
            return report
        layout, tokenizer = kept["layout"], kept["tokenizer"]
        if evaluate is not None:
            _perplexities(report, evaluate, folder, output.partial, tokenizer, recipe, data_dir, device, say)
        report.time_total_s = time.perf_counter() - start
        output.write_json("report.json", report.to_dict())
        plan.save(output.path("plan"))
        _plot(report, output.path("plot.png"), f"{model}: {recipe.method.name} {recipe.structure} {recipe.sparsity}")
        from .saving import _infer_sparsity_kind, output_marker

        output.finish(output_marker(layout, _infer_sparsity_kind(plan), method=recipe.method.name,
                                    structure=str(recipe.structure)))
        return report
    except BaseException:
        if output is not None:
            _abandon(output, close=False)
        raise
    finally:
        if output is not None:
            output.close()


def _abandon(output, close: bool = True) -> None:
    """After an error: discard a partial run with nothing committed (nothing worth resuming is kept)."""
    try:
        if output.state == "open" and not output.read_state().get("blocks"):
            output.discard()
    finally:
        if close:
            output.close()


def _read_config(folder: Path) -> dict:
    import json

    try:
        return json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # CheckpointBlocks reports a missing or damaged config with its own error


def _refuse_rebuild_format(folder: Path) -> None:
    import json

    from ..errors import ModelError
    from .saving import REBUILD_MODEL_TYPE

    config = folder / "config.json"
    if config.is_file() and json.loads(config.read_text()).get("model_type") == REBUILD_MODEL_TYPE:
        raise ModelError(f"{folder} is in prunekit's rebuild format (a bias no stock config can hold), which cannot be "
                         f"streamed. Fix: load it with prunekit.load_pruned(path) and prune it in Python with "
                         f"prunekit.prune(model, recipe, calibration).")


def _tokenizer(folder: Path):
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError):
        return None


def _calibration(recipe: Recipe, tokenizer, folder: Path, data_dir):
    """The windows of the recipe's calibration source (a string: "wikitext2", "c4", "hf:...", a file, "self"): a
    LongTensor (n, L), or a :class:`~prunekit.calibration_set.CalibrationSet` when rows are padded (an input_ids
    column of rows of different lengths); "self" loads the whole model once (small models only)."""
    from ..calibration_sources import calibration_set
    from ..errors import DataError

    c = recipe.calibration
    if c.source == "self":
        from transformers import AutoModelForCausalLM

        whole = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
        try:
            return calibration_set("self", tokenizer, c, model=whole).input_ids
        finally:
            del whole

    def no_tokenizer(text):  # called only when the source is text (an input_ids source needs no tokenizer)
        raise DataError(f"no tokenizer in {folder}, so calibration text cannot be tokenized. Fix: save the "
                        f"tokenizer next to the model.")

    calib = calibration_set(c.source, tokenizer if tokenizer is not None else no_tokenizer, c, data_dir=data_dir)
    return calib if calib.padded else calib.input_ids  # string sources give unpadded windows unless input_ids rows


def _ratios(ctx, store, recipe: Recipe, tokens, sink, *, device, progress) -> Optional[dict[str, float]]:
    if recipe.allocation == "uniform":
        return None
    if "ratios" in sink.extra:
        return dict(sink.extra["ratios"])
    from .allocate import allocate

    ratios = allocate(store, recipe, tokens, device=device, progress=progress)
    ratios = ctx.broadcast(ratios, src=0)  # every rank prunes with rank 0's ratios
    sink.save_extra(ratios=ratios)
    return ratios


def finalize(store, sink, output, source: Path):
    """Write the tensors outside the blocks, apply the stock layout to every shard it affects, and write
    config.json, the tokenizer files and the shard index into the partial output."""
    from safetensors.torch import load_file

    from .checkpoint import ShardWriter, release_
    from .export import stock_layout
    from .sinks import block_shard
    from .surgery import fix_config_

    fix_config_(store.model, store.adapter)
    layout = stock_layout(store.model)
    rest = store.reader.load(store.outside_names())
    writer = sink.writer
    writer.write(REST_SHARD, layout.transform(rest))
    del rest
    for index in range(len(store)):
        name = block_shard(index)
        if any(layout.affects(k) for k in _shard_names(output.path(name))):
            writer.write(name, layout.transform(load_file(str(output.path(name)))))
    import json

    from .saving import output_config

    base = json.loads((source / "config.json").read_text())
    config = output_config(store.model, layout, base)
    config["torch_dtype"] = config["dtype"] = str(store.dtype).replace("torch.", "")
    output.write_json("config.json", config)
    for fname in TOKENIZER_FILES:
        if (source / fname).is_file():
            output.write_file(fname, (source / fname).read_bytes())
    ShardWriter(output.partial).finalize()
    release_(store.model)
    return layout


def _shard_names(path: Path) -> list[str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        return list(fh.keys())


def _numel(reader, names) -> int:
    total = 0
    for n in names:
        size = 1
        for d in reader.shape(n):
            size *= d
        total += size
    return total


def _nonzero_tensors(reader, names) -> int:
    """Nonzero entries of the checkpoint tensors ``names`` (read one at a time)."""
    return sum(int(torch.count_nonzero(reader.load([n])[n])) for n in names)


def _numel_written(output) -> int:
    from .checkpoint import CheckpointReader

    reader = CheckpointReader(output.partial)
    return _numel(reader, [n for n in reader.names if not n.endswith(("in_index", "out_index"))])


def _perplexities(report: RunReport, settings: EvalSettings, source: Path, written: Path, tokenizer, recipe,
                  data_dir, device, say) -> None:
    """Evaluate the input (``source``) and the written output: perplexity into ``report.ppl_before/after`` when
    ``settings.perplexity``, zero-shot tasks into ``report.zero_shot_before/after`` when ``settings.tasks``; each
    model is loaded once (whole, float32) for both."""
    from .saving import load_pruned

    tokens = None
    if settings.perplexity:
        from ..data import evaluation_tokens

        tokens = evaluation_tokens(tokenizer, settings.data, data_dir)
    zero_shot = settings.zero_shot()
    if zero_shot is not None:
        from ..zero_shot import check_tasks

        check_tasks(zero_shot)  # before loading a model: a task problem costs no model load
    for label, path in (("before", source), ("after", written)):
        model, loaded_tokenizer = load_pruned(path, dtype=torch.float32)
        try:
            if tokens is not None:
                _perplexity(report, label, model, tokens, settings, recipe, device, say)
            if zero_shot is not None:
                _zero_shot(report, label, model, loaded_tokenizer or tokenizer, zero_shot, settings, device, say)
        finally:
            del model


def _perplexity(report: RunReport, label: str, model, tokens, settings: EvalSettings, recipe, device, say) -> None:
    from ..evaluate import perplexity

    seqlen = settings.seqlen or recipe.calibration.seqlen
    result = perplexity(model, tokens, seqlen, settings.windows, device=device, batch_size=settings.batch_size,
                        progress=settings.progress, desc=f"perplexity {label}")
    setattr(report, f"ppl_{label}", result)
    say(f"perplexity {label}: {result['ppl']:.3f} (seqlen {seqlen}, {result['windows']} windows)", flush=True)


def _zero_shot(report: RunReport, label: str, model, tokenizer, zero_shot, settings: EvalSettings, device,
               say) -> None:
    from ..zero_shot import evaluate_tasks

    result = evaluate_tasks(model, tokenizer, zero_shot, device=device, progress=settings.progress)
    setattr(report, f"zero_shot_{label}", result)
    scores = ", ".join(f"{task} {_headline(row)}" for task, row in result["tasks"].items())
    say(f"zero-shot {label}: {scores}", flush=True)


def _headline(row: dict) -> str:
    for metric in ("acc_norm", "acc", "exact_match", "f1"):
        if row.get(metric) is not None:
            return f"{metric} {row[metric]:.4f}"
    return "(no accuracy metric)"


def _plot(report: RunReport, path: Path, title: str) -> None:
    from ..cli.plot import plot_layers

    plot_layers(report.layers, path, title)


__all__ = ["EvalSettings", "fingerprint", "finalize", "prune_checkpoint"]
