"""Perplexity over non-overlapping windows (methods.md §2), and an optional lm-eval-harness bridge.

Protocol (SparseGPT/Wanda ``eval_ppl`` [code]): the evaluation text is tokenized once into T tokens and cut
into ``n_win = floor(T / seqlen)`` non-overlapping windows, the tail being dropped.  Window w contributes the
mean cross-entropy of its tokens 2..seqlen, each predicted from its prefix (shifted labels):

.. math::

    \\ell_w = \\frac{1}{L-1} \\sum_{t=2}^{L} -\\log p(x_t \\mid x_{<t}), \\qquad
    \\mathrm{ppl} = \\exp\\Big(\\frac{1}{n_{win}} \\sum_w \\ell_w\\Big).

Every result records ``seqlen`` and ``windows`` next to the number.
"""

from __future__ import annotations

import importlib.util
import math
import time
from typing import Any, Optional

import torch

from .errors import BackendUnavailable, DataError


def _model_device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:  # pragma: no cover
        return torch.device("cpu")


def window_losses(model, tokens: torch.Tensor, seqlen: int, windows: Optional[int] = None,
                  device=None, batch_size: int = 1) -> torch.Tensor:
    """Mean shifted cross-entropy of each non-overlapping window, shape (n_win,), float64."""
    tokens = torch.as_tensor(tokens, dtype=torch.long).reshape(-1)
    n_win = tokens.numel() // seqlen
    if windows is not None:
        n_win = min(n_win, int(windows))
    if n_win < 1 or seqlen < 2:
        raise DataError(f"{tokens.numel()} tokens give no window of seqlen {seqlen} (>= 2). "
                        f"Fix: lower seqlen or use a longer evaluation text.")
    device = torch.device(device) if device is not None else _model_device(model)
    data = tokens[: n_win * seqlen].reshape(n_win, seqlen)
    losses = []
    was_training = model.training
    model.eval()
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
    model.train(was_training)
    return torch.cat(losses)


def perplexity(model, tokens: torch.Tensor, seqlen: int, windows: Optional[int] = None, device=None,
               batch_size: int = 1) -> dict[str, Any]:
    """Perplexity of ``model`` on ``tokens`` (1-D) over non-overlapping ``seqlen`` windows, tail dropped.

    Parameters
    ----------
    windows : int, optional
        Evaluate only the first ``windows`` windows (all by default).
    device : optional
        Device to run on; the model is moved there for the evaluation and moved back afterwards.

    Returns
    -------
    dict with ``ppl`` (exp of the mean window loss), ``loss``, ``seqlen``, ``windows`` (the count used),
    ``windows_available``, ``tokens`` (length of the stream) and ``time_s``.
    """
    tokens = torch.as_tensor(tokens, dtype=torch.long).reshape(-1)
    start = time.perf_counter()
    original = _model_device(model)
    target = torch.device(device) if device is not None else original
    if target != original:
        model.to(target)
    try:
        losses = window_losses(model, tokens, seqlen, windows, target, batch_size)
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
                   limit: Optional[int] = None, device=None) -> dict[str, Any]:
    """Zero-shot accuracy with lm-eval-harness (methods.md §2; Wanda's seven-task default list).

    Needs the ``lm_eval`` package (and its task data, usually downloaded); raises
    :class:`~prunekit.errors.BackendUnavailable` when it is not installed.
    """
    if importlib.util.find_spec("lm_eval") is None:
        raise BackendUnavailable(
            "the lm-eval-harness bridge needs the 'lm_eval' package. Fix: pip install lm-eval "
            "(task datasets are downloaded by lm-eval on first use)."
        )
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size,
              device=str(device or _model_device(model)))
    out = lm_eval.simple_evaluate(model=lm, tasks=list(tasks), num_fewshot=num_fewshot, limit=limit)
    return {"results": out.get("results", {}), "num_fewshot": num_fewshot, "tasks": list(tasks), "limit": limit}


__all__ = ["lm_eval_bridge", "perplexity", "window_losses"]
