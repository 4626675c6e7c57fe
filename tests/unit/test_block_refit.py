"""prunekit.models.block_refit: the block reconstruction keeps every solved mask, lowers the block error it reports
(or keeps the solvers' weights and says why), travels through plans and reports (resumed checkpoints:
test_resume), and every bad setting gets one clear error."""

from __future__ import annotations

import copy

import pytest
import torch

from _tiny_models import tiny_model, tokens

pytestmark = pytest.mark.hf

import prunekit  # noqa: E402
from prunekit.errors import FormulationError, ModelError  # noqa: E402
from prunekit.models.block_refit import BlockRefit, RefitRecord, refit_block, resolve_block_refit  # noqa: E402
from prunekit.models.recipe import Recipe  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def modeling_imported(one_thread_module):
    import transformers.models.llama.modeling_llama  # noqa: F401


def recipe(**fields) -> Recipe:
    return Recipe(**{"method": "sparsegpt", "structure": "unstructured", "sparsity": 0.5, "block_refit": False,
                     **fields})


def block_zero(model, calib, plan_recipe, settings: BlockRefit):
    """(plan of block 0 from the layer solves, refitted plan, record) -- refit_block called directly."""
    from prunekit.models.adapters import adapter_for
    from prunekit.models.calibration import capture_block_inputs, forward_block

    plan = prunekit.plan(model, plan_recipe, calib, progress=False)
    adapter = adapter_for(model)
    prefix = adapter.block_prefix(model, 0)
    block_plan = plan.block_edits(0, prefix)
    dense = adapter.blocks(model)[0]
    inputs = capture_block_inputs(model, adapter, calib)
    targets = forward_block(dense, inputs, device="cpu").hidden
    groups = {g.name: g for g in adapter.coupled_groups(model, 0)}
    refitted, record = refit_block(dense, prefix, 0, block_plan, inputs, targets, settings, groups,
                                   adapter=adapter, device="cpu", dtype=torch.float32)
    return block_plan, refitted, record


@pytest.mark.parametrize("structure", ["unstructured", "2:4"])
def test_the_refit_keeps_every_solved_mask_and_lowers_the_block_error(structure):
    model = tiny_model("llama", dtype=torch.float32)
    before, after, record = block_zero(model, tokens(n=6, t=24), recipe(structure=structure,
                                                                         sparsity=None if structure == "2:4" else 0.5),
                                       BlockRefit(epochs=3))
    assert record.kept and record.error_after < record.error_before and record.steps == 18
    assert set(record.modules) == set(before.module_edits)
    for key, edit in before.module_edits.items():
        new = after.module_edits[key].weight
        assert torch.equal(new != 0, edit.weight != 0) or torch.equal((new != 0) | (edit.weight == 0),
                                                                      torch.ones_like(new, dtype=torch.bool)), key
        assert not torch.equal(new, edit.weight), key  # the kept weights moved
        assert bool(((new != 0) & (edit.weight == 0)).any()) is False, key  # no pruned weight came back
        if structure == "2:4":
            assert int((new.reshape(-1, 4) != 0).sum(1).max()) <= 2


def test_a_refit_that_does_not_lower_the_error_leaves_the_solvers_weights_and_says_why():
    model = tiny_model("llama", dtype=torch.float32)
    before, after, record = block_zero(model, tokens(n=4, t=24), recipe(), BlockRefit(epochs=2, lr=0.5, retries=0))
    assert not record.kept and "not kept" in record.note and record.error_after >= record.error_before
    assert record.attempts == 1 and record.lr == 0.5
    for key, edit in before.module_edits.items():
        assert after.module_edits[key].weight is edit.weight


def test_a_step_too_large_is_retried_smaller_from_the_solvers_weights():
    """lr 0.5 overshoots (the test above); with retries the fit restarts from the solvers' weights at lr / 4 each
    time until the block error decreases, and the record says which step size was kept."""
    model = tiny_model("llama", dtype=torch.float32)
    calib = tokens(n=4, t=24)
    _, _, failed = block_zero(model, calib, recipe(), BlockRefit(epochs=2, lr=0.5, retries=0))
    _, after, record = block_zero(model, calib, recipe(), BlockRefit(epochs=2, lr=0.5, retries=6))
    assert not failed.kept and record.kept and record.attempts > 1
    assert record.lr == pytest.approx(0.5 / 4 ** (record.attempts - 1))
    assert record.steps == 8 * record.attempts and record.error_before == pytest.approx(failed.error_before)
    assert record.error_after < record.error_before


def test_the_cosine_schedule_decays_the_step_and_differs_from_the_constant_one(monkeypatch):
    from prunekit.models import block_refit

    seen = []
    original = torch.optim.Adam.step

    def spy(self, *a, **k):
        seen.append(self.param_groups[0]["lr"])
        return original(self, *a, **k)

    monkeypatch.setattr(torch.optim.Adam, "step", spy)
    model = tiny_model("llama", dtype=torch.float32)
    calib = tokens(n=4, t=24)
    _, cosine, _ = block_zero(model, calib, recipe(), BlockRefit(epochs=2, lr=1e-3))
    assert seen[0] == pytest.approx(1e-3) and all(a > b for a, b in zip(seen, seen[1:])) and seen[-1] < 1e-4
    seen.clear()
    _, constant, _ = block_zero(model, calib, recipe(), BlockRefit(epochs=2, lr=1e-3, schedule="constant"))
    assert seen == [1e-3] * 8
    assert any(not torch.equal(cosine.module_edits[k].weight, constant.module_edits[k].weight)
               for k in cosine.module_edits)
    assert block_refit.SCHEDULES == ("constant", "cosine")


def test_scope_block_trains_the_modules_the_plan_leaves_alone_and_still_replays():
    """An MLP channel plan with scope 'block': attention's projections are trained too (dense edits), the plan
    still replays by surgery, and the block error it reports decreased.  (Adam moves every trained weight by about
    the step size at first, so training modules that were exact needs a smaller step: 3e-5 here.)"""
    model = tiny_model("llama", dtype=torch.float32)
    calib = tokens(n=6, t=24)
    r = recipe(method="fasp", structure="channels", sparsity=0.25)
    _, _, small = block_zero(model, calib, r, BlockRefit(epochs=2, lr=3e-5))
    _, wide, large = block_zero(model, calib, r, BlockRefit(epochs=2, lr=3e-5, scope="block"))
    leaves = lambda rec: {m.rsplit(".", 1)[-1] for m in rec.modules}  # noqa: E731
    assert leaves(small) == {"gate_proj", "up_proj", "down_proj"}
    assert leaves(large) == leaves(small) | {"q_proj", "k_proj", "v_proj", "o_proj"}
    assert large.kept and large.error_after < large.error_before
    q = next(e for e in wide.module_edits.values() if e.module.endswith("q_proj"))
    assert q.sparsity_kind == "dense" and "block refit" in q.note
    from prunekit.models.adapters import adapter_for
    from prunekit.models.surgery import pruned_block

    built = pruned_block(copy.deepcopy(model), adapter_for(model), 0, wide)
    assert torch.equal(built.self_attn.q_proj.weight, q.weight)


def test_channel_plans_train_the_upstream_rows_and_replay_physically_smaller():
    """FASP channels: the refit trains down_proj's kept columns and gate/up (upstream of the GLU group); the plan
    still replays by surgery to a smaller model whose logits equal the masked twin's."""
    model = tiny_model("llama", dtype=torch.float32)
    calib = tokens(n=6, t=24)
    r = recipe(method="fasp", structure="channels", sparsity=0.25, block_refit={"epochs": 2, "lr": 1e-3})
    plan = prunekit.plan(model, r, calib, progress=False)
    assert [x.block for x in plan.refits] == [0, 1] and all(x.kept for x in plan.refits)
    assert {m.rsplit(".", 1)[-1] for m in plan.refits[0].modules} == {"gate_proj", "up_proj", "down_proj"}
    pruned = copy.deepcopy(model)
    prunekit.apply_(pruned, plan)
    assert pruned.model.layers[0].mlp.down_proj.in_features == 48
    masked = copy.deepcopy(model)  # the masked twin: refitted weights, pruned columns of down_proj zero
    for key, edit in plan.module_edits.items():
        masked.get_submodule(edit.module or key).weight.data.copy_(edit.weight)
    x = tokens(n=2, t=12, seed=4)
    with torch.no_grad():
        assert torch.allclose(pruned(x).logits, masked(x).logits, atol=1e-5, rtol=0)


def test_the_refit_lowers_the_calibration_error_of_the_pruned_model():
    """End to end (propagated mode): the refitted model's last hidden state is nearer the dense model's on the
    calibration windows than the plain solve's."""
    model = tiny_model("llama", dtype=torch.float32)
    calib = tokens(n=8, t=24)

    def hidden_error(r):
        pruned = copy.deepcopy(model)
        prunekit.prune(pruned, r, calib, progress=False)
        with torch.no_grad():
            a = pruned(calib, output_hidden_states=True).hidden_states[-1]
            b = model(calib, output_hidden_states=True).hidden_states[-1]
        return float((a - b).square().sum() / b.square().sum())

    assert hidden_error(recipe(block_refit={"epochs": 3})) < hidden_error(recipe())


def test_dense_model_targets_fit_the_dense_trajectory_and_coincide_with_block_targets_in_dense_mode():
    """Problem (2): the last block's certificate is measured against the dense model's own hidden states (the
    model's output before the final norm), so its reported error equals the built model's distance to them; in
    ``dense`` mode the run's inputs are the dense model's and the two target choices give the same plan."""
    model = tiny_model("llama", dtype=torch.float32)
    calib = tokens(n=6, t=24)
    wide = {"epochs": 2, "lr": 1e-3, "targets": "dense_model"}
    plan = prunekit.plan(model, recipe(block_refit=wide), calib, progress=False)
    local = prunekit.plan(model, recipe(block_refit={**wide, "targets": "block"}), calib, progress=False)
    assert any(not torch.equal(plan.module_edits[k].weight, local.module_edits[k].weight) for k in plan.module_edits)
    pruned = copy.deepcopy(model)
    prunekit.apply_(pruned, plan)
    outs = {}  # the last block's raw outputs (hidden_states[-1] is after the final norm)
    for name, m in (("pruned", pruned), ("dense", model)):
        handle = m.model.layers[-1].register_forward_hook(lambda mod, i, o, n=name: outs.__setitem__(
            n, o[0] if isinstance(o, tuple) else o))
        with torch.no_grad():
            m(calib)
        handle.remove()
    error = float((outs["pruned"] - outs["dense"]).double().square().sum() / outs["dense"].double().square().sum())
    last = plan.refits[-1]
    assert last.kept and error == pytest.approx(last.error_after, rel=1e-3)
    from prunekit.models.recipe import CalibrationSettings

    dense_mode = [prunekit.plan(model, recipe(calibration=CalibrationSettings(mode="dense"),
                                              block_refit={**wide, "targets": t}), calib, progress=False)
                  for t in ("block", "dense_model")]
    assert all(torch.equal(dense_mode[0].module_edits[k].weight, dense_mode[1].module_edits[k].weight)
               for k in dense_mode[0].module_edits)


def test_settings_round_trip_and_bad_values_get_one_clear_error():
    assert recipe(block_refit=True).block_refit == BlockRefit()
    assert recipe(block_refit={"epochs": 3, "lr": 1e-3}).block_refit == BlockRefit(epochs=3, lr=1e-3)
    for value in (True, False, None, {"epochs": 4}, "auto", {"scope": "block", "schedule": "constant", "retries": 0}):
        r = recipe(block_refit=value)
        assert Recipe.from_dict(r.to_dict()) == r and Recipe.from_json(r.to_json()) == r
    for bad, words in ((0.5, "'auto', true/false"), ("on", "'auto', true/false"), ({"epochs": 0}, "epochs"),
                       ({"lr": 2.0}, "lr"), ({"steps": 3}, "no field"), ({"schedule": "linear"}, "schedule"),
                       ({"scope": "model"}, "scope"), ({"targets": "model"}, "targets"), ({"retries": -1}, "retries"),
                       ({"retries": True}, "retries")):
        with pytest.raises(FormulationError, match=f"{words}.*|.*Fix") as info:
            recipe(block_refit=bad)
        assert words.split("'")[0] in str(info.value)


def test_auto_is_the_methods_default_and_is_recorded():
    assert resolve_block_refit(recipe(block_refit="auto")).block_refit is None  # sparsegpt: the reference's method
    from prunekit.models.methods import resolve_method

    on = [m for m in ("fista_refit", "mrp", "fasp", "sparsegpt", "wanda", "fista", "fasp_refit", "spap",
                      "spap_refit") if resolve_method(m).block_refit_default]
    assert "fista" not in on and "sparsegpt" not in on and "wanda" not in on  # faithful baselines stay as published
    assert "fasp" not in on and "spap" not in on and {"fista_refit", "fasp_refit", "spap_refit"} <= set(on)
    expected = {"fista_refit": BlockRefit(), "fasp_refit": BlockRefit(scope="block", epochs=8),
                "spap_refit": BlockRefit(scope="block", epochs=8)}
    for name in on:
        r = resolve_block_refit(recipe(method=name, block_refit="auto",
                                       structure="unstructured" if "unstructured" in resolve_method(name).structures
                                       else "channels"))
        assert r.block_refit == expected.get(name, BlockRefit())


def test_a_distributed_run_refuses_the_refit_with_the_fix():
    from prunekit.models.block_refit import run_settings as _refit_settings

    class TwoRanks:
        active, world_size = True, 2

    with pytest.raises(ModelError, match="one process.*Fix|Fix.*block_refit: false"):
        _refit_settings(recipe(block_refit=True), TwoRanks())
    assert _refit_settings(recipe(block_refit=False), TwoRanks()) is None
    assert _refit_settings(recipe(method="magnitude", block_refit=True), TwoRanks()) is None  # no calibration


def test_records_round_trip_through_plans_and_reports(tmp_path):
    model = tiny_model("llama", dtype=torch.float32)
    result = prunekit.prune(model, recipe(block_refit=True), tokens(n=4, t=24), progress=False)
    assert [r.block for r in result.report.refits] == [0, 1]
    plan = result.plan
    plan.save(tmp_path / "plan")
    again = type(plan).load(tmp_path / "plan")
    assert again.refits == plan.refits and isinstance(again.refits[0], RefitRecord)
    from prunekit.models.records import RunReport

    assert RunReport.from_dict(result.report.to_dict()).refits == result.report.refits


def test_cli_flags_set_the_refit(tmp_path):
    from prunekit.cli import build_parser
    from prunekit.cli.prune import build_recipe

    parser = build_parser()
    base = ["prune", "--model", "m", "--out", str(tmp_path / "o"), "--calib", "self", "--method", "sparsegpt"]
    assert build_recipe(parser.parse_args(base)).block_refit == "auto"
    assert build_recipe(parser.parse_args(base + ["--block-refit", "off"])).block_refit is None
    assert build_recipe(parser.parse_args(base + ["--block-refit", "on"])).block_refit == BlockRefit()
    tuned = build_recipe(parser.parse_args(base + ["--block-refit-epochs", "3", "--block-refit-lr", "1e-3"]))
    assert tuned.block_refit == BlockRefit(epochs=3, lr=1e-3)
    wide = build_recipe(parser.parse_args(base + ["--block-refit-scope", "block", "--block-refit-targets", "block"]))
    assert wide.block_refit == BlockRefit(scope="block", targets="block")
    file = recipe(block_refit={"epochs": 4}).save(tmp_path / "r.yaml")
    from_file = build_recipe(parser.parse_args(base + ["--recipe", str(file), "--block-refit-lr", "5e-4"]))
    assert from_file.block_refit == BlockRefit(epochs=4, lr=5e-4)  # a flag on top of the file's settings
    variant = [a if a != "sparsegpt" else "fasp_refit" for a in base] + ["--structure", "channels"]
    assert build_recipe(parser.parse_args(variant + ["--block-refit-epochs", "3"])).block_refit == BlockRefit(
        scope="block", epochs=3)  # a tuning flag over auto starts from the method's own settings
    with pytest.raises(SystemExit, match="contradicts.*Fix"):
        build_recipe(parser.parse_args(base + ["--block-refit", "off", "--block-refit-epochs", "3"]))
    with pytest.raises(SystemExit):
        parser.parse_args(base + ["--block-refit", "maybe"])


def test_the_refit_targets_come_from_the_statistics_pass(monkeypatch):
    """Propagated mode, ``targets="block"``: the dense outputs the statistics pass computes anyway are the targets --
    the refit adds no forward of the dense block (``forward_block`` runs as often as without the refit: once per
    block, through the pruned block, for the next inputs).  ``dense_model`` (default) adds exactly one per block:
    the dense stream."""
    from prunekit.models import block_refit, runner

    calls = []
    original = runner.forward_block
    for module in (runner, block_refit):  # the runner's propagation and the refit's own fallback forward
        monkeypatch.setattr(module, "forward_block", lambda *a, **k: calls.append(1) or original(*a, **k))
    model = tiny_model("llama", dtype=torch.float32)
    prunekit.plan(model, recipe(), tokens(n=4, t=24), progress=False)
    without = len(calls)
    plan = prunekit.plan(model, recipe(block_refit={"targets": "block"}), tokens(n=4, t=24), progress=False)
    assert len(plan.refits) == 2 and len(calls) == 2 * without
    plan = prunekit.plan(model, recipe(block_refit=True), tokens(n=4, t=24), progress=False)  # dense_model
    assert len(plan.refits) == 2 and len(calls) == 3 * without + 2  # + the dense stream: one per block


@pytest.mark.parametrize("method", ["flap", "sparsegpt"])
def test_the_reported_error_is_the_error_of_the_block_the_plan_builds(method):
    """The certificate holds on the block the plan builds: FLAP adds a compensation bias where down_proj had none;
    the refit must see it, else its reported error belongs to another block."""
    from prunekit.models.adapters import adapter_for
    from prunekit.models.calibration import capture_block_inputs, forward_block
    from prunekit.models.surgery import pruned_block

    model = tiny_model("llama", dtype=torch.float32)
    calib = tokens(n=6, t=24)
    r = recipe(method=method, structure="channels" if method == "flap" else "unstructured", sparsity=0.25)
    _, after, record = block_zero(model, calib, r, BlockRefit(epochs=2, lr=1e-4))
    adapter = adapter_for(model)
    inputs = capture_block_inputs(model, adapter, calib)
    targets = forward_block(adapter.blocks(model)[0], inputs, device="cpu").hidden
    built = forward_block(pruned_block(copy.deepcopy(model), adapter, 0, after), inputs, device="cpu").hidden
    error = sum(float((b - t).double().square().sum()) for b, t in zip(built, targets)) / sum(
        float(t.double().square().sum()) for t in targets)
    assert record.kept and error == pytest.approx(record.error_after, rel=1e-4)

