"""Any causal LM prunes unstructured and N:M from the CLI (issue: any decoder architecture, item 1).

Phi-3, Mixtral, Qwen2-MoE, GPT-NeoX and Falcon have no family adapter: the generic adapter finds their blocks and
linear layers, routers stay dense, fused MoE experts are pruned per expert and fused back, and the output folder
loads with stock ``from_pretrained`` and gives the in-memory pruned model's logits.  Channels come from groups
derived from each block's computation, inside every MoE expert too (fused back smaller, one width per block).
"""

from __future__ import annotations

import json

import pytest
import torch

pytestmark = pytest.mark.hf

from _hf_tiny import cli_prune, save_config_checkpoint  # noqa: E402

FAMILIES = ("phi3", "mixtral", "qwen2_moe", "gpt_neox", "falcon")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    from _hf_tiny import TEXT

    root = tmp_path_factory.mktemp("generic")
    (root / "calib.txt").write_text(TEXT * 4)
    return root


def _folder(workdir, family):
    from test_generic_adapter import tiny_config

    return save_config_checkpoint(workdir / family, tiny_config(family))


def _prune(workdir, family, out, *extra):
    return cli_prune(_folder(workdir, family), workdir / "calib.txt", out, *extra)


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


MOE = {  # tiny MoE checkpoints for channel pruning inside experts (name: family, config overrides)
    "mixtral": ("mixtral", {}),  # experts 48 channels: 34 kept, padded to 40 (grouped_mm's 16-byte rows)
    "qwen2_moe": ("qwen2_moe", {"moe_intermediate_size": 32}),  # experts 32 -> 23 kept, padded to 24; shared 48 -> 34
    "mixtral-unreached": ("mixtral", {"num_local_experts": 8, "num_experts_per_tok": 1}),  # top-1 of 8, few tokens
}


def _moe_folder(workdir, name):
    from test_generic_adapter import tiny_config

    family, overrides = MOE[name]
    config = tiny_config(family)
    for key, value in overrides.items():
        setattr(config, key, value)
    return save_config_checkpoint(workdir / f"moe-{name}", config)


def _prune_moe(workdir, name, nsamples="4", seqlen="16"):
    out = workdir / f"channels-moe-{name}"
    report = cli_prune(_moe_folder(workdir, name), workdir / "calib.txt", out, "--method", "fasp", "--structure",
                       "channels", "--sparsity", "0.3", nsamples=nsamples, seqlen=seqlen)
    return out, report


def _expert_slice(model, name: str):
    """``(fused module, expert index, parameter name)`` of ``...mlp.experts.3.down_proj``, else None."""
    head, _, leaf = name.rpartition(".")
    container, _, expert = head.rpartition(".")
    if not expert.isdigit() or not container.endswith("experts"):
        return None
    return model.get_submodule(container), int(expert), leaf


def _check_masked_moe(dense, pruned, plan, report):
    """The stock-loaded output equals the masked model -- the dense model with each pruned unit's down-projection
    column zeroed and the kept columns replaced by the pruned ones -- and its fused experts hold the kept gate/up
    rows (rows j and I + j) in order, then zero padding.  Returns the masked model."""
    import copy

    masked = copy.deepcopy(dense)
    widths = set()
    for record in report["layers"]:
        kept = list(plan["group_edits"][record["group"]]["kept_units"])  # MLP units are single columns
        k, name = len(kept), record["module"]
        found = _expert_slice(masked, name)
        if found is None:  # a shared expert: an ordinary linear down_proj
            old, new = masked.get_submodule(name).weight, pruned.get_submodule(name).weight
            assert new.shape[1] == k < old.shape[1]
        else:
            fused, e, leaf = found
            twin = pruned.get_submodule(name.rsplit(".", 2)[0])
            old, new = getattr(fused, leaf)[e], getattr(twin, leaf)[e]
            full, width = old.shape[1], new.shape[1]
            widths.add((record["block"], width))
            assert k <= width < full and width % 8 == 0 and width - k < 8  # padded up to a multiple of 8
            assert torch.all(new[:, k:] == 0)
            gate_up, dense_gate_up = twin.gate_up_proj[e], fused.gate_up_proj[e]
            rows = torch.tensor(kept)
            assert torch.equal(gate_up[:k], dense_gate_up[rows]) and torch.equal(gate_up[width:width + k],
                                                                                 dense_gate_up[full + rows])
            assert torch.all(gate_up[k:width] == 0) and torch.all(gate_up[width + k:] == 0)
            new = new[:, :k]
        restored = torch.zeros_like(old)
        restored[:, kept] = new
        with torch.no_grad():
            old.copy_(restored)
    assert len({w for _, w in widths}) == 1  # every expert of every block: one width
    x = torch.randint(0, dense.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        a, b = pruned(input_ids=x).logits, masked(input_ids=x).logits
    assert torch.isfinite(a).all()
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * float(b.abs().max()))
    return masked


@pytest.mark.parametrize("name", ["mixtral", "qwen2_moe"])
def test_channels_inside_moe_experts_are_physically_removed_and_reload_stock(workdir, one_thread, name):
    """Property: channels are pruned inside every expert (and Qwen2-MoE's shared expert) from the groups derived
    per expert; the experts are fused back smaller with one width, the config's width fields follow, the output
    loads with stock from_pretrained and equals the masked model; routers and everything outside the MLPs stay
    bit-identical."""
    from transformers import AutoModelForCausalLM

    out, report = _prune_moe(workdir, name)
    assert report["output_format"] == "stock" and report["params_after"] < report["params_before"]
    plan = json.loads((out / "plan" / "plan.json").read_text())
    dense = AutoModelForCausalLM.from_pretrained(_moe_folder(workdir, name)).eval()
    pruned = AutoModelForCausalLM.from_pretrained(out).eval()  # stock loader, no prunekit code
    experts = [r for r in report["layers"] if ".experts." in r["module"]]
    assert len(experts) == 2 * 4 and all(r["status"] == "solved" for r in report["layers"])
    _check_masked_moe(dense, pruned, plan, report)
    config = pruned.config
    if name == "mixtral":
        assert (config.intermediate_size, config.num_local_experts) == (40, 4)
    else:
        assert (config.moe_intermediate_size, config.shared_expert_intermediate_size) == (24, 34)
        assert config.intermediate_size == dense.config.intermediate_size  # unused by an all-MoE model: unchanged
    before, after = dict(dense.named_parameters()), dict(pruned.named_parameters())
    assert set(before) == set(after)
    for key, tensor in before.items():
        if ".mlp." not in key or key.endswith(("mlp.gate.weight", "shared_expert_gate.weight")):
            assert torch.equal(after[key], tensor), f"{key} must stay bit-identical"


def test_unreached_moe_experts_keep_their_siblings_width_by_weight_norm(workdir, one_thread):
    """Top-1 routing over 8 experts and 4 calibration tokens leave experts without statistics: each is pruned by
    weight-norm channel scores to the width of its siblings (dense would break the one-width rule), and says so."""
    from transformers import AutoModelForCausalLM

    out, report = _prune_moe(workdir, "mixtral-unreached", nsamples="1", seqlen="4")
    unreached = [r for r in report["layers"] if "weight-norm" in r["status"]]
    solved = [r for r in report["layers"] if r["status"] == "solved"]
    assert unreached and solved and len(unreached) + len(solved) == 2 * 8
    assert all(r["statistics"] == "none" and r["formulation"] == "WeightNormChannels" for r in unreached)
    assert {r["kept_units"] for r in report["layers"]} == {34}
    plan = json.loads((out / "plan" / "plan.json").read_text())
    dense = AutoModelForCausalLM.from_pretrained(_moe_folder(workdir, "mixtral-unreached")).eval()
    pruned = AutoModelForCausalLM.from_pretrained(out).eval()
    _check_masked_moe(dense, pruned, plan, report)


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
