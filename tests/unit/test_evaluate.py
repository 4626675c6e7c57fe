"""Perplexity over non-overlapping windows (prunekit.evaluate; methods.md §2)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from prunekit.errors import BackendUnavailable, DataError
from prunekit.evaluate import lm_eval_bridge, perplexity, window_losses


class UniformLM(nn.Module):
    """Predicts the uniform distribution over ``vocab`` tokens: its perplexity is exactly ``vocab``."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, use_cache=False):
        return SimpleNamespace(logits=torch.zeros(*input_ids.shape, self.vocab) + self.dummy)


class CopyLM(nn.Module):
    """Puts probability 1/2 on 'next = current + 1' and spreads the rest: loss depends on the tokens."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, use_cache=False):
        logits = torch.zeros(*input_ids.shape, self.vocab)
        logits.scatter_(-1, ((input_ids + 1) % self.vocab).unsqueeze(-1), 5.0)
        return SimpleNamespace(logits=logits)


def test_uniform_model_has_perplexity_equal_to_vocab_size():
    tokens = torch.randint(0, 37, (1000,))
    result = perplexity(UniformLM(37), tokens, seqlen=64)
    assert math.isclose(result["ppl"], 37.0, rel_tol=1e-6)  # float32 log-softmax
    assert result["seqlen"] == 64 and result["windows"] == 1000 // 64 == 15 and result["tokens"] == 1000


def test_windows_are_non_overlapping_and_tail_is_dropped():
    vocab, seqlen = 11, 10
    tokens = torch.arange(103) % vocab  # 10 full windows + a tail of 3
    model = CopyLM(vocab)
    base = perplexity(model, tokens, seqlen)
    assert base["windows"] == 10 and base["windows_available"] == 10
    changed_tail = tokens.clone()
    changed_tail[100:] = torch.tensor([5, 0, 9])
    assert perplexity(model, changed_tail, seqlen)["ppl"] == pytest.approx(base["ppl"], rel=1e-12)
    # windows do not see each other: shifting a whole window breaks the pattern only across its borders
    at_start = tokens.clone()
    at_start[20:30] = (at_start[20:30] + 3) % vocab
    assert perplexity(model, at_start, seqlen)["ppl"] == pytest.approx(base["ppl"], rel=1e-12)
    inside = tokens.clone()
    inside[25] = (inside[25] + 3) % vocab
    assert perplexity(model, inside, seqlen)["ppl"] > base["ppl"] * 1.01


def test_ppl_is_exp_of_mean_window_loss_and_windows_limit():
    tokens = torch.randint(0, 13, (200,))
    model = CopyLM(13)
    losses = window_losses(model, tokens, 20)
    assert losses.shape == (10,)
    result = perplexity(model, tokens, 20, windows=4)
    assert result["windows"] == 4
    assert result["ppl"] == pytest.approx(math.exp(float(losses[:4].mean())), rel=1e-12)
    manual = torch.nn.functional.cross_entropy(model(tokens[:20].unsqueeze(0)).logits[0, :-1], tokens[1:20])
    assert float(losses[0]) == pytest.approx(float(manual), rel=1e-6)


def test_matches_hugging_face_loss_on_a_tiny_llama():
    from _hf_tiny import tiny_model

    model = tiny_model("llama", vocab_size=64)
    tokens = torch.randint(0, 64, (3 * 16 + 5,))
    result = perplexity(model, tokens, 16, batch_size=2)
    with torch.no_grad():
        hf = [float(model(input_ids=w.unsqueeze(0), labels=w.unsqueeze(0)).loss) for w in tokens[:48].reshape(3, 16)]
    assert result["windows"] == 3
    assert result["ppl"] == pytest.approx(math.exp(sum(hf) / 3), rel=1e-5)


def test_too_short_stream_is_a_data_error():
    with pytest.raises(DataError, match="no window"):
        perplexity(UniformLM(5), torch.arange(10) % 5, seqlen=64)


def test_lm_eval_bridge_reports_missing_package(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "lm_eval", None)  # as if lm-eval were not installed
    with pytest.raises(BackendUnavailable, match="pip install lm-eval"):
        lm_eval_bridge(UniformLM(5), None)
