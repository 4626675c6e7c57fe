"""Zero-shot accuracy through lm-evaluation-harness (methods.md §2) on any model prunekit can load.

The loaded model object itself is wrapped with lm-eval's ``HFLM(pretrained=model, tokenizer=tokenizer)``, so
every output format prunekit writes ("stock" folders, "rebuild" folders, models pruned in memory) is evaluated
the same way, by the same forward pass the pruned model runs.

Two steps, so that every problem with the tasks shows before a model is loaded:

1. :func:`check_tasks` -- lm-eval is installed, every task name is known (lm-eval's own tasks, the YAML task
   definitions under ``include_path``, or a YAML file path) and every task's dataset loads (``datasets``
   downloads it once and caches it);
2. :func:`evaluate_tasks` -- runs the tasks on a model and returns plain JSON: per task, each metric (``acc``,
   ``acc_norm``, ...) with its stderr and the number of documents scored.

``lm_eval`` is imported lazily: without it both raise :class:`~prunekit.errors.BackendUnavailable` naming the
``eval`` extra.
"""

from __future__ import annotations

import difflib
import functools
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from .errors import BackendUnavailable, DataError

INSTALL_HINT = "pip install 'prunekit[eval]' (or pip install lm-eval)"


@dataclass(frozen=True)
class ZeroShotSettings:
    """What to evaluate; every field is checked on construction (a :class:`DataError` names the field and the fix).

    Attributes
    ----------
    tasks : lm-eval task, group or tag names, or paths to task YAML files (a comma-separated string is split).
    include_path : a folder of task YAML definitions added to lm-eval's registry (``TaskManager(include_path)``).
    limit : score only the first ``limit`` documents of each task (an int >= 1), or a fraction in (0, 1).
    num_fewshot : in-context examples per prompt (0 = zero-shot; a task whose YAML fixes 0 keeps 0).
    batch_size : requests per forward pass.
    """

    tasks: tuple[str, ...]
    include_path: Optional[str] = None
    limit: Optional[Union[int, float]] = None
    num_fewshot: int = 0
    batch_size: int = 1

    def __post_init__(self):
        object.__setattr__(self, "tasks", parse_tasks(self.tasks))
        if self.include_path is not None:
            path = Path(self.include_path).expanduser()
            if not path.exists():
                raise DataError(f"include path {str(path)!r} does not exist. Fix: pass a folder holding lm-eval task "
                                f"YAML files (or one YAML file).")
            object.__setattr__(self, "include_path", str(path))
        object.__setattr__(self, "limit", _limit(self.limit))
        if isinstance(self.num_fewshot, bool) or not isinstance(self.num_fewshot, int) or self.num_fewshot < 0:
            raise DataError(f"num_fewshot must be an integer >= 0, got {self.num_fewshot!r}. Fix: pass 0 for "
                            f"zero-shot, or the number of in-context examples.")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise DataError(f"batch_size must be an integer >= 1, got {self.batch_size!r}. Fix: pass 1 (or more "
                            f"when memory allows).")


def parse_tasks(tasks: Union[str, Sequence[str]]) -> tuple[str, ...]:
    """``"hellaswag, arc_easy"`` or ``["hellaswag", "arc_easy"]`` -> ``("hellaswag", "arc_easy")``; order kept,
    duplicates dropped; an empty list is a :class:`DataError`."""
    items = tasks.split(",") if isinstance(tasks, str) else list(tasks or ())
    if not all(isinstance(t, (str, Path)) for t in items):
        raise DataError(f"tasks must be names or YAML paths (strings), got {tasks!r}. Fix: pass e.g. "
                        f"'hellaswag,arc_easy'.")
    names = tuple(dict.fromkeys(str(t).strip() for t in items if str(t).strip()))
    if not names:
        raise DataError(f"no task given ({tasks!r}). Fix: name at least one lm-eval task, e.g. "
                        f"--tasks hellaswag,arc_easy.")
    return names


def _limit(limit) -> Optional[Union[int, float]]:
    if limit is None:
        return None
    bad = DataError(f"limit must be a document count >= 1 or a fraction in (0, 1), got {limit!r}. Fix: pass e.g. "
                    f"100, or 0.1 for a tenth of each task.")
    if isinstance(limit, bool) or not isinstance(limit, (int, float)) or not math.isfinite(limit) or limit <= 0:
        raise bad
    if limit < 1:
        return float(limit)
    if float(limit) != int(limit):
        raise bad
    return int(limit)


def require_lm_eval():
    """The ``lm_eval`` module, or :class:`BackendUnavailable` saying how to install it."""
    try:
        import lm_eval
    except ImportError as exc:
        raise BackendUnavailable(f"zero-shot evaluation needs lm-evaluation-harness (the 'lm_eval' package), which "
                                 f"is not installed ({exc}). Fix: {INSTALL_HINT}.") from None
    return lm_eval


@functools.lru_cache(maxsize=8)
def _task_manager(include_path: Optional[str], defaults: bool):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=include_path, include_defaults=defaults)


def _is_yaml_file(name: str) -> bool:
    return name.endswith((".yaml", ".yml")) and Path(name).expanduser().is_file()


def task_manager(settings: ZeroShotSettings):
    """The lm-eval ``TaskManager`` that knows every task of ``settings``; :class:`DataError` for unknown names.

    Indexing lm-eval's own task folder takes seconds, so when ``include_path`` (or YAML paths) already defines
    every task, only those are indexed.  Managers are cached per process.
    """
    require_lm_eval()
    local = _task_manager(settings.include_path, False)
    known = set(local.all_tasks)
    if all(t in known or _is_yaml_file(t) for t in settings.tasks):
        return local
    manager = _task_manager(settings.include_path, True)
    known = set(manager.all_tasks)
    unknown = [t for t in settings.tasks if t not in known and not _is_yaml_file(t)]
    if unknown:
        hints = {t: difflib.get_close_matches(t, manager.all_tasks, n=3) for t in unknown}
        near = "; ".join(f"{t!r}: did you mean {', '.join(m)}?" for t, m in hints.items() if m)
        where = f" or in {settings.include_path}" if settings.include_path else ""
        raise DataError(f"unknown lm-eval task(s) {', '.join(map(repr, unknown))}: not in lm-eval's registry{where}"
                        f"{' (' + near + ')' if near else ''}. Fix: pick names from `lm-eval ls tasks`, pass a task "
                        f"YAML file, or --include-path DIR with the task's YAML definition.")
    return manager


def load_tasks(settings: ZeroShotSettings, manager=None) -> list:
    """Fresh lm-eval Task/Group objects for ``settings.tasks`` (their datasets loaded), top level only so that
    groups keep their aggregate scores; a :class:`DataError` when a task or its dataset cannot be loaded."""
    manager = manager or task_manager(settings)
    try:
        loaded = manager.load(list(settings.tasks))
    except Exception as exc:  # lm-eval and datasets raise many types here; all mean "this task did not load"
        raise DataError(f"lm-eval could not load task(s) {', '.join(settings.tasks)}: {type(exc).__name__}: {exc}. "
                        f"Fix: check the task definition; a task's dataset is downloaded by `datasets` on first "
                        f"use, so run once with the Hugging Face hub reachable (it is cached afterwards) or use a "
                        f"local task (--include-path).") from exc
    children = {c for kids in loaded.get("group_map", {}).values() for c in kids}
    groups = [g for name, g in loaded.get("groups", {}).items() if name not in children]
    return groups + [t for name, t in loaded["tasks"].items() if name not in children]


def check_tasks(settings: ZeroShotSettings) -> tuple[str, ...]:
    """Everything :func:`evaluate_tasks` needs except the model: lm-eval installed, task names known, datasets
    loadable (downloaded and cached now).  Returns the leaf task names that will be scored."""
    names = []
    for item in load_tasks(settings):
        names += [t.task_name for t in item.get_all_tasks()] if hasattr(item, "get_all_tasks") else [item.task_name]
    return tuple(names)


def _lm_class(progress: bool):
    from lm_eval.models.huggingface import HFLM

    if progress:
        return HFLM

    class QuietHFLM(HFLM):
        """HFLM without its per-request progress bars."""

        def loglikelihood(self, requests, disable_tqdm: bool = False):
            return super().loglikelihood(requests, disable_tqdm=True)

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
            return super().loglikelihood_rolling(requests, disable_tqdm=True)

        def generate_until(self, requests, disable_tqdm: bool = False):
            return super().generate_until(requests, disable_tqdm=True)

    return QuietHFLM


def evaluate_tasks(model, tokenizer, settings: ZeroShotSettings, *, device=None, progress: bool = True,
                   manager=None) -> dict[str, Any]:
    """Run ``settings.tasks`` with lm-evaluation-harness on ``model`` (a loaded causal LM) and ``tokenizer``.

    Parameters
    ----------
    device : optional
        Device to run on; the model is moved there for the evaluation and moved back afterwards.
    progress : show lm-eval's progress bars (with ETA) on stderr.

    Returns
    -------
    dict with ``tasks`` ({task: {metric: value, metric_stderr: value or None, "samples": documents scored}},
    metric names without lm-eval's ``,none`` filter suffix; groups appear with their aggregate metrics),
    ``num_fewshot``, ``limit``, ``batch_size``, ``lm_eval_version`` and ``time_s``.
    """
    lm_eval = require_lm_eval()
    if tokenizer is None:
        raise DataError("zero-shot evaluation needs the model's tokenizer, and none was found. Fix: save the "
                        "tokenizer next to the model (tokenizer.save_pretrained(folder)).")
    start = time.perf_counter()
    manager = manager or task_manager(settings)
    items = load_tasks(settings, manager)
    import torch

    try:
        original = next(model.parameters()).device
    except StopIteration:  # pragma: no cover
        original = torch.device("cpu")
    target = torch.device(device) if device is not None else original
    if target != original:
        model.to(target)
    was_training = model.training
    model.eval()
    try:
        lm = _lm_class(progress)(pretrained=model, tokenizer=tokenizer, batch_size=settings.batch_size)
        out = lm_eval.simple_evaluate(model=lm, tasks=items, task_manager=manager, num_fewshot=settings.num_fewshot,
                                      limit=settings.limit, log_samples=False)
    finally:
        model.train(was_training)
        if target != original:
            model.to(original)
    return {
        "tasks": task_metrics(out or {}),
        "num_fewshot": settings.num_fewshot,
        "limit": settings.limit,
        "batch_size": settings.batch_size,
        "lm_eval_version": getattr(lm_eval, "__version__", "unknown"),
        "time_s": time.perf_counter() - start,
    }


def task_metrics(out: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """lm-eval's ``simple_evaluate`` output -> ``{task: {metric: float | None, ..., "samples": int}}``
    (``"acc,none"`` -> ``"acc"``; other filters keep ``"metric,filter"``; "N/A" -> None)."""
    samples = out.get("n-samples", {})
    table: dict[str, dict[str, Any]] = {}
    for source in ("results", "groups"):
        for task, values in (out.get(source) or {}).items():
            row = table.setdefault(task, {})
            for key, value in values.items():
                if "," not in key:
                    continue  # name, alias, sample_len, ...
                metric, _, filt = key.partition(",")
                number = _number(value)
                if number is not None or value in ("N/A", None):
                    row[metric if filt == "none" else key] = number
            if task in samples:
                row["samples"] = int(samples[task].get("effective", samples[task].get("original", 0)))
    return table


def _number(value) -> Optional[float]:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


__all__ = ["INSTALL_HINT", "ZeroShotSettings", "check_tasks", "evaluate_tasks", "load_tasks", "parse_tasks",
           "require_lm_eval", "task_manager", "task_metrics"]
