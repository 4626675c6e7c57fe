"""Saving and loading pruned models: identical logits, stock loading (zero-padded where widths differ), the
rebuild format for biases no stock class holds, the output marker, atomicity and overwrite safety."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from _tiny_models import FAMILY_TYPES, tiny_model, tokens

pytestmark = pytest.mark.hf

from prunekit.errors import ModelError  # noqa: E402
from prunekit.models.plan import GroupEdit, ModuleEdit, PruningPlan  # noqa: E402
from prunekit.models.saving import load_pruned, save_pruned  # noqa: E402
from prunekit.models.surgery import CompactLinear, apply_, count_parameters  # noqa: E402

MARKER = "prunekit_output.json"


def _plan(model, hetero, kinds=None):
    from prunekit.models.graph import coupled_groups

    plan = PruningPlan()
    for g in coupled_groups(model, kinds=kinds):
        if g.kind == "vo_channel" or g.num_units < 2:
            continue
        n_keep = max(1, g.num_units // (2 + g.block)) if hetero else g.num_units // 2
        plan.group_edits[g.name] = GroupEdit(g.name, g.kind, tuple(range(1, n_keep + 1)), g.num_units)
    return plan


def _logits(model, x):
    with torch.no_grad():
        return model(x).logits


def _pruned(family, hetero, kinds=None):
    model = tiny_model(family, dtype=torch.float32)
    if family != "gemma2":  # what from_pretrained gives back (eager for Gemma2: sdpa has no logit soft-capping)
        model.config._attn_implementation = "sdpa"
    plan = _plan(model, hetero, kinds)
    apply_(model, plan)
    return model, plan


def _marker(out):
    return json.loads((out / MARKER).read_text())


def _config(out):
    return json.loads((out / "config.json").read_text())


def _stock(out):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(out).eval()


def _saved_tensors(out):
    from safetensors.torch import load_file

    state = {}
    for f in sorted(out.glob("*.safetensors")):
        state.update(load_file(str(f)))
    return state


def _block_widths(model):
    from prunekit.models.adapters import adapter_for

    adapter = adapter_for(model)
    return [{rel: tuple(adapter.get_weight(b.get_submodule(rel)).shape) for rel in adapter.linear_names(b)}
            for b in adapter.blocks(model)]


@pytest.mark.parametrize("family", FAMILY_TYPES)
@pytest.mark.parametrize("hetero", [False, True], ids=["uniform", "hetero"])
def test_save_load_roundtrip_gives_identical_logits(tmp_path, family, hetero):
    model, plan = _pruned(family, hetero)
    out = save_pruned(model, None, tmp_path / "out", plan=plan)
    marker = _marker(out)
    assert marker["sparsity_kind"] == "structured" and marker["speedup_claimed"] is True
    # group edits add no bias, so every family has an exact stock form: no prunekit metadata in config.json
    assert marker["format"] == "stock" and "prunekit" not in _config(out), marker
    loaded, tok = load_pruned(out)
    assert tok is None
    x = tokens()
    assert torch.allclose(_logits(loaded, x), _logits(model, x), atol=1e-5)
    # the stock form costs exactly the parameters the marker declares (zero padding of narrower layers/heads)
    assert count_parameters(loaded) == count_parameters(model) + marker["added_parameters"]
    llama_like = family.startswith(("llama", "mistral", "qwen", "gemma"))
    if llama_like and not hetero:  # uniform widths and explicit head_dim: written as they are
        assert marker["added_parameters"] == 0
        assert {k: v.shape for k, v in loaded.state_dict().items()} == \
            {k: v.shape for k, v in model.state_dict().items()}
    else:  # heterogeneous widths, or OPT/GPT-2 heads (head_dim = hidden / heads): padded back
        assert marker["added_parameters"] > 0
        widths = _block_widths(loaded)
        assert all(w == widths[0] for w in widths), widths  # every block has the stock (uniform) shapes
    files = {p.name for p in out.rglob("*")}
    assert {"model.safetensors.index.json", "model-rest.safetensors", "model-block-00000.safetensors",
            "model-block-00001.safetensors"} <= files, files
    assert not any(f.endswith((".bin", ".pt", ".pth", ".pkl")) for f in files)
    assert (out / "plan" / "plan.json").is_file()


@pytest.mark.parametrize("family", ["llama", "qwen3", "gemma3_text", "opt", "gpt2"])
def test_uniform_ffn_widths_load_with_stock_from_pretrained(tmp_path, family):
    kinds = ("glu_channel", "ffn_channel") if family in ("opt", "gpt2") else None
    model, _ = _pruned(family, hetero=False, kinds=kinds)
    out = save_pruned(model, None, tmp_path / "m")
    assert _marker(out)["format"] == "stock" and "prunekit" not in _config(out)
    assert _marker(out)["added_parameters"] == 0  # uniform widths need no padding
    stock = _stock(out)
    x = tokens()
    assert torch.allclose(_logits(stock, x), _logits(model, x), atol=1e-5)
    assert count_parameters(stock) == count_parameters(model)


def test_heterogeneous_widths_are_zero_padded_for_stock_loading(tmp_path):
    model, _ = _pruned("llama", hetero=True)
    down0, down1 = (model.model.layers[i].mlp.down_proj for i in (0, 1))
    assert down0.in_features != down1.in_features, "the plan was expected to give heterogeneous widths"
    out = save_pruned(model, None, tmp_path / "h")
    marker = _marker(out)
    assert marker["format"] == "stock" and "prunekit" not in _config(out) and marker["added_parameters"] > 0
    stock = _stock(out)  # stock loading gives the pruned model exactly, never the wrong shapes
    assert torch.allclose(_logits(stock, tokens()), _logits(model, tokens()), atol=1e-5)
    assert count_parameters(stock) == count_parameters(model) + marker["added_parameters"]
    width = max(down0.in_features, down1.in_features)
    assert stock.config.intermediate_size == width
    s0 = stock.model.layers[0].mlp.down_proj.weight
    assert s0.shape == (32, width) and torch.equal(s0[:, :down0.in_features], down0.weight)
    assert not s0[:, down0.in_features:].any(), "padded columns must be zero"
    # a loaded (padded) model can be saved again and reloaded; it is uniform now, so nothing more is padded
    again = save_pruned(stock, None, tmp_path / "h2")
    assert _marker(again)["format"] == "stock" and _marker(again)["added_parameters"] == 0
    reloaded, _ = load_pruned(again)
    assert torch.allclose(_logits(reloaded, tokens()), _logits(model, tokens()), atol=1e-5)


@pytest.mark.parametrize("family", ["qwen2", "opt", "gpt2"])
def test_compacted_vo_channels_roundtrip(tmp_path, family):
    """FASP's V/O channels (CompactLinear: smaller weights + index buffers) are scattered into full-width,
    zero-filled stock modules; stock from_pretrained loads them exactly."""
    from prunekit.models.graph import coupled_groups

    model = tiny_model(family, dtype=torch.float32)
    model.config._attn_implementation = "sdpa"
    plan = _plan(model, hetero=True)
    for g in coupled_groups(model, kinds="vo_channel"):
        plan.group_edits[g.name] = GroupEdit(g.name, g.kind, tuple(range(0, g.num_units, 3)), g.num_units)
    apply_(model, plan)
    compact = [n for n, m in model.named_modules() if isinstance(m, CompactLinear)]
    assert len(compact) == 4, compact  # v and o of 2 blocks
    out = save_pruned(model, None, tmp_path / "vo", plan=plan)
    marker = _marker(out)
    assert marker["format"] == "stock" and "prunekit" not in _config(out) and marker["added_parameters"] > 0
    assert not [k for k in _saved_tensors(out) if k.endswith(("in_index", "out_index"))]
    stock = _stock(out)
    assert not any(isinstance(stock.get_submodule(n), CompactLinear) for n in compact)
    assert torch.allclose(_logits(stock, tokens()), _logits(model, tokens()), atol=1e-5)
    assert count_parameters(stock) == count_parameters(model) + marker["added_parameters"]
    loaded, _ = load_pruned(out)
    assert torch.allclose(_logits(loaded, tokens()), _logits(model, tokens()), atol=1e-5)


def test_bias_with_a_stock_flag_switches_the_flag_on(tmp_path):
    """LLaMA's o_proj bias (e.g. FLAP's compensation) is held by ``attention_bias``: stock format, zero biases
    elsewhere, loaded exactly by stock from_pretrained."""
    model = tiny_model("llama", dtype=torch.float32)
    name = "model.layers.0.self_attn.o_proj"
    apply_(model, PruningPlan(module_edits={name: ModuleEdit(name, bias=torch.randn(32))}))
    out = save_pruned(model, None, tmp_path / "b")
    config, marker = _config(out), _marker(out)
    assert marker["format"] == "stock" and "prunekit" not in config
    assert config["attention_bias"] is True and not config.get("mlp_bias")
    assert marker["added_parameters"] > 0  # zero biases on q/k/v and block 1's o_proj
    stock = _stock(out)
    assert torch.equal(stock.get_submodule(name).bias, model.get_submodule(name).bias)
    assert not stock.get_submodule("model.layers.1.self_attn.o_proj").bias.any()
    assert torch.allclose(_logits(stock, tokens()), _logits(model, tokens()), atol=1e-5)


@pytest.mark.parametrize("family", ["mistral", "qwen2"])
def test_bias_without_a_stock_flag_forces_the_prunekit_loader(tmp_path, family):
    """A FLAP bias on Mistral/Qwen2 ``down_proj`` has no stock form: format "rebuild", reloaded exactly by
    prunekit.load_pruned, also with heterogeneous widths, and again after a second save."""
    model, _ = _pruned(family, hetero=True, kinds="glu_channel")
    name = "model.layers.0.mlp.down_proj"
    apply_(model, PruningPlan(module_edits={name: ModuleEdit(name, bias=torch.randn(32))}))
    out = save_pruned(model, None, tmp_path / "b")
    marker, meta = _marker(out), _config(out)["prunekit"]
    assert marker["format"] == meta["format"] == "rebuild" and meta["version"] == 2
    assert any(name in note for note in meta["notes"]), meta["notes"]
    assert meta["base_config"]["model_type"] == model.config.model_type
    from prunekit.models.adapters import adapter_for

    adapter = adapter_for(model)
    expected = {f"{adapter.block_prefix(model, i)}.{rel}": list(adapter.get_weight(b.get_submodule(rel)).shape)
                for i, b in enumerate(adapter.blocks(model)) for rel in adapter.linear_names(b)}
    assert {k: v[:2] for k, v in meta["linear_shapes"].items()} == expected
    assert meta["linear_shapes"][name][2] is True
    loaded, _ = load_pruned(out)
    assert torch.equal(loaded.get_submodule(name).bias, model.get_submodule(name).bias)
    assert {k: v.shape for k, v in loaded.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    assert torch.allclose(_logits(loaded, tokens()), _logits(model, tokens()), atol=1e-5)
    # a stock loader must fail loudly instead of dropping the bias silently
    from transformers import AutoModelForCausalLM

    with pytest.raises(Exception, match="prunekit-rebuild"):
        AutoModelForCausalLM.from_pretrained(out)
    again = save_pruned(loaded, None, tmp_path / "b2")
    assert _marker(again)["format"] == "rebuild"
    reloaded, _ = load_pruned(again)
    assert torch.allclose(_logits(reloaded, tokens()), _logits(model, tokens()), atol=1e-5)


@pytest.mark.parametrize("kind", ["unstructured", "n:m", "channels"])
def test_unstructured_results_are_labelled_dense_with_zeros(tmp_path, kind):
    model = tiny_model("llama", dtype=torch.float32)
    name = "model.layers.0.mlp.down_proj"
    w = model.get_submodule(name).weight.detach().clone()
    w[:, ::2] = 0
    plan = PruningPlan(module_edits={name: ModuleEdit(name, weight=w, sparsity_kind=kind)})
    apply_(model, plan)
    out = save_pruned(model, None, tmp_path / "u", plan=plan)
    marker = _marker(out)
    assert marker["sparsity_kind"] == kind and marker["speedup_claimed"] is False and marker["format"] == "stock"
    assert marker["added_parameters"] == 0 and "prunekit" not in _config(out)
    assert torch.equal(_saved_tensors(out)[f"{name}.weight"], w)  # dense tensor, zeros stored in place
    loaded, _ = load_pruned(out)
    assert torch.equal(loaded.get_submodule(name).weight, w)


def test_mixed_plans_are_labelled_and_claim_no_speedup(tmp_path):
    model, plan = _pruned("llama", hetero=False, kinds="glu_channel")
    name = "model.layers.0.self_attn.q_proj"
    w = model.get_submodule(name).weight.detach().clone()
    w[:, :4] = 0
    plan.module_edits[name] = ModuleEdit(name, weight=w, sparsity_kind="unstructured")
    plan.module_edits["model.layers.0.mlp.down_proj"] = ModuleEdit("model.layers.0.mlp.down_proj",
                                                                   sparsity_kind="channels")
    out = save_pruned(model, None, tmp_path / "mix", plan=plan)
    marker = _marker(out)
    assert marker["sparsity_kind"] == "structured+unstructured" and marker["speedup_claimed"] is False
    assert _marker(save_pruned(model, None, tmp_path / "d"))["sparsity_kind"] == "dense"


def test_failure_mid_save_publishes_nothing_at_the_output(tmp_path):
    model, plan = _pruned("llama", hetero=True)

    class BrokenTokenizer:
        def save_pretrained(self, path):
            (tmp_path / "reached").write_text("yes")
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        save_pruned(model, BrokenTokenizer(), tmp_path / "out", plan=plan)
    assert (tmp_path / "reached").exists(), "the failure must happen after the weights were written"
    assert not (tmp_path / "out").exists()
    # a failed save (not resumable) leaves nothing: no partial folder, no lock, nothing that looks finished
    leftovers = sorted(p.name for p in tmp_path.iterdir())
    assert leftovers == ["reached"], leftovers
    # a plain retry publishes a complete folder
    out = save_pruned(model, None, tmp_path / "out", plan=plan)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "reached"]
    assert torch.allclose(_logits(load_pruned(out)[0], tokens()), _logits(model, tokens()), atol=1e-5)


def test_existing_folder_is_kept_unless_overwrite(tmp_path):
    model, _ = _pruned("llama", hetero=False)
    out = save_pruned(model, None, tmp_path / "o")
    with pytest.raises(ModelError, match="exists"):
        save_pruned(model, None, out)
    assert _config(out)["intermediate_size"] == 32  # untouched by the refused save
    smaller = copy.deepcopy(model)
    apply_(smaller, _plan(smaller, hetero=False, kinds="glu_channel"))
    save_pruned(smaller, None, out, overwrite=True)
    loaded, _ = load_pruned(out)
    assert loaded.config.intermediate_size == 16
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]


def test_overwrite_never_replaces_a_folder_prunekit_did_not_write(tmp_path):
    model, _ = _pruned("llama", hetero=False)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("precious")
    (foreign / "config.json").write_text("{}")
    with pytest.raises(ModelError, match="not written by prunekit"):
        save_pruned(model, None, foreign, overwrite=True)
    assert sorted(p.name for p in foreign.iterdir()) == ["config.json", "notes.txt"]
    assert (foreign / "notes.txt").read_text() == "precious" and (foreign / "config.json").read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"], "no working folder or lock left behind"
    # an empty folder holds nothing to lose: it is filled
    (tmp_path / "empty").mkdir()
    assert _marker(save_pruned(model, None, tmp_path / "empty"))["format"] == "stock"


def test_load_pruned_errors_name_the_folder(tmp_path):
    with pytest.raises(ModelError, match="no config.json"):
        load_pruned(tmp_path)
