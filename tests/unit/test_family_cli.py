"""Every family with an adapter prunes from the CLI: Wanda 50% unstructured and FASP 30% MLP channels (physically
smaller), the output reloads with stock ``from_pretrained`` and, for channels, gives the masked model's logits (the
dense model with the pruned columns zeroed and the kept columns restored).  Families without an adapter:
``test_generic_cli.py``."""

from __future__ import annotations

import copy
import json

import pytest
import torch

pytestmark = pytest.mark.hf

from _hf_tiny import cli_prune, save_config_checkpoint  # noqa: E402
from _tiny_models import FAMILY_TYPES, tiny_config  # noqa: E402

from prunekit.models.adapters import adapter_for  # noqa: E402


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    from _hf_tiny import TEXT

    root = tmp_path_factory.mktemp("families")
    (root / "calib.txt").write_text(TEXT * 4)
    return root


def _folder(workdir, family):
    return save_config_checkpoint(workdir / family, tiny_config(family))


def _prune(workdir, family, out, *extra):
    return cli_prune(_folder(workdir, family), workdir / "calib.txt", out, *extra)


def _load(folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder).eval()


def _logits(model, vocab):
    x = torch.randint(0, vocab, (2, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        return model(input_ids=x).logits


@pytest.mark.parametrize("family", FAMILY_TYPES)
def test_wanda_unstructured_from_the_cli_reloads_stock(workdir, family):
    out = workdir / f"wanda-{family}"
    report = _prune(workdir, family, out, "--method", "wanda", "--sparsity", "0.5", "--allocation", "uniform")
    assert report["output_format"] == "stock" and report["family"] != "generic"
    pruned = _load(out)
    adapter = adapter_for(pruned)
    for record in report["layers"]:
        weight = adapter.get_weight(pruned.get_submodule(record["module"]))
        assert float((weight == 0).float().mean()) == pytest.approx(0.5, abs=1e-6), record["module"]
    assert torch.isfinite(_logits(pruned, pruned.config.vocab_size)).all()


@pytest.mark.parametrize("family", FAMILY_TYPES)
def test_fasp_channels_from_the_cli_are_removed_and_reload_with_the_masked_models_logits(workdir, family):
    out = workdir / f"fasp-{family}"
    report = _prune(workdir, family, out, "--method", "fasp", "--structure", "channels", "--sparsity", "0.3",
                    "--allocation", "uniform")
    assert report["output_format"] == "stock" and report["params_after"] < report["params_before"]
    plan = json.loads((out / "plan" / "plan.json").read_text())
    dense, pruned = _load(_folder(workdir, family)), _load(out)
    masked = copy.deepcopy(dense)
    adapter = adapter_for(masked)
    assert report["layers"]
    for record in report["layers"]:
        kept = plan["group_edits"][record["group"]]["kept_units"]  # MLP units are single columns of the downstream
        module = masked.get_submodule(record["module"])
        old = adapter.get_weight(module)
        new = adapter.get_weight(pruned.get_submodule(record["module"]))
        assert new.shape[1] == len(kept) < old.shape[1]
        full = torch.zeros_like(old)
        full[:, kept] = new
        with torch.no_grad():
            adapter.set_weight(module, full)
    a, b = _logits(pruned, dense.config.vocab_size), _logits(masked, dense.config.vocab_size)
    assert torch.isfinite(a).all()
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
