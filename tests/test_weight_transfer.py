"""autoseg train --init-from: weights of another model start a new run; heads and input channels adapt."""
import json

import pytest
import torch

from autoseg.errors import AutosegError
from autoseg.model.network import build_network
from autoseg.model.weight_transfer import transfer_weights

from conftest import autoseg_here, train_tiny, write_nnunet_dataset


def _config(tmp_path):
    from autoseg.planning.plan_types import load_plan
    from autoseg.planning.run import plan_dataset

    data = write_nnunet_dataset(tmp_path / "Dataset001_Syn", n_cases=6, shape=(16, 20, 18), spacing=(1.0, 1.0, 1.0))
    plan_dataset(data, tmp_path / "p", workers=1, configurations=("3d_fullres",), progress=False)
    return load_plan(tmp_path / "p" / "plan.json").configurations["3d_fullres"]


def test_heads_start_fresh_and_new_channels_take_the_mean(tmp_path):
    config = _config(tmp_path)
    torch.manual_seed(0)
    source = build_network(config, 1, 3, deep_supervision=True).state_dict()
    torch.manual_seed(1)
    target = build_network(config, 3, 2, deep_supervision=True)
    fresh = {k: v.clone() for k, v in target.state_dict().items()}
    transfer = transfer_weights(source, target, "source.pt")
    loaded = target.state_dict()
    first = "encoder.0.0.0.weight"
    assert torch.equal(loaded[first][:, :1], source[first])
    assert torch.equal(loaded[first][:, 1], source[first].mean(1)) and torch.equal(loaded[first][:, 2], loaded[first][:, 1])
    heads = [k for k in loaded if k.startswith("heads.")]
    for key in loaded:
        expected = fresh[key] if key in heads else (loaded[key] if key == first else source[key])
        assert torch.equal(loaded[key], expected), key
    assert transfer.copied == len(loaded) - len(heads) and sorted(transfer.new_heads) == sorted(heads)
    assert "1 -> 3 input channels" in transfer.describe()


def test_another_topology_is_refused_naming_the_tensor(tmp_path):
    import dataclasses

    config = _config(tmp_path)
    wider = dataclasses.replace(config, features_per_stage=[2 * f for f in config.features_per_stage])
    with pytest.raises(AutosegError, match=r"source\.pt: encoder\.0\.0\.0\.weight is \(32, 1, 3, 3, 3\) here but "
                                           r"\(64, 1, 3, 3, 3\) in the source"):
        transfer_weights(build_network(wider, 1, 3).state_dict(), build_network(config, 1, 3), "source.pt")


def test_fine_tuning_from_a_package_onto_two_channels_and_one_label(tmp_path):
    source = train_tiny(tmp_path / "source", 1, ["0"])
    autoseg_here("export", source, "-o", tmp_path / "source.autoseg")
    target = train_tiny(tmp_path / "target", 2, [])  # planned and preprocessed, not trained
    for init in (tmp_path / "source.autoseg", source / "models/3d_fullres/fold_0/checkpoint_final.pt"):
        autoseg_here("train", target, "--fold", "1", "--epochs", "1", "--iterations-per-epoch", "1", "--init-from", init,
                    "--no-validation", "--precision", "fp32", "--workers", "0", "-q")
        log = (target / "models/3d_fullres/fold_1/training.log").read_text()
        assert "initialised from another model" in log and "1 -> 2 input channels" in log
        options = json.loads((target / "models/3d_fullres/fold_1/options.json").read_text())
        assert options["init_from"] == str(init)
        (target / "models/3d_fullres/fold_1/checkpoint_final.pt").unlink()
        (target / "models/3d_fullres/fold_1/recipe.json").unlink()
