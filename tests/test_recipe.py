"""The training recipe's decisions on synthetic step-time tables (hand-checked), and its place in a run:
saved, reused on resume and from a file, honoured budget, and exported with the model."""
import json
import shutil
import sys

import pytest

from autoseg.errors import AutosegError
from autoseg.planning.plan_types import Configuration
from autoseg.training.recipe import (AUTO_STANDARD_ITERATIONS, BUDGET_EPOCHS, BUDGET_TARGET_ITERATIONS,
                                     MEMORY_FACTOR, MEMORY_FACTOR_RETAINED, MEMORY_FIXED, MEMORY_SHARE, RETAIN_SHARE,
                                     MemoryModel, RecipeRequest, choose_recipe, scaled_features, smaller_patch)


def _config(batch=7, features=(32, 64, 128, 256, 320)) -> Configuration:
    return Configuration("3d_fullres", "d", [1.0, 1.0, 1.0], [36, 50, 35], [40, 56, 40], batch, [3, 3, 3],
                         [[1, 1, 1]] + [[2, 2, 2]] * (len(features) - 1), [[3, 3, 3]] * len(features),
                         list(features), [2] * len(features), [2] * (len(features) - 1), False, 1000)


class Timer:
    """Step seconds from a table {(width, batch): s}; records what was asked, in order (the plan's patch)."""

    def __init__(self, table):
        self.table, self.asked = table, []

    def __call__(self, width, batch, patch):
        assert patch == [40, 56, 40]
        self.asked.append((width, batch))
        return self.table[(width, batch)], None


# Hippocampus-like CPU step times: 7.3 s at batch 7 full width; batch 2 at full, half and quarter width.
CPU = {(1.0, 7): 7.3, (1.0, 2): 2.2, (0.5, 2): 0.8, (0.25, 2): 0.35}


def test_no_budget_is_the_standard_recipe_without_timing_anything():
    timer = Timer({})
    recipe = choose_recipe(RecipeRequest(), _config(), timer)
    assert recipe.name == "standard" and timer.asked == [] and recipe.optimizer == "sgd"
    assert (recipe.width, recipe.batch_size, recipe.initial_lr, recipe.warmup) == (1.0, 7, 0.01, 0.0)
    assert (recipe.iterations_per_epoch, recipe.val_iterations, recipe.augmentation) == (250, 50, "standard")
    assert recipe.features_per_stage == [32, 64, 128, 256, 320] and recipe.expected_iterations is None


def test_auto_keeps_the_standard_recipe_when_the_budget_buys_enough_iterations():
    fast_gpu = {(1.0, 7): 0.2, (1.0, 2): 0.1, (0.5, 2): 0.06, (0.25, 2): 0.05}
    budget = 0.2 * AUTO_STANDARD_ITERATIONS + 0.1
    timer = Timer(fast_gpu)
    recipe = choose_recipe(RecipeRequest(time_budget_s=budget), _config(), timer)
    assert recipe.name == "standard" and recipe.expected_iterations == AUTO_STANDARD_ITERATIONS
    assert timer.asked == [(0.25, 2), (1.0, 7)]  # the cheap network first: it could have settled it
    recipe = choose_recipe(RecipeRequest(time_budget_s=budget - 0.2), _config(), Timer(fast_gpu))
    assert recipe.name == "budget" and recipe.width == 1.0


@pytest.mark.parametrize("minutes, width", [(3, 0.25), (10, 0.25), (30, 0.5), (120, 1.0)])
def test_budget_takes_the_widest_network_reaching_the_target_iterations(minutes, width):
    # by hand: 3 min / (0.35 s * 1.02) = 504 iterations, under the target even at quarter width;
    # 10 min: 1680 at 0.25, 735 at 0.5; 30 min: 2205 at 0.5; 120 min: 3208 at full width, batch 2
    budget = minutes * 60
    timer = Timer(CPU)
    recipe = choose_recipe(RecipeRequest(time_budget_s=budget), _config(), timer)
    assert recipe.name == "budget" and recipe.width == width and recipe.batch_size == 2
    assert recipe.features_per_stage == scaled_features([32, 64, 128, 256, 320], width)
    assert recipe.expected_iterations == int(budget / (CPU[(width, 2)] * 1.02))
    assert recipe.augmentation == "light" and recipe.warmup == 0.05
    assert (recipe.optimizer, recipe.initial_lr) == ("adamw", 3e-3)
    # timed lazily, narrowest first, up to the first width that falls short; the slow standard step never
    # (auto saw that even the narrowest network cannot do AUTO_STANDARD_ITERATIONS steps)
    # and not at all beyond the narrowest when even that one falls short (3 minutes)
    order = [0.25, 0.5, 1.0]
    assert timer.asked == ([(0.25, 2)] if minutes == 3 else [(w, 2) for w in order[:order.index(width) + 2]])
    assert recipe.iterations_per_epoch == max(5, min(250, recipe.expected_iterations // BUDGET_EPOCHS))
    assert recipe.val_iterations >= 1
    assert {(s.width, s.batch_size) for s in recipe.step_times} == set(timer.asked)


def test_the_users_explicit_values_win():
    request = RecipeRequest("budget", 600, width=0.5, batch_size=4, initial_lr=0.02, warmup=0.0,
                            augmentation="standard", iterations_per_epoch=30, val_iterations=3)
    timer = Timer({(0.5, 4): 1.0})
    recipe = choose_recipe(request, _config(), timer)
    assert (recipe.width, recipe.batch_size, recipe.initial_lr, recipe.warmup, recipe.augmentation) == \
        (0.5, 4, 0.02, 0.0, "standard")
    assert (recipe.iterations_per_epoch, recipe.val_iterations) == (30, 3)
    assert timer.asked == [(0.5, 4)] and recipe.features_per_stage == [16, 32, 64, 128, 160]


def test_a_small_planned_batch_is_not_raised_and_features_never_vanish():
    recipe = choose_recipe(RecipeRequest("budget", 60), _config(batch=1, features=(8, 16)),
                           Timer({(1.0, 1): 10.0, (0.5, 1): 5.0, (0.25, 1): 2.0}))
    assert recipe.batch_size == 1 and recipe.width == 0.25 and recipe.features_per_stage == [4, 4]


def test_bad_requests_are_refused():
    with pytest.raises(AutosegError, match="needs a --time-budget"):
        choose_recipe(RecipeRequest("budget"), _config(), Timer({}))
    with pytest.raises(AutosegError, match="unknown recipe"):
        choose_recipe(RecipeRequest("fast"), _config(), Timer({}))


def test_the_target_is_what_the_rule_says():
    # the rule's boundary: exactly the target at quarter width is enough for it, one step less is not
    step = 0.35 * 1.02
    at = choose_recipe(RecipeRequest("budget", BUDGET_TARGET_ITERATIONS * step + 1e-6), _config(), Timer(CPU))
    assert at.width == 0.25 and at.expected_iterations == BUDGET_TARGET_ITERATIONS
    half = {(1.0, 2): 2.2, (0.5, 2): 0.8, (0.25, 2): 0.35}
    below = choose_recipe(RecipeRequest("budget", BUDGET_TARGET_ITERATIONS * 0.8 * 1.02 - 1), _config(), Timer(half))
    assert below.width == 0.25
    at_half = choose_recipe(RecipeRequest("budget", BUDGET_TARGET_ITERATIONS * 0.8 * 1.02 + 1e-6), _config(),
                            Timer(half))
    assert at_half.width == 0.5


# ---- in a run (tiny synthetic dataset) ----

@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    from conftest import write_nnunet_dataset
    from autoseg.planning.run import plan_dataset
    from autoseg.preprocessing import preprocess_dataset

    root = tmp_path_factory.mktemp("recipe")
    data = write_nnunet_dataset(root / "Dataset001_Syn", n_cases=6, shape=(16, 20, 18), spacing=(1.0, 1.0, 1.0))
    out = root / "planned"
    plan_dataset(data, out, workers=1, configurations=("3d_fullres",), progress=False)
    preprocess_dataset(out, workers=1, progress=False)
    return out


FAST = ["--precision", "fp32", "--workers", "0", "-q"]


def _metrics(folder):
    return [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]


def test_budget_run_saves_its_recipe_trains_what_it_says_and_keeps_the_budget(planned, tmp_path):
    from conftest import run_autoseg
    import torch

    out = tmp_path / "out"
    shutil.copytree(planned, out)
    budget = 8.0
    # many validation batches per epoch: a loop that ran them after the budget ended would overshoot
    run_autoseg("train", out, "--time-budget", f"{budget}s", "--recipe", "budget", "--iterations-per-epoch", "6",
                "--val-iterations", "12", "--no-validation", *FAST)
    folder = out / "models/3d_fullres/fold_0"
    recipe = json.loads((folder / "recipe.json").read_text())
    assert recipe["name"] == "budget" and recipe["step_times"] and recipe["machine"]["precision"] == "float32"
    assert recipe["iterations_per_epoch"] == 6 and recipe["val_iterations"] == 12
    plan = json.loads((folder / "plan.json").read_text())["configurations"]["3d_fullres"]
    assert plan["features_per_stage"] == recipe["features_per_stage"] and plan["batch_size"] == recipe["batch_size"]
    assert plan["patch_size"] == recipe["patch_size"]
    if sys.platform.startswith("linux"):  # memory is measured and planned for from /proc
        assert recipe["memory_limit_mb"] > 0 and recipe["expected_peak_mb"] > 0
        assert all(t["peak_mb"] > 0 for t in recipe["step_times"])
    weights = torch.load(folder / "checkpoint_final.pt", weights_only=False)["network"]
    assert weights["encoder.0.0.0.weight"].shape[0] == recipe["features_per_stage"][0]
    metrics = _metrics(folder)
    step = max(m["iterations_time_s"] / m["iterations"] for m in metrics)
    spent = metrics[-1]["train_seconds"]
    assert budget - 2 * step - 0.5 <= spent <= budget + step + 0.5, (spent, step)
    log = (folder / "training.log").read_text()
    assert "recipe budget:" in log and "of the budget left" in log


def test_resume_and_reuse_take_the_saved_recipe_without_timing(planned, tmp_path):
    from conftest import autoseg_here

    out = tmp_path / "out"
    shutil.copytree(planned, out)
    args = ["--epochs", "2", "--iterations-per-epoch", "2", "--width", "0.5", "--no-validation", *FAST]
    autoseg_here("train", out, *args)
    folder = out / "models/3d_fullres/fold_0"
    saved = json.loads((folder / "recipe.json").read_text())
    assert saved["name"] == "standard" and saved["width"] == 0.5 and saved["step_times"] == []
    # a saved recipe edited by hand shows that a resumed run reads it rather than deciding again
    (folder / "checkpoint_final.pt").rename(folder / "checkpoint_latest.pt")
    saved["reason"] = "edited"
    (folder / "recipe.json").write_text(json.dumps(saved))
    autoseg_here("train", out, *args)
    assert json.loads((folder / "recipe.json").read_text())["reason"] == "edited"

    other = tmp_path / "other"
    shutil.copytree(planned, other)
    autoseg_here("train", other, "--recipe", str(folder / "recipe.json"), "--epochs", "1", "--no-validation", *FAST)
    reused = json.loads((other / "models/3d_fullres/fold_0/recipe.json").read_text())
    assert reused["width"] == 0.5 and reused["reason"].startswith("reused from")
    # the package carries each fold's recipe, and its card says how the model was trained
    from autoseg.model.package import export_package, read_package

    card = export_package(other, tmp_path / "m.autoseg")
    assert "width 0.5" in card.training_recipes["3d_fullres fold 0"]
    members = read_package(tmp_path / "m.autoseg").members
    assert json.loads(members["recipes/3d_fullres/fold_0.json"])["width"] == 0.5
    assert len(_metrics(other / "models/3d_fullres/fold_0")[0:1]) == 1
    assert _metrics(other / "models/3d_fullres/fold_0")[0]["iterations"] == 2  # the recipe's epoch length


MB = 2 ** 20


class PatchTimer(Timer):
    """Like Timer, for any patch: step seconds scale with the patch's voxels."""

    def __call__(self, width, batch, patch):
        self.asked.append((width, batch, tuple(patch)))
        seconds = self.table[(width, 2)] * batch / 2 if (width, batch) not in self.table else self.table[(width, batch)]
        return seconds * (patch[0] * patch[1] * patch[2]) / (40 * 56 * 40), None


def _count(width, batch, patch):
    """A made-up step memory count: 1 MB per 1000 voxel-samples at full width."""
    return int(width * batch * patch[0] * patch[1] * patch[2] / 1000 * MB)


def _plain(width, batch, patch):
    return MEMORY_FACTOR * _count(width, batch, patch) + MEMORY_FIXED


def test_budget_skips_networks_that_would_not_fit_in_memory():
    # by hand: 120 min buys width 1 on time alone (3208 iterations); the counts at batch 2 are 44.8 MB at
    # quarter, 89.6 at half, 179.2 at full width; the limit lets half width fit but not full width
    limit = int(_plain(0.5, 2, [40, 56, 40])) + 1
    timer = PatchTimer(CPU)
    recipe = choose_recipe(RecipeRequest("budget", 120 * 60), _config(), timer, memory=MemoryModel(limit, _count))
    assert recipe.width == 0.5 and recipe.batch_size == 2 and recipe.patch_size == [40, 56, 40]
    assert (1.0, 2, (40, 56, 40)) not in timer.asked, "a network that does not fit must not even be timed"
    assert recipe.memory_limit_mb == round(limit / MB)
    # half width only fits with freed memory returned to the kernel: 2.5 x 89.6 MB + 128 MB is over the share
    assert recipe.retain_freed_memory is False
    assert recipe.expected_peak_mb == round(_plain(0.5, 2, [40, 56, 40]) / MB)


def test_freed_memory_is_kept_where_there_is_room_for_it():
    roomy = int((MEMORY_FACTOR_RETAINED * _count(1.0, 2, [40, 56, 40]) + MEMORY_FIXED) * MEMORY_SHARE / RETAIN_SHARE) + 1
    recipe = choose_recipe(RecipeRequest("budget", 120 * 60), _config(), PatchTimer(CPU),
                           memory=MemoryModel(roomy, _count))
    assert recipe.width == 1.0 and recipe.retain_freed_memory is True
    assert recipe.expected_peak_mb == round((MEMORY_FACTOR_RETAINED * _count(1.0, 2, [40, 56, 40]) + MEMORY_FIXED) / MB)


def test_batch_then_patch_shrink_until_the_step_fits():
    config = _config(features=(32, 64, 128))  # two poolings: total stride 4 on every axis
    assert smaller_patch([40, 56, 40], config) == [40, 52, 40]
    assert smaller_patch([40, 40, 40], config) == [36, 40, 40]
    assert smaller_patch([20, 16, 16], config) == [16, 16, 16]
    assert smaller_patch([16, 16, 16], config) is None  # 4 voxels left at the bottleneck on every axis
    just_batch_1 = int(_plain(0.25, 1, [40, 56, 40])) + 1
    recipe = choose_recipe(RecipeRequest("budget", 600), config, PatchTimer(CPU),
                           memory=MemoryModel(just_batch_1, _count))
    assert (recipe.width, recipe.batch_size, recipe.patch_size) == (0.25, 1, [40, 56, 40])
    assert "batch 1 to fit in memory" in recipe.reason
    # 40x40x40 is 4 strides less on the longest axis than the plan's patch, one at a time
    smaller = int(_plain(0.25, 1, [40, 40, 40])) + 1
    timer = PatchTimer(CPU)
    recipe = choose_recipe(RecipeRequest("budget", 600), config, timer, memory=MemoryModel(smaller, _count))
    assert (recipe.batch_size, recipe.patch_size) == (1, [40, 40, 40]) and "patch 40x40x40" in recipe.reason
    assert timer.asked and all(patch == (40, 40, 40) for _, _, patch in timer.asked)
    # the fold's configuration records it, so validation and prediction use the patch trained on
    assert recipe.configuration(config).patch_size == [40, 40, 40]
    with pytest.raises(AutosegError, match=r"needs about .* GB even at width 0.25, batch 1, patch 16x16x16"):
        choose_recipe(RecipeRequest("budget", 600), config, PatchTimer(CPU), memory=MemoryModel(MEMORY_FIXED, _count))


def test_auto_does_not_time_a_standard_step_that_would_not_fit():
    fast = {(1.0, 7): 0.2, (1.0, 2): 0.1, (0.5, 2): 0.06, (0.25, 2): 0.05}
    budget = 0.2 * AUTO_STANDARD_ITERATIONS * 2
    limit = int(_plain(1.0, 2, [40, 56, 40])) + 1  # full width fits at batch 2, not at the plan's 7
    timer = PatchTimer(fast)
    recipe = choose_recipe(RecipeRequest(time_budget_s=budget), _config(), timer, memory=MemoryModel(limit, _count))
    assert recipe.name == "budget" and "would not fit in memory" in recipe.reason
    assert all(batch == 2 for _, batch, _ in timer.asked)


def test_standard_recipe_over_memory_warns_and_returns_freed_memory():
    recipe = choose_recipe(RecipeRequest("standard"), _config(), Timer({}), memory=MemoryModel(100 * MB, _count))
    assert recipe.batch_size == 7 and recipe.retain_freed_memory is False
    assert "warning: a step is expected to take" in recipe.reason


def test_the_memory_estimate_bounds_a_measured_step():
    """estimate_step_memory counts without computing; the recipe's factor must cover a real step's peak."""
    torch = pytest.importorskip("torch")
    from autoseg.training.step import estimate_step_memory, time_training_step
    config = _config(batch=2, features=(8, 16, 32))
    config.patch_size = [32, 48, 32]
    small = estimate_step_memory(config, 1, 3)
    config.batch_size = 4
    assert 1.8 < estimate_step_memory(config, 1, 3) / small < 2.05  # activations dominate, linear in batch
    probe = time_training_step(config, 1, 3, torch.device("cpu"), None)
    if probe.peak_bytes is None:
        pytest.skip("no /proc peak memory on this platform")
    assert probe.seconds > 0
    assert probe.peak_bytes <= MEMORY_FACTOR_RETAINED * estimate_step_memory(config, 1, 3) + MEMORY_FIXED


def test_memory_limit_too_small_for_any_network_is_one_line_and_standard_only_warns(planned, tmp_path):
    from conftest import run_autoseg

    out = tmp_path / "out"
    shutil.copytree(planned, out)
    proc = run_autoseg("train", out, "--time-budget", "30s", "--recipe", "budget", "--memory-limit", "0.05",
                       *FAST, check=False)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
    assert "even at width 0.25, batch 1" in proc.stderr and "GB is available" in proc.stderr
    run_autoseg("train", out, "--recipe", "standard", "--epochs", "1", "--iterations-per-epoch", "1",
                "--val-iterations", "1", "--no-validation", "--memory-limit", "0.05", *FAST)
    recipe = json.loads((out / "models/3d_fullres/fold_0/recipe.json").read_text())
    assert recipe["memory_limit_mb"] == round(0.05 * 1024 * MEMORY_SHARE)
    assert recipe["retain_freed_memory"] is False and "warning: a step is expected to take" in recipe["reason"]
