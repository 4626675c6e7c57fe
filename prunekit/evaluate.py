"""Perplexity over non-overlapping windows (methods.md §2), and zero-shot tasks through lm-eval-harness.

Protocol (SparseGPT/Wanda ``eval_ppl`` [code]): the evaluation text is tokenized once into T tokens and cut
into ``n_win = floor(T / seqlen)`` non-overlapping windows, the tail being dropped.  Window w contributes the
mean cross-entropy of its tokens 2..seqlen, each predicted from its prefix (shifted labels):

.. math::

    \\ell_w = \\frac{1}{L-1} \\sum_{t=2}^{L} -\\log p(x_t \\mid x_{<t}), \\qquad
    \\mathrm{ppl} = \\exp\\Big(\\frac{1}{n_{win}} \\sum_w \\ell_w\\Big).

Every result records ``seqlen`` and ``windows`` next to the number.  With ``progress=True`` a bar over the
windows (with ETA) goes to stderr.  Zero-shot tasks live in :mod:`prunekit.zero_shot`; :func:`lm_eval_bridge`
is its one-call form.
"""

from __future__ import annotations

import math
import numbers
import sys
import time
from typing import Any, Optional

import torch

from .errors import DataError


def _model_device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:  # pragma: no cover
        return torch.device("cpu")


def check_window_args(seqlen, windows=None, batch_size=1, names=("seqlen", "windows", "batch_size")) -> None:
    """:class:`DataError` unless ``seqlen`` is an int >= 2, ``windows`` None or an int >= 1 and ``batch_size`` an
    int >= 1 (checked before any model is loaded or run); ``names`` are how the message calls them (CLI flags)."""
    for name, value, low, fix in ((names[0], seqlen, 2, "e.g. 2048 (a window needs a token and its prefix)"),
                                  (names[1], windows, 1, "a count >= 1, or leave it out to use every window"),
                                  (names[2], batch_size, 1, "1 (or more when memory allows)")):
        if value is None and name == names[1]:
            continue
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
            raise DataError(f"{name} must be an integer >= {low}, got {value!r}. Fix: pass {fix}.")


def window_losses(model, tokens: torch.Tensor, seqlen: int, windows: Optional[int] = None,
                  device=None, batch_size: int = 1, progress: bool = False,
                  desc: str = "perplexity") -> torch.Tensor:
    """Mean shifted cross-entropy of each non-overlapping window, shape (n_win,), float64.

    ``progress`` shows a bar over the windows with ETA on stderr, labelled ``desc``.
    """
    check_window_args(seqlen, windows, batch_size)
    tokens = torch.as_tensor(tokens, dtype=torch.long).reshape(-1)
    n_win = tokens.numel() // seqlen
    if windows is not None:
        n_win = min(n_win, int(windows))
    if n_win < 1:
        raise DataError(f"{tokens.numel()} tokens give no window of seqlen {seqlen} (>= 2). "
                        f"Fix: lower seqlen or use a longer evaluation text.")
    device = torch.device(device) if device is not None else _model_device(model)
    data = tokens[: n_win * seqlen].reshape(n_win, seqlen)
    losses = []
    was_training = model.training
    model.eval()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_win, desc=desc, unit="window", file=sys.stderr)
    try:
        with torch.no_grad():
            for start in range(0, n_win, batch_size):
                batch = data[start:start + batch_size].to(device)
                logits = model(input_ids=batch, use_cache=False).logits.float()
                shift_logits = logits[:, :-1, :]
                shift_labels = batch[:, 1:]
                loss = torch.nn.functional.cross_entropy(
                    shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1), reduction="none"
                ).reshape(batch.shape[0], seqlen - 1)
                losses.append(loss.double().mean(dim=1).cpu())
                if bar is not None:
                    bar.update(batch.shape[0])
    finally:
        if bar is not None:
            bar.close()
        model.train(was_training)
    return torch.cat(losses)


def perplexity(model, tokens: torch.Tensor, seqlen: int, windows: Optional[int] = None, device=None,
               batch_size: int = 1, progress: bool = False, desc: str = "perplexity") -> dict[str, Any]:
    """Perplexity of ``model`` on ``tokens`` (1-D) over non-overlapping ``seqlen`` windows, tail dropped.

    Parameters
    ----------
    windows : int, optional
        Evaluate only the first ``windows`` windows (all by default).
    device : optional
        Device to run on; the model is moved there for the evaluation and moved back afterwards.
    progress : bool
        A bar over the windows with ETA on stderr (labelled ``desc``).

    Raises
    ------
    DataError
        ``seqlen`` < 2, ``windows`` or ``batch_size`` < 1, or a stream too short for one window.

    Returns
    -------
    dict with ``ppl`` (exp of the mean window loss), ``loss``, ``seqlen``, ``windows`` (the count used),
    ``windows_available``, ``tokens`` (length of the stream) and ``time_s``.
    """
    check_window_args(seqlen, windows, batch_size)
    tokens = torch.as_tensor(tokens, dtype=torch.long).reshape(-1)
    start = time.perf_counter()
    original = _model_device(model)
    target = torch.device(device) if device is not None else original
    if target != original:
        model.to(target)
    try:
        losses = window_losses(model, tokens, seqlen, windows, target, batch_size, progress=progress, desc=desc)
    finally:
        if target != original:
            model.to(original)
    mean = float(losses.mean())
    return {
        "ppl": math.exp(mean),
        "loss": mean,
        "seqlen": int(seqlen),
        "windows": int(losses.numel()),
        "windows_available": int(tokens.numel() // seqlen),
        "tokens": int(tokens.numel()),
        "time_s": time.perf_counter() - start,
    }


def lm_eval_bridge(model, tokenizer, tasks=("boolq", "rte", "hellaswag", "winogrande", "arc_easy", "arc_challenge",
                                            "openbookqa"), num_fewshot: int = 0, batch_size: int = 1,
                   limit=None, device=None, include_path=None, progress: bool = True) -> dict[str, Any]:
    """Zero-shot accuracy with lm-eval-harness (methods.md §2; Wanda's seven-task default list).

    One call of :func:`prunekit.zero_shot.evaluate_tasks` (see there for the returned dict).  Needs the
    ``lm_eval`` package (``pip install 'prunekit[eval]'``) and its task data (downloaded on first use); raises
    :class:`~prunekit.errors.BackendUnavailable` when it is not installed.
    """
    from .zero_shot import ZeroShotSettings, evaluate_tasks, require_lm_eval

    require_lm_eval()
    settings = ZeroShotSettings(tasks=tuple(tasks) if not isinstance(tasks, str) else tasks,
                                include_path=include_path, limit=limit, num_fewshot=num_fewshot,
                                batch_size=batch_size)
    return evaluate_tasks(model, tokenizer, settings, device=device, progress=progress)


__all__ = ["check_window_args", "lm_eval_bridge", "perplexity", "window_losses"]
