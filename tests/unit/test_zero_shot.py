"""Zero-shot evaluation through lm-evaluation-harness, offline: a local task definition (YAML + JSONL written here)
run by ``prunekit eval --tasks`` on tiny pruned outputs ("stock" and "rebuild" formats) and by
``prune_checkpoint(evaluate=EvalSettings(tasks=...))``; plus the checks made before any model is loaded and the
perplexity progress bar.

The task's labels are the choices the evaluated model itself prefers (scored here the way lm-eval scores a
multiple-choice request: log p(" " + choice | question), the pair tokenized whole), so the reported ``acc`` must
be exactly 1.0 -- a different model (the dense one, randomly initialized weights) would miss some of them.
"""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch

from _checkpoints import calibration_file, recipe_dict, write_checkpoint
from _hf_tiny import tiny_tokenizer

pytestmark = pytest.mark.hf

from prunekit.cli import main  # noqa: E402
from prunekit.errors import DataError  # noqa: E402

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

QUESTIONS = ["The quick brown fox jumps over the", "Pruning removes weights from a", "A layer problem is a least",
             "keeping its outputs close to the", "The lazy dog", "its outputs close", "A network while",
             "the dense ones. A"]
CHOICES = [["lazy", "dense"], ["network", "layer"], ["squares", "weights"], ["dense", "quick"], ["jumps", "keeps"],
           ["to", "from"], ["keeping", "pruning"], ["layer", "problem"]]


def _choice_logprob(model, tokenizer, context: str, choice: str) -> float:
    whole = tokenizer.encode(context + " " + choice)
    n_context = len(tokenizer.encode(context))
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([whole])).logits[0].double(), dim=-1)
    return float(sum(logp[t - 1, whole[t]] for t in range(n_context, len(whole))))


def preferred_labels(model, tokenizer) -> list[int]:
    """Index of the choice ``model`` gives the higher log-likelihood, per question."""
    labels = []
    for q, choices in zip(QUESTIONS, CHOICES):
        scores = [_choice_logprob(model, tokenizer, q, c) for c in choices]
        assert abs(scores[0] - scores[1]) > 1e-6, "tie: pick other choices"
        labels.append(int(scores[1] > scores[0]))
    return labels


def write_task(folder, labels, name="prunekit_tiny"):
    """A local lm-eval multiple-choice task: ``folder/<name>.yaml`` over ``folder/<name>.jsonl``."""
    folder.mkdir(parents=True, exist_ok=True)
    docs = folder / f"{name}.jsonl"
    docs.write_text("".join(json.dumps({"question": q, "choices": c, "label": y}) + "\n"
                            for q, c, y in zip(QUESTIONS, CHOICES, labels)))
    (folder / f"{name}.yaml").write_text(
        f"task: {name}\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {docs}\n  cache_dir: {folder / 'cache'}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        "doc_to_text: '{{question}}'\n"
        "doc_to_choice: '{{choices}}'\n"
        "doc_to_target: '{{label}}'\n"
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n")
    return folder


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    """A tiny LLaMA checkpoint and its Wanda 50% output folder (stock format), written by prune_checkpoint."""
    from prunekit.models.pipeline import prune_checkpoint

    root = tmp_path_factory.mktemp("zs")
    ckpt = write_checkpoint(root / "ckpt")
    prune_checkpoint(ckpt, recipe_dict(calibration_file(root)), root / "out", progress=False, echo=None)
    return ckpt, root / "out"


def _eval(capsys, *argv):
    code = main(["eval", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_eval_tasks_scores_a_local_task_on_a_pruned_output(pruned, tmp_path, capsys):
    from prunekit.models.saving import load_pruned

    _, out = pruned
    model, tokenizer = load_pruned(out)
    tasks = write_task(tmp_path / "tasks", preferred_labels(model, tokenizer))
    code, stdout, err = _eval(capsys, "--model", out, "--tasks", "prunekit_tiny", "--include-path", tasks,
                              "--limit", len(QUESTIONS), "--no-progress")
    assert code == 0, err
    result = json.loads(stdout)
    row = result["tasks"]["prunekit_tiny"]
    assert 0.0 <= row["acc"] <= 1.0
    assert row["acc"] == 1.0 and row["samples"] == len(QUESTIONS)
    assert result["num_fewshot"] == 0 and result["model"] == str(out)
    assert "Running loglikelihood requests" not in err  # --no-progress silences lm-eval's bars


def test_task_yaml_path_works_without_include_path(pruned, tmp_path, capsys):
    from prunekit.models.saving import load_pruned

    model, tokenizer = load_pruned(pruned[1])
    labels = [1 - y for y in preferred_labels(model, tokenizer)]  # every label the model's dispreferred choice
    tasks = write_task(tmp_path / "tasks", labels, name="prunekit_wrong")
    code, stdout, err = _eval(capsys, "--model", pruned[1], "--tasks", tasks / "prunekit_wrong.yaml")
    assert code == 0, err
    assert json.loads(stdout)["tasks"]["prunekit_wrong"]["acc"] == 0.0
    assert "Running loglikelihood requests" in err  # progress on by default


def test_eval_tasks_on_a_rebuild_format_output(tmp_path, capsys):
    """A FLAP-like bias on Mistral's down_proj has no stock config flag: the "rebuild" format, which stock
    from_pretrained refuses; ``prunekit eval --tasks`` evaluates it through prunekit's loader."""
    from transformers import AutoModelForCausalLM, MistralConfig

    from prunekit.models.plan import ModuleEdit, PruningPlan
    from prunekit.models.saving import save_pruned
    from prunekit.models.surgery import apply_

    tok = tiny_tokenizer()
    torch.manual_seed(0)
    config = MistralConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                           sliding_window=None, bos_token_id=0, eos_token_id=1, tie_word_embeddings=False)
    model = AutoModelForCausalLM.from_config(config).eval()
    name = "model.layers.0.mlp.down_proj"
    apply_(model, PruningPlan(module_edits={name: ModuleEdit(name, bias=torch.randn(32))}))
    out = save_pruned(model, tok, tmp_path / "rebuild")
    assert json.loads((out / "prunekit_output.json").read_text())["format"] == "rebuild"
    tasks = write_task(tmp_path / "tasks", preferred_labels(model, tok))
    code, stdout, err = _eval(capsys, "--model", out, "--tasks", "prunekit_tiny", "--include-path", tasks,
                              "--no-progress")
    assert code == 0, err
    assert json.loads(stdout)["tasks"]["prunekit_tiny"]["acc"] == 1.0


def test_prune_checkpoint_records_zero_shot_before_and_after(pruned, tmp_path):
    from prunekit.models.pipeline import EvalSettings, prune_checkpoint
    from prunekit.models.saving import load_pruned

    ckpt, _ = pruned
    dense, tokenizer = load_pruned(ckpt)
    tasks = write_task(tmp_path / "tasks", preferred_labels(dense, tokenizer))
    settings = EvalSettings(tasks="prunekit_tiny", include_path=str(tasks), perplexity=False, progress=False)
    lines = []
    report = prune_checkpoint(ckpt, recipe_dict(calibration_file(tmp_path)), tmp_path / "out", progress=False,
                              evaluate=settings, echo=lambda *a, **k: lines.append(" ".join(map(str, a))))
    assert report.ppl_before is None and report.ppl_after is None
    assert report.zero_shot_before["tasks"]["prunekit_tiny"]["acc"] == 1.0  # the dense input
    assert 0.0 <= report.zero_shot_after["tasks"]["prunekit_tiny"]["acc"] <= 1.0
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["zero_shot_before"]["tasks"]["prunekit_tiny"]["samples"] == len(QUESTIONS)
    assert any(line.startswith("zero-shot after: prunekit_tiny acc") for line in lines), lines


def test_missing_lm_eval_is_reported_before_the_model_is_loaded(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval -> ImportError
    code, _, err = _eval(capsys, "--model", "/nonexistent/model", "--tasks", "hellaswag")
    assert code == 2
    assert "pip install 'prunekit[eval]'" in err and "/nonexistent" not in err


def test_unknown_task_is_reported_before_the_model_is_loaded(tmp_path, capsys):
    tasks = write_task(tmp_path / "tasks", [0] * len(QUESTIONS))
    code, _, err = _eval(capsys, "--model", "/nonexistent/model", "--tasks", "prunekit_tiny,hellaswagg",
                         "--include-path", tasks)
    assert code == 2
    assert "unknown lm-eval task(s) 'hellaswagg':" in err  # prunekit_tiny (in --include-path) is known
    assert "hellaswag" in err.split("did you mean")[1] and "Fix:" in err


@pytest.mark.parametrize("argv, flag", [
    (["--seqlen", "0"], "--seqlen"), (["--seqlen", "1"], "--seqlen"), (["--windows", "0"], "--windows"),
    (["--batch-size", "0"], "--batch-size"), (["--tasks", "a", "--batch-size", "-1"], "--batch-size"),
    (["--tasks", "a", "--seqlen", "64"], "--seqlen"), (["--limit", "5"], "--limit"),
    (["--tasks", "a", "--limit", "0"], "limit"), (["--tasks", "a", "--limit", "2.5"], "limit"),
    (["--tasks", "a", "--num-fewshot", "-1"], "num_fewshot"), (["--tasks", " , "], "task"),
    (["--tasks", "a", "--include-path", "/nonexistent/tasks"], "/nonexistent/tasks"),
])
def test_bad_eval_flags_are_data_errors_before_loading(argv, flag, capsys):
    code, _, err = _eval(capsys, "--model", "/nonexistent/model", *argv)
    assert code == 2
    assert flag in err and "Fix:" in err and "/nonexistent/model" not in err and "Traceback" not in err


def test_eval_settings_are_checked_on_construction(tmp_path):
    from prunekit.models.pipeline import EvalSettings

    assert EvalSettings(tasks="a, b,a").tasks == ("a", "b")
    assert EvalSettings().zero_shot() is None
    for bad in (dict(seqlen=0), dict(windows=0), dict(batch_size=0), dict(limit=5), dict(tasks="a", limit=-1),
                dict(tasks="a", include_path=str(tmp_path / "missing"))):
        with pytest.raises(DataError, match="Fix:"):
            EvalSettings(**bad)


def test_task_metrics_flattens_lm_eval_output():
    from prunekit.zero_shot import task_metrics

    out = {"results": {"t": {"alias": "t", "acc,none": 0.25, "acc_stderr,none": "N/A", "acc_norm,none": 0.5,
                             "exact_match,strict-match": 1}},
           "groups": {"g": {"acc,none": 0.75}},
           "n-samples": {"t": {"original": 10, "effective": 4}}}
    assert task_metrics(out) == {"t": {"acc": 0.25, "acc_stderr": None, "acc_norm": 0.5,
                                       "exact_match,strict-match": 1.0, "samples": 4}, "g": {"acc": 0.75}}


def test_perplexity_shows_progress_with_eta_unless_no_progress(pruned, tmp_path, capsys):
    calib = calibration_file(tmp_path)
    code, stdout, err = _eval(capsys, "--model", pruned[1], "--data", calib, "--seqlen", 16, "--windows", 3)
    assert code == 0, err
    assert json.loads(stdout)["windows"] == 3
    assert "perplexity" in err and "3/3" in err and "window" in err
    code, stdout, err = _eval(capsys, "--model", pruned[1], "--data", calib, "--seqlen", 16, "--windows", 3,
                              "--no-progress")
    assert code == 0 and "3/3" not in err and json.loads(stdout)["windows"] == 3
