"""Streaming a safetensors checkpoint block by block: headers-only reader, meta skeleton, materialize / release,
atomic shard writer + HF index, and one clear error per broken checkpoint."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from _tiny_models import tiny_model, tokens

pytestmark = pytest.mark.hf

from prunekit.errors import ModelError  # noqa: E402
from prunekit.models import checkpoint as ck  # noqa: E402
from prunekit.models.checkpoint import (  # noqa: E402
    CheckpointReader, ShardWriter, check_tensors, expected_tensors, materialize_, open_skeleton, release_,
    shard_name)


def _save(folder, kind="llama", dtype=torch.float32, shard="20KB"):
    model = tiny_model(kind, dtype=dtype)
    model.save_pretrained(folder, max_shard_size=shard) if shard else model.save_pretrained(folder)
    return model


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """{(kind, dtype): sharded folder}, saved once for the module."""
    out = {}
    for kind, dtype in [("llama", torch.float32), ("llama", torch.bfloat16), ("llama_mha", torch.float32)]:
        folder = tmp_path_factory.mktemp(f"{kind}_{str(dtype)[6:]}")
        _save(folder, kind, dtype, shard="20KB" if dtype == torch.float32 else "10KB")  # several shards
        out[kind, dtype] = folder
    return out


def _logits(model, x=None):
    with torch.no_grad():
        return model(tokens() if x is None else x).logits


def _stock(folder, **kw):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(folder), attn_implementation="eager", **kw).eval()


def _blocks(model):
    return [f"model.layers.{i}" for i in range(len(model.model.layers))]


class _Spy:
    """Wraps ``checkpoint._safe_open`` and records every open and every ``get_tensor``."""

    def __init__(self, monkeypatch):
        self.opened, self.read = [], []
        real = ck._safe_open
        spy = self

        class Handle:
            def __init__(self, f):
                self.f = f

            def __enter__(self):
                self.f.__enter__()
                return self

            def __exit__(self, *a):
                return self.f.__exit__(*a)

            def get_tensor(self, name):
                spy.read.append(name)
                return self.f.get_tensor(name)

            def __getattr__(self, name):
                return getattr(self.f, name)

        def fake(path, device="cpu"):
            spy.opened.append(str(path).rsplit("/", 1)[-1])
            return Handle(real(path, device))

        monkeypatch.setattr(ck, "_safe_open", fake)


# -- reader ------------------------------------------------------------------------------------------------------
def test_reader_reads_headers_only_and_reports_them(saved, monkeypatch):
    folder = saved["llama", torch.bfloat16]
    spy = _Spy(monkeypatch)
    reader = CheckpointReader(folder)
    assert spy.read == []  # construction never reads tensor data
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    assert len(reader.files) > 3 and set(reader.files) == set(index["weight_map"].values())
    assert sorted(spy.opened) == sorted(reader.files)
    assert reader.names == sorted(index["weight_map"])
    assert reader.shape("model.layers.0.mlp.up_proj.weight") == (64, 32)
    assert reader.dtype_of("model.norm.weight") == torch.bfloat16 and reader.dtype == torch.bfloat16
    assert reader.shard_of("model.norm.weight") == index["weight_map"]["model.norm.weight"]
    assert reader.total_bytes == index["metadata"]["total_size"]
    assert "model.norm.weight" in reader and "nope" not in reader
    assert CheckpointReader(saved["llama", torch.float32]).dtype == torch.float32


def test_load_reads_only_the_named_tensors_opening_each_shard_once(saved, monkeypatch):
    folder = saved["llama", torch.float32]
    reader = CheckpointReader(folder)
    spy = _Spy(monkeypatch)
    block = reader.load_prefix("model.layers.1")
    assert sorted(block) == reader.names_under("model.layers.1") and len(block) == 9
    assert sorted(spy.read) == sorted(block)  # no other block's tensor is read
    assert len(spy.opened) == len(set(spy.opened)) == len({reader.shard_of(n) for n in block})
    ref = tiny_model("llama", dtype=torch.float32).state_dict()
    for n, t in block.items():
        assert t.dtype == torch.float32 and torch.equal(t, ref[n])
    names = ["model.norm.weight", "model.embed_tokens.weight"]
    assert list(reader.load(names)) == names  # the caller's order
    with pytest.raises(ModelError, match="not in the checkpoint.*Fix"):
        reader.load(["model.layers.9.mlp.up_proj.weight"])
    with pytest.raises(ModelError, match="no tensor named model.layers.9"):
        reader.load_prefix("model.layers.9")
    assert "model.layers.1" not in "".join(reader.names_under("model.layers.10"))  # prefix is a whole component


# -- errors --------------------------------------------------------------------------------------------------------
def test_pickle_only_folder_is_refused_without_unpickling(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04 arbitrary bytes, never unpickled")
    with pytest.raises(ModelError, match=r"pickle-only checkpoint: prunekit never unpickles \(it can run code\)\. "
                                         r"Fix: convert it once.*safe_serialization=True.*pytorch_model\.bin"):
        CheckpointReader(tmp_path)


def test_folder_without_weights(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelError, match="no weights in .*Fix"):
        CheckpointReader(tmp_path)
    with pytest.raises(ModelError, match="does not exist"):
        CheckpointReader(tmp_path / "missing")


@pytest.mark.parametrize("damage", ["garbage_header", "truncated"])
def test_corrupt_shard_is_named(tmp_path, saved, damage):
    folder = tmp_path / "m"
    shutil.copytree(saved["llama", torch.float32], folder)
    shard = sorted(folder.glob("model-*.safetensors"))[2]
    data = shard.read_bytes()
    shard.write_bytes(b"\xff" * 64 + data[64:] if damage == "garbage_header" else data[: len(data) // 2])
    with pytest.raises(ModelError, match=rf"corrupt or truncated safetensors shard .*{shard.name}.*Fix"):
        CheckpointReader(folder)


def test_index_naming_a_missing_shard(tmp_path, saved):
    folder = tmp_path / "m"
    shutil.copytree(saved["llama", torch.float32], folder)
    gone = sorted(folder.glob("model-*.safetensors"))[1]
    gone.unlink()
    with pytest.raises(ModelError, match=rf"names shard\(s\) missing .*{gone.name}.*Fix: download"):
        CheckpointReader(folder)


def test_tensor_in_two_shards(tmp_path):
    from safetensors.torch import save_file

    save_file({"a": torch.zeros(2), "b": torch.ones(3)}, str(tmp_path / "x.safetensors"))
    save_file({"b": torch.ones(3)}, str(tmp_path / "y.safetensors"))
    with pytest.raises(ModelError, match=r"tensor 'b' is present in two shards .*x\.safetensors and y\.safetensors"):
        CheckpointReader(tmp_path)


def test_index_naming_a_tensor_its_shard_lacks(tmp_path, saved):
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "m"
    shutil.copytree(saved["llama", torch.float32], folder)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shard = index["weight_map"]["model.norm.weight"]
    state = load_file(str(folder / shard))
    del state["model.norm.weight"]
    save_file(state, str(folder / shard), metadata={"format": "pt"})
    with pytest.raises(ModelError, match=rf"says tensor 'model.norm.weight' is in {shard}, which does not hold it"):
        CheckpointReader(folder)


def test_check_tensors_missing_unexpected_and_mismatched(tmp_path):
    from safetensors.torch import load_file, save_file

    _save(tmp_path, "llama", shard=None)
    path = tmp_path / "model.safetensors"
    good = load_file(str(path))
    model = open_skeleton(tmp_path, torch.float32)
    expected, optional = expected_tensors(model)
    check_tensors(CheckpointReader(tmp_path), expected, optional=optional)  # the intact checkpoint passes

    state = dict(good)
    del state["model.layers.1.self_attn.o_proj.weight"]
    state["model.layers.0.mlp.up_proj.weight"] = torch.zeros(65, 32)
    state["extra.weight"] = torch.zeros(1)
    save_file(state, str(path), metadata={"format": "pt"})
    reader = CheckpointReader(tmp_path)
    with pytest.raises(ModelError) as e:
        check_tensors(reader, expected, optional=optional)
    msg = str(e.value)
    assert "the checkpoint does not match its config.json" in msg and "Fix:" in msg
    assert "missing 1 [model.layers.1.self_attn.o_proj.weight]" in msg
    assert "unexpected 1 [extra.weight]" in msg
    assert "model.layers.0.mlp.up_proj.weight: checkpoint (65, 32) vs config (64, 32)" in msg
    check_tensors(reader, {k: v for k, v in expected.items() if k != "model.layers.0.mlp.up_proj.weight"},
                  optional=optional | {"model.layers.1.self_attn.o_proj.weight"},
                  ignore_unexpected={"extra.weight", "model.layers.0.mlp.up_proj.weight"})


def test_check_tensors_counts_and_truncates_long_lists(tmp_path):
    from safetensors.torch import save_file

    save_file({f"t{i}": torch.zeros(1) for i in range(7)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(ModelError, match=r"unexpected 6 \[t1, t2, t3, t4, \.\.\.\]; shape mismatch 1"):
        check_tensors(CheckpointReader(tmp_path), {"t0": (2,)}, optional=set())


# -- skeleton, materialize, release ---------------------------------------------------------------------------
def test_open_skeleton_has_meta_parameters_and_real_buffers(saved):
    folder = saved["llama", torch.float32]
    model = open_skeleton(folder, torch.bfloat16)
    assert not model.training and model.config._attn_implementation == "eager"
    params = dict(model.named_parameters())
    assert params and all(p.device.type == "meta" and p.dtype == torch.bfloat16 and not p.requires_grad
                          for p in params.values())
    stock = dict(_stock(folder, dtype=torch.bfloat16).named_buffers())
    buffers = dict(model.named_buffers())
    assert buffers.keys() == stock.keys() and buffers
    for n, b in buffers.items():
        assert b.device.type == "cpu" and torch.equal(b, stock[n]), n
    config = model.config.__class__.from_pretrained(str(folder))
    config._attn_implementation = "sdpa"
    other = open_skeleton(config, torch.float32, attn_implementation="sdpa")
    assert other.config._attn_implementation == "sdpa" and config.dtype == torch.float32
    assert open_skeleton(config, torch.float32).config._attn_implementation == "eager"
    assert config._attn_implementation == "sdpa"  # the caller's config is not modified
    with pytest.raises(ModelError, match="no config.json"):
        open_skeleton(folder / "nowhere", torch.float32)


def test_expected_tensors_marks_tied_head_optional(saved):
    tied = open_skeleton(saved["llama_mha", torch.float32], torch.float32)
    expected, optional = expected_tensors(tied)
    assert "lm_head.weight" in expected and optional == {"lm_head.weight"}
    reader = CheckpointReader(saved["llama_mha", torch.float32])
    assert "lm_head.weight" not in reader  # save_pretrained drops the tied copy
    check_tensors(reader, expected, optional=optional)
    with pytest.raises(ModelError, match=r"missing 1 \[lm_head.weight\]"):
        check_tensors(reader, expected)
    untied = open_skeleton(saved["llama", torch.float32], torch.float32)
    assert expected_tensors(untied)[1] == set()


def _stream_in(folder, dtype):
    """The skeleton, filled non-block tensors first, then block by block."""
    reader = CheckpointReader(folder)
    model = open_skeleton(folder, dtype)
    expected, optional = expected_tensors(model)
    check_tensors(reader, expected, optional=optional)
    blocks = _blocks(model)
    rest = [n for n in reader.names if not any(n.startswith(b + ".") for b in blocks)]
    materialize_(model, reader.load(rest))
    for i, b in enumerate(blocks):
        assert all(p.device.type == "meta" for p in model.model.layers[i].parameters())
        materialize_(model, reader.load_prefix(b))
        assert all(p.device.type == "cpu" for p in model.model.layers[i].parameters())
    return model


@pytest.mark.parametrize("kind,dtype", [("llama", torch.float32), ("llama", torch.bfloat16),
                                        ("llama_mha", torch.float32)])
def test_round_trip_streamed_in_and_written_out(tmp_path, saved, kind, dtype):
    folder = saved[kind, dtype]
    model = _stream_in(folder, dtype)
    assert all(p.device.type == "cpu" and p.dtype == dtype and not p.requires_grad for p in model.parameters())
    stock = _stock(folder, dtype=dtype)
    assert torch.equal(_logits(model), _logits(stock))
    tied = kind == "llama_mha"
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tied

    out = tmp_path / "out"
    writer = ShardWriter(out)
    blocks = _blocks(model)
    state = model.state_dict()
    n = len(blocks) + 1
    for i, b in enumerate(blocks):
        assert not writer.exists(shard_name(i, n))
        writer.write(shard_name(i, n), {k: v for k, v in state.items() if k.startswith(b + ".")})
        assert writer.exists(shard_name(i, n))
    skip = {"lm_head.weight"} if tied else set()
    writer.write(shard_name(n - 1, n), {k: v for k, v in state.items()
                                        if not any(k.startswith(b + ".") for b in blocks) and k not in skip})
    index_path = writer.finalize()
    for name in ("config.json", "generation_config.json"):
        shutil.copy(folder / name, out / name)
    index = json.loads(index_path.read_text())
    assert set(index["weight_map"].values()) == {shard_name(i, n) for i in range(n)}
    assert index["metadata"]["total_size"] == CheckpointReader(out).total_bytes == CheckpointReader(folder).total_bytes
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp file left
    with ck._safe_open(out / shard_name(0, n)) as f:
        assert f.metadata()["format"] == "pt"

    again = _stock(out)  # dtype from the checkpoint: bf16 in -> bf16 out
    assert again.dtype == dtype and next(again.parameters()).dtype == dtype
    assert torch.equal(_logits(again), _logits(stock))


def test_release_then_materialize_gives_the_same_block_output(saved):
    folder = saved["llama", torch.float32]
    reader = CheckpointReader(folder)
    model = _stream_in(folder, torch.float32)
    before = _logits(model)
    layer = model.model.layers[0]
    buffers = {n: b for n, b in model.named_buffers()}
    release_(layer)
    assert all(p.device.type == "meta" and not p.requires_grad for p in layer.parameters())
    assert layer.mlp.up_proj.weight.shape == (64, 32) and layer.mlp.up_proj.weight.dtype == torch.float32
    assert all(b.device.type == "cpu" and b is buffers[n] for n, b in model.named_buffers())
    with pytest.raises(RuntimeError, match="meta"):  # the released block no longer holds weights
        _logits(model)
    materialize_(model, reader.load_prefix("model.layers.0"))
    assert torch.equal(_logits(model), before)


def test_release_keeps_ties_and_materialize_reties(saved):
    folder = saved["llama_mha", torch.float32]
    reader = CheckpointReader(folder)
    model = _stream_in(folder, torch.float32)
    before = _logits(model)
    release_(model)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert model.lm_head.weight.device.type == "meta"
    release_(model.lm_head)  # no-op on meta
    materialize_(model, reader.load(reader.names))
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert torch.equal(_logits(model), before)


def test_materialize_rejects_unknown_names_and_wrong_shapes_and_casts(saved):
    model = open_skeleton(saved["llama", torch.float32], torch.bfloat16)
    with pytest.raises(ModelError, match=r"not entries of the model: \['nope'\]"):
        materialize_(model, {"nope": torch.zeros(1)})
    with pytest.raises(ModelError, match="wrong shape"):
        materialize_(model, {"model.norm.weight": torch.zeros(31)})
    assert model.model.norm.weight.device.type == "meta"  # nothing assigned on error
    materialize_(model, {"model.norm.weight": torch.full((32,), 1.5, dtype=torch.float64)})
    w = model.model.norm.weight
    assert isinstance(w, torch.nn.Parameter) and w.dtype == torch.bfloat16 and not w.requires_grad
    assert torch.equal(w, torch.full((32,), 1.5, dtype=torch.bfloat16))


# -- writer ----------------------------------------------------------------------------------------------------
def test_writer_single_shard_with_index_loads_stock(tmp_path, saved):
    folder = saved["llama", torch.float32]
    out = tmp_path / "single"
    writer = ShardWriter(out)
    state = _stock(folder, dtype=torch.float32).state_dict()
    writer.write("model.safetensors", state)
    writer.finalize()
    shutil.copy(folder / "config.json", out / "config.json")
    assert json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]["model.norm.weight"] \
        == "model.safetensors"
    assert torch.equal(_logits(_stock(out)), _logits(_stock(folder)))
    writer.write("extra-00001.safetensors", {"x": torch.zeros(1)})
    with pytest.raises(ModelError, match="would read only model.safetensors"):
        writer.finalize()


def test_writer_clones_shared_storage_and_copies_views(tmp_path):
    from safetensors.torch import load_file

    base = torch.arange(12.0).reshape(3, 4)
    tensors = {"a": base, "b": base[1], "c": base.t(), "d": base}
    ShardWriter(tmp_path).write("s.safetensors", tensors)
    back = load_file(str(tmp_path / "s.safetensors"))
    assert all(torch.equal(back[k], v) for k, v in tensors.items())
    assert torch.equal(base, torch.arange(12.0).reshape(3, 4))  # the caller's tensors are untouched


def test_writer_refuses_meta_bad_names_foreign_files_and_duplicates(tmp_path):
    writer = ShardWriter(tmp_path / "out")
    with pytest.raises(ModelError, match="meta device"):
        writer.write("a.safetensors", {"w": torch.empty(2, device="meta")})
    for bad in ("a.bin", "../a.safetensors", ".a.safetensors"):
        with pytest.raises(ModelError, match="bad shard name"):
            writer.write(bad, {"w": torch.zeros(1)})
    with pytest.raises(ModelError, match="no shard in"):
        writer.finalize()
    foreign = tmp_path / "out" / "user.safetensors"
    foreign.write_bytes(b"the user's file")
    with pytest.raises(ModelError, match="refusing to overwrite .*user.safetensors"):
        writer.write("user.safetensors", {"w": torch.zeros(1)})
    assert foreign.read_bytes() == b"the user's file"
    foreign.unlink()
    writer.write("a.safetensors", {"w": torch.zeros(1)})
    writer.write("a.safetensors", {"w": torch.ones(1)})  # its own shard may be rewritten (resume)
    writer.write("b.safetensors", {"w": torch.ones(1)})
    with pytest.raises(ModelError, match="tensor 'w' is in two shards"):
        writer.finalize()
    writer.write("b.safetensors", {"v": torch.ones(2)})
    writer.finalize()
    writer.finalize()  # its own index may be rewritten
    (tmp_path / "out" / "model.safetensors.index.json").write_text('{"weight_map": {}}')
    with pytest.raises(ModelError, match="refusing to overwrite .*index.json"):
        writer.finalize()
