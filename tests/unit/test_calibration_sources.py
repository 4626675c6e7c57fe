"""Calibration data the way users bring them (issue 12, item 2): every source becomes one CalibrationSet, prunes a
tiny model from Python and (string sources) from a recipe file, padding never reaches a statistic, and offline or
malformed data give one clear DataError."""

from __future__ import annotations

import copy
import gzip
import json
import random

import pytest
import torch

import prunekit
from _checkpoints import write_checkpoint
from _hf_tiny import TEXT, tiny_model, tiny_tokenizer
from prunekit.calibration_sources import calibration_set, check_source
from prunekit.corpora import C4_FILE, HubSource, document_windows
from prunekit.errors import DataError
from prunekit.models.adapters import adapter_for
from prunekit.models.calibration import capture_block_inputs, collect_grams, forward_block
from prunekit.models.recipe import CalibrationSettings, Recipe

pytestmark = pytest.mark.hf
datasets = pytest.importorskip("datasets")

SENTENCES = [s.strip() + "." for s in TEXT.split(".") if s.strip()][:6]
SETTINGS = CalibrationSettings(source="self", nsamples=2, seqlen=16)


@pytest.fixture(scope="module")
def tok():
    tokenizer = tiny_tokenizer()
    tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


@pytest.fixture(scope="module")
def dense(tok):
    return tiny_model("llama", vocab_size=len(tok))


def recipe(**calibration) -> dict:
    return dict(method="wanda", structure="unstructured", sparsity=0.5,
                calibration=dict(dict(source="self", nsamples=2, seqlen=16), **calibration))


def ids_rows(tok, n=5, length=20) -> torch.Tensor:
    ids = tok(TEXT, return_tensors="pt").input_ids[0]
    return torch.stack([ids[i * length:(i + 1) * length] for i in range(n)])


def char_ids(text: str) -> list[int]:
    return [ord(c) % 256 for c in text]


# ---------------------------------------------------------------------------------------------- Python sources
PYTHON_SOURCES = ["tensor", "list of strings", "BatchEncoding padded", "dict of lists, ragged", "Dataset text",
                  "Dataset input_ids", "IterableDataset text", "IterableDataset input_ids", "DataLoader tensors",
                  "DataLoader dicts", "DataLoader TensorDataset", "DataLoader strings", "records text",
                  "records input_ids"]


def _sources(tok):
    """{name: (source builder, expected calibration shape)} for every in-memory kind."""
    rows = ids_rows(tok)
    short = tok(SENTENCES[:2], padding=True, return_tensors="pt")
    records_ids = [{"input_ids": r.tolist()} for r in rows]
    r = rows[0]
    table = [
        ("tensor", lambda: rows[:3, :12], (3, 12)),
        ("list of strings", lambda: [TEXT, TEXT], (2, 16)),
        ("BatchEncoding padded", lambda: short, tuple(short.input_ids.shape)),
        ("dict of lists, ragged", lambda: {"input_ids": [r[:7].tolist(), r[:11].tolist()]}, (2, 11)),
        ("Dataset text", lambda: datasets.Dataset.from_dict({"text": SENTENCES * 10}), (2, 16)),
        ("Dataset input_ids", lambda: datasets.Dataset.from_dict({"input_ids": rows.tolist()}), (2, 16)),
        ("IterableDataset text", lambda: datasets.IterableDataset.from_generator(
            lambda: ({"text": TEXT} for _ in range(3))), (2, 16)),
        ("IterableDataset input_ids", lambda: datasets.IterableDataset.from_generator(
            lambda: ({"input_ids": r.tolist()} for r in ids_rows(tok))), (2, 16)),
        ("DataLoader tensors", lambda: torch.utils.data.DataLoader(rows, batch_size=2), (2, 16)),
        ("DataLoader dicts", lambda: torch.utils.data.DataLoader(
            [{"input_ids": r, "attention_mask": (torch.arange(20) < 9 + i).long()} for i, r in enumerate(rows)],
            batch_size=2), (2, 10)),
        ("DataLoader TensorDataset", lambda: torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(rows), batch_size=3), (2, 16)),
        ("DataLoader strings", lambda: torch.utils.data.DataLoader([TEXT] * 3, batch_size=2), (2, 16)),
        ("records text", lambda: [{"text": s, "id": i} for i, s in enumerate(SENTENCES * 10)], (2, 16)),
        ("records input_ids", lambda: records_ids, (2, 16)),
    ]
    assert [name for name, _, _ in table] == PYTHON_SOURCES
    return {name: (build, shape) for name, build, shape in table}


@pytest.mark.parametrize("name", PYTHON_SOURCES)
def test_each_python_source_prunes_a_tiny_model(name, tok, dense):
    build, shape = _sources(tok)[name]
    model = copy.deepcopy(dense)
    result = prunekit.prune(model, recipe(), build(), tokenizer=tok, progress=False)
    assert tuple(result.report.calibration_shape) == shape, name
    assert result.report.layers and all(r.sparsity == pytest.approx(0.5) for r in result.report.layers), name
    assert all(0 <= r.relative_error < 1 for r in result.report.layers), name
    weight = model.model.layers[0].mlp.down_proj.weight
    assert (weight == 0).float().mean().item() == pytest.approx(0.5), name


def test_plan_and_prune_ignore_what_the_padding_holds(tok, dense):
    """End to end through prunekit.plan (api -> runner): the pad ids of a padded batch change nothing."""
    model = copy.deepcopy(dense)
    before = model.model.layers[1].mlp.up_proj.weight.clone()
    batch = tok(SENTENCES[:3], padding=True, return_tensors="pt")
    assert not bool(batch.attention_mask.all())
    other = {"input_ids": batch.input_ids.masked_fill(batch.attention_mask == 0, 7),
             "attention_mask": batch.attention_mask}
    objectives = [[r.objective for r in prunekit.plan(model, recipe(), source, progress=False).records]
                  for source in (batch, other, other["input_ids"])]  # the last one: pads counted as tokens
    assert torch.equal(model.model.layers[1].mlp.up_proj.weight, before)
    assert objectives[0] == pytest.approx(objectives[1], rel=1e-5)
    assert objectives[0] != pytest.approx(objectives[2], rel=1e-3)
    pruned = prunekit.prune(model, recipe(), other, progress=False)
    assert tuple(pruned.report.calibration_shape) == tuple(batch.input_ids.shape)
    assert [r.objective for r in pruned.report.layers] == pytest.approx(objectives[0], rel=1e-5)


def test_text_sampling_is_seeded_and_matches_random_windows(tok):
    from prunekit.data import random_windows

    a = calibration_set(SENTENCES, tok, SETTINGS)
    b = calibration_set(SENTENCES, tok, SETTINGS)
    c = calibration_set(SENTENCES, tok, CalibrationSettings(source="self", nsamples=2, seqlen=16, seed=1))
    expected = random_windows(tok("\n\n".join(SENTENCES), return_tensors="pt").input_ids[0], 2, 16, 0)
    assert torch.equal(a.input_ids, expected) and torch.equal(a.input_ids, b.input_ids)
    assert not torch.equal(a.input_ids, c.input_ids) and a.attention_mask is None


def test_token_rows_drop_padding_cut_to_seqlen_and_mask_the_rest(tok):
    rows = ids_rows(tok)
    loader = torch.utils.data.DataLoader(
        [{"input_ids": r, "attention_mask": (torch.arange(20) >= 15 - 5 * i).long()} for i, r in enumerate(rows)],
        batch_size=2)  # left padding: 5, 10, 15 ... real tokens at the end
    calib = calibration_set(loader, tok, CalibrationSettings(source="self", nsamples=3, seqlen=8))
    assert calib.shape == (3, 8)
    assert calib.attention_mask.sum(1).tolist() == [5, 8, 8]
    assert calib.input_ids[0, :5].tolist() == rows[0, 15:].tolist()  # real tokens first, then padding
    assert calib.input_ids[1].tolist() == rows[1, 10:18].tolist()


# ---------------------------------------------------------------------------------------------- padding and statistics
def _grams(model, calib):
    """Gram accumulators of every linear module of blocks 0 and 1 (block 1 through the propagated inputs)."""
    adapter = adapter_for(model)
    inputs = capture_block_inputs(model, adapter, calib)
    blocks = adapter.blocks(model)
    names = list(adapter.linear_names(blocks[0]))
    first = collect_grams(blocks[0], inputs, names, device="cpu")
    second = collect_grams(blocks[1], forward_block(blocks[0], inputs, device="cpu"), names, device="cpu")
    return {f"0.{k}": v for k, v in first.items()} | {f"1.{k}": v for k, v in second.items()}


@pytest.mark.parametrize("family,side", [("llama", "right"), ("llama", "left"), ("opt", "left"), ("gpt2", "left")])
def test_padded_batch_gives_the_statistics_of_its_unpadded_rows(tok, family, side):
    model = tiny_model(family, vocab_size=len(tok)).double()
    tok = copy.deepcopy(tok)
    tok.padding_side = side
    texts = [SENTENCES[0], SENTENCES[1] + " " + SENTENCES[2], SENTENCES[3][:12]]
    batch = tok(texts, padding=True, return_tensors="pt")
    assert not bool(batch.attention_mask.all()), "the batch must contain padding"
    padded = _grams(model, calibration_set(batch, tok, SETTINGS))
    alone = [_grams(model, tok(t, return_tensors="pt").input_ids) for t in texts]
    for key, acc in padded.items():
        assert acc.num_tokens == sum(a[key].num_tokens for a in alone) == int(batch.attention_mask.sum()), key
        gram = sum(a[key].gram for a in alone)
        assert torch.allclose(acc.gram, gram, rtol=1e-9, atol=1e-9), f"{family}/{side} {key}"
    as_tokens = _grams(model, batch.input_ids)  # the padded ids without the mask: pads counted as tokens
    key = sorted(k for k in padded if k.startswith("1."))[-1]
    assert as_tokens[key].num_tokens == batch.input_ids.numel() > padded[key].num_tokens
    assert not torch.allclose(as_tokens[key].gram, padded[key].gram, rtol=1e-3)


def test_windows_with_one_mask_share_their_block_arguments(tok, dense):
    batch = tok([SENTENCES[0], SENTENCES[0], SENTENCES[0] + " " + SENTENCES[1]], padding=True, return_tensors="pt")
    inputs = capture_block_inputs(dense, adapter_for(dense), calibration_set(batch, tok, SETTINGS))
    assert sorted(inputs.window_calls) == [0, 1]  # window 2 is unpadded: the shared arguments
    assert inputs.window_calls[0] is inputs.window_calls[1]
    assert inputs.real_tokens(2) is None and int(inputs.real_tokens(0).sum()) < batch.input_ids.shape[1]


# ---------------------------------------------------------------------------------------------- recipe files
def _jsonl(path, docs, gz=False):
    text = "".join(json.dumps({"text": d, "url": "x"}) + "\n" for d in docs)
    if gz:
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "model")


@pytest.mark.parametrize("kind", ["text file", "json file", "jsonl.gz via c4:PATH", "c4 local shard", "wikitext2",
                                  "hf local folder"])
def test_string_sources_prune_from_a_recipe_file(kind, checkpoint, tmp_path):
    from prunekit.models.pipeline import prune_checkpoint

    data_dir = None
    if kind == "text file":
        source = tmp_path / "calib.txt"
        source.write_text(TEXT)
    elif kind == "json file":
        source = tmp_path / "calib.json"
        source.write_text(json.dumps([{"text": s} for s in SENTENCES * 10]))
    elif kind == "jsonl.gz via c4:PATH":
        source = "c4:" + str(_jsonl(tmp_path / "docs.jsonl.gz", [TEXT, "short"], gz=True))
    elif kind == "c4 local shard":
        (tmp_path / "c4").mkdir()
        _jsonl(tmp_path / "c4" / C4_FILE, [TEXT, "tiny", TEXT[::-1]], gz=True)
        source, data_dir = "c4", tmp_path
    elif kind == "wikitext2":
        (tmp_path / "wikitext-2-raw").mkdir()
        (tmp_path / "wikitext-2-raw" / "wiki.valid.raw").write_text(" \n" + "".join(f" {s} \n" for s in SENTENCES) * 9)
        source, data_dir = "wikitext2", tmp_path
    else:
        folder = tmp_path / "my_dataset"
        folder.mkdir()
        _jsonl(folder / "train.jsonl", SENTENCES * 10)
        source = f"hf:{folder}"
    path = tmp_path / "recipe.yaml"
    Recipe.coerce(recipe(source=str(source))).save(path)
    report = prune_checkpoint(str(checkpoint), str(path), tmp_path / "out", progress=False, data_dir=data_dir,
                              echo=None)
    assert tuple(report.calibration_shape) == (2, 16), kind
    assert report.layers and all(r.sparsity == pytest.approx(0.5) for r in report.layers), kind
    assert report.recipe["calibration"]["source"] == str(source)


# ---------------------------------------------------------------------------------------------- C4 sampling
def test_c4_sampling_draws_what_sparsegpt_get_c4_draws():
    docs = ["x" * n for n in (5, 40, 12, 70, 3, 25)]
    docs = [d + "".join(chr(97 + (i * 7 + k) % 26) for k in range(len(d))) for i, d in enumerate(docs)]
    tokenizer = lambda text: char_ids(text)  # noqa: E731 -- a character-level tokenizer
    nsamples, seqlen, seed = 6, 30, 3
    state = random.getstate()
    try:  # SparseGPT datautils.get_c4, verbatim apart from the tokenizer
        random.seed(seed)
        expected = []
        for _ in range(nsamples):
            while True:
                i = random.randint(0, len(docs) - 1)
                enc = torch.tensor([char_ids(docs[i])])
                if enc.shape[1] > seqlen:
                    break
            i = random.randint(0, enc.shape[1] - seqlen - 1)
            expected.append(enc[:, i:i + seqlen])
    finally:
        random.setstate(state)
    got = document_windows(docs, tokenizer, nsamples, seqlen, seed)
    assert torch.equal(got, torch.cat(expected))
    with pytest.raises(DataError, match="no document has more than seqlen = 500"):
        document_windows(docs, tokenizer, 1, 500)


# ---------------------------------------------------------------------------------------------- offline and errors
@pytest.mark.parametrize("source", ["c4", "wikitext2", "hf:wikitext:wikitext-2-raw-v1:train"])
def test_named_sources_offline_give_one_clear_error(source, tok, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError) as info:
        calibration_set(source, tok, SETTINGS, data_dir=tmp_path)
    message = str(info.value)
    assert "Fix:" in message and "HF_HUB_OFFLINE" in message
    if source != "hf:wikitext:wikitext-2-raw-v1:train":  # the local folder looked in is named, and only that one
        assert str(tmp_path) in message and "shared" not in message
    if source == "c4":
        assert C4_FILE in message and "c4:" in message


def test_a_wrong_data_dir_is_reported_not_replaced(tok, tmp_path, shared_data_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match="does not exist or is not a folder"):
        calibration_set("wikitext2", tok, SETTINGS, data_dir=tmp_path / "typo")
    monkeypatch.setenv("PRUNEKIT_DATA_DIR", str(tmp_path))  # a named folder without the files: no fallback
    with pytest.raises(DataError, match=str(tmp_path)):
        calibration_set("wikitext2", tok, SETTINGS)
    assert calibration_set("wikitext2", tok, SETTINGS, data_dir=shared_data_dir).shape == (2, 16)


def test_non_utf8_text_file_names_the_file_and_the_byte(tok, tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("caf\u00e9 ".encode("latin-1") * 50)
    with pytest.raises(DataError, match=r"latin1\.txt is not UTF-8 text: byte 0xe9 at offset 3.*Fix: convert"):
        calibration_set(str(path), tok, SETTINGS)


@pytest.mark.parametrize("source,match", [
    ([], "empty list"),
    (["", "  "], "holds no text"),
    ([TEXT[:20]], "fewer than seqlen"),
    ({"attention_mask": [[1, 1]]}, "has no 'input_ids'"),
    (3.5, "type float is not understood"),
    ([{"content": TEXT}], r"no text field 'text'.*\['content'\].*text_column"),
    ("no/such/file.txt", "neither 'wikitext2', 'self' nor an existing text file"),
    ({"input_ids": torch.ones(2, 3, dtype=torch.long), "attention_mask": torch.tensor([[1, 1, 0], [0, 0, 0]])},
     "no real token"),
    (torch.rand(2, 4), "integer token ids"),
])
def test_bad_sources_give_one_data_error_with_a_fix(source, match, tok):
    with pytest.raises(DataError, match=match) as info:
        calibration_set(source, tok, SETTINGS)
    assert "Fix:" in str(info.value)


def test_dataset_columns_text_column_and_dataset_dicts(tok):
    ds = datasets.Dataset.from_dict({"content": SENTENCES * 10, "n": list(range(60))})
    with pytest.raises(DataError, match=r"no text column 'text'.*\['content', 'n'\].*text_column"):
        calibration_set(ds, tok, SETTINGS)
    settings = CalibrationSettings(source="self", nsamples=2, seqlen=16, text_column="content")
    assert calibration_set(ds, tok, settings).shape == (2, 16)
    with pytest.raises(DataError, match=r"DatasetDict with splits \['train'\].*dataset\['train'\]"):
        calibration_set(datasets.DatasetDict({"train": ds}), tok, settings)


def test_text_without_a_tokenizer_is_a_clear_error():
    with pytest.raises(DataError, match="no tokenizer was given.*Fix: pass tokenizer="):
        calibration_set([TEXT], None, SETTINGS)
    assert calibration_set({"input_ids": [[1, 2, 3]]}, None, SETTINGS).shape == (1, 3)  # tokens need none


def test_endless_text_stream_is_read_only_as_far_as_needed(tok):
    seen = []

    def endless():
        while True:
            seen.append(1)
            yield {"text": TEXT}

    calib = calibration_set(datasets.IterableDataset.from_generator(endless), tok, SETTINGS)
    assert calib.shape == (2, 16) and len(seen) < 10


def test_hub_source_syntax():
    assert HubSource.parse("hf:wikitext:wikitext-2-raw-v1:train[:100]") == \
        HubSource("wikitext", "wikitext-2-raw-v1", "train[:100]")
    assert HubSource.parse("hf:user/data") == HubSource("user/data", None, "train")
    assert HubSource.parse("hf:user/data::validation") == HubSource("user/data", None, "validation")
    with pytest.raises(DataError, match="hf:NAME::train"):
        Recipe.coerce(recipe(source="hf:"))
    with pytest.raises(DataError, match="non-empty string"):
        CalibrationSettings(source="")
    check_source("hf:user/data:cfg:test")
    with pytest.raises(DataError, match="must exist"):
        check_source("missing.jsonl")
