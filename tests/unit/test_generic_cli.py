"""Any causal LM prunes unstructured and N:M from the CLI (issue: any decoder architecture, item 1).

Phi-3, Mixtral, Qwen2-MoE, GPT-NeoX and Falcon have no family adapter: the generic adapter finds their blocks and
linear layers, routers stay dense, fused MoE experts are pruned per expert and fused back, and the output folder
loads with stock ``from_pretrained`` and gives the in-memory pruned model's logits.
"""

from __future__ import annotations

import json

import pytest
import torch

pytestmark = pytest.mark.hf

from prunekit.cli import main  # noqa: E402

FAMILIES = ("phi3", "mixtral", "qwen2_moe", "gpt_neox", "falcon")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    from _hf_tiny import TEXT

    root = tmp_path_factory.mktemp("generic")
    (root / "calib.txt").write_text(TEXT * 4)
    return root


def _folder(workdir, family):
    from _hf_tiny import tiny_tokenizer
    from test_generic_adapter import tiny_config
    from transformers import AutoModelForCausalLM

    folder = workdir / family
    if not folder.exists():
        tok = tiny_tokenizer()
        config = tiny_config(family)
        config.vocab_size = len(tok)
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(config).save_pretrained(folder)
        tok.save_pretrained(folder)
    return folder


def _prune(workdir, family, out, *extra):
    args = ["prune", "--model", str(_folder(workdir, family)), "--calib", str(workdir / "calib.txt"), "--nsamples",
            "4", "--seqlen", "16", "--out", str(out), "--no-progress", *extra]
    assert main(args) == 0
    return json.loads((out / "report.json").read_text())


def _weights(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("structure", ["unstructured", "2:4"])
def test_any_causal_lm_prunes_from_the_cli_and_reloads_stock(workdir, family, structure):
    from transformers import AutoModelForCausalLM

    out = workdir / f"out-{family}-{structure.replace(':', 'of')}"
    report = _prune(workdir, family, out, "--method", "wanda", "--structure", structure)
    assert report["family"] == "generic" and report["layers"]
    dense = AutoModelForCausalLM.from_pretrained(_folder(workdir, family)).eval()
    pruned = AutoModelForCausalLM.from_pretrained(out).eval()  # stock loader, no prunekit code
    before, after = _weights(dense), _weights(pruned)
    assert set(before) == set(after)
    # the report's nonzero counts are the checkpoints' (counted while streaming, not re-read)
    assert report["nonzero_params_before"] == sum(int(torch.count_nonzero(w)) for w in before.values())
    assert report["nonzero_params_after"] == sum(int(torch.count_nonzero(w)) for w in after.values())
    pruned_names = {r["module"] for r in report["layers"] if r["status"] != "skipped"}
    for name, w in after.items():
        module = name.rsplit(".", 1)[0]
        if name.endswith("weight") and module in pruned_names:
            assert float((w == 0).float().mean()) == pytest.approx(0.5, abs=0.02), name
        elif "router" in name or name.endswith("mlp.gate.weight") or "norm" in name or "embed" in name:
            assert torch.equal(w, before[name]), f"{name} must stay untouched"
    fused = [n for n in after if after[n].dim() == 3]  # fused experts: pruned per expert, stored fused
    for name in fused:
        assert float((after[name] == 0).float().mean()) == pytest.approx(0.5, abs=0.05), name
    if family in ("mixtral", "qwen2_moe"):
        assert fused and any(".experts." in r["module"] for r in report["layers"])
    x = torch.randint(0, dense.config.vocab_size, (1, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = pruned(input_ids=x).logits
    assert torch.isfinite(logits).all()


def test_channels_on_moe_experts_is_one_clear_error(workdir, capsys):
    out = workdir / "channels-mixtral"
    code = main(["prune", "--model", str(_folder(workdir, "mixtral")), "--calib", str(workdir / "calib.txt"),
                 "--nsamples", "2", "--seqlen", "8", "--out", str(out), "--no-progress", "--method", "fasp",
                 "--structure", "channels", "--sparsity", "0.3"])
    err = capsys.readouterr().err
    assert code != 0 and "channels" in err and "experts" in err and "Fix:" in err and "Traceback" not in err
    assert not out.exists()


def test_targets_and_ignore_patterns_choose_the_modules(workdir):
    out = workdir / "ignore-phi3"
    report = _prune(workdir, "phi3", out, "--method", "wanda", "--ignore", "lm_head,re:.*self_attn.*")
    modules = {r["module"] for r in report["layers"]}
    assert modules and not any("self_attn" in m for m in modules) and any("mlp" in m for m in modules)
    assert report["recipe"]["ignore"] == ["lm_head", "re:.*self_attn.*"]
    out2 = workdir / "targets-phi3"
    report2 = _prune(workdir, "phi3", out2, "--method", "wanda", "--targets", "mlp.down_proj")
    assert {r["module"].rsplit(".", 2)[-2] + "." + r["module"].rsplit(".", 1)[-1] for r in report2["layers"]} == \
        {"mlp.down_proj"}


@pytest.mark.parametrize("family", ["phi3", "gpt_neox", "falcon"])
def test_mlp_channels_from_derived_groups_are_physically_removed_and_reload_stock(workdir, family):
    """Property: with no family adapter, the groups derived from the block's computation (fused gate_up of Phi-3,
    parallel blocks of GPT-NeoX and Falcon) prune MLP channels physically; the stock-loaded output equals the dense
    model with the pruned columns zeroed and the kept columns restored (the masked model)."""
    import copy

    from transformers import AutoModelForCausalLM

    out = workdir / f"channels-{family}"
    report = _prune(workdir, family, out, "--method", "fasp", "--structure", "channels", "--sparsity", "0.3")
    assert report["output_format"] == "stock" and report["params_after"] < report["params_before"]
    plan = json.loads((out / "plan" / "plan.json").read_text())
    dense = AutoModelForCausalLM.from_pretrained(_folder(workdir, family)).eval()
    pruned = AutoModelForCausalLM.from_pretrained(out).eval()  # stock loader
    masked = copy.deepcopy(dense)
    assert report["layers"]
    for record in report["layers"]:
        kept = plan["group_edits"][record["group"]]["kept_units"]  # MLP units are single columns
        old = masked.get_submodule(record["module"]).weight
        new = pruned.get_submodule(record["module"]).weight
        assert new.shape[1] == len(kept) < old.shape[1]
        full = torch.zeros_like(old)
        full[:, kept] = new
        with torch.no_grad():
            old.copy_(full)
    x = torch.randint(0, dense.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        a, b = pruned(input_ids=x).logits, masked(input_ids=x).logits
    assert torch.isfinite(a).all()
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
