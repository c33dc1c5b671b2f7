"""NaN/Inf never pass silently: decoded inputs are refused, a non-finite loss stops training with
one clear error, and non-finite weights are never written over a good checkpoint."""
import sys

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from helpers import TinySegmentationSet, deterministic, tiny_config, tiny_deeplab
from unimatch import engine
from unimatch.cli import exit_on_user_error
from unimatch.distributed import DistContext
from unimatch.engine import Trainer
from unimatch.errors import DataError, TrainingDiverged
from unimatch.finite import NonFiniteLossGuard, nonfinite_tensors, require_finite
from unimatch.report import EvalResult


def setup_module():
    deterministic()


# ---- decoded inputs ---------------------------------------------------------------------------
def test_require_finite_names_the_file_the_count_and_the_first_index():
    array = np.zeros((2, 3, 4), np.float32)
    array[1, 2, 0:2] = np.nan
    array[1, 2, 3] = np.inf
    with pytest.raises(DataError, match=r"scan\.nii\.gz: 3 NaN/Inf value\(s\) .*first at index \(1, 2, 0\)"):
        require_finite(array, "scan.nii.gz")
    assert require_finite(np.ones(3, np.float64), "ok") is not None
    assert require_finite(np.full(3, 255, np.uint8), "ints").dtype == np.uint8


def test_nan_declared_as_nodata_is_missing_data_but_inf_is_still_refused():
    array = np.array([1.0, np.nan, 2.0], np.float32)
    require_finite(array, "scene.tif", nodata=float("nan"))
    with pytest.raises(DataError, match="scene.tif"):
        require_finite(array, "scene.tif", nodata=0.0)
    with pytest.raises(DataError, match="scene.tif: 1 NaN/Inf"):
        require_finite(np.array([np.nan, np.inf], np.float32), "scene.tif", nodata=float("nan"))


# ---- the training loss ------------------------------------------------------------------------
class NaNPatchSet(Dataset):
    """Float images in [0, 1] (as MRI slices); the items in ``bad`` carry a NaN patch."""

    def __init__(self, base: TinySegmentationSet, bad=()):
        self.base, self.bad = base, set(bad)

    def __len__(self):
        return len(self.base)

    def __getitem__(self, index):
        image, mask = self.base[index]
        image = image.float() / 255
        if index in self.bad:
            image[:, 4:8, 4:8] = float("nan")
        return image, mask


def make_trainer(save_dir, labeled, unlabeled=None, **changes):
    cfg = tiny_config(**{"method": "supervised", "epochs": 1, **changes})
    return Trainer(cfg, tiny_deeplab(), labeled, unlabeled, lambda model: EvalResult({"mIoU": 0.5}),
                   DistContext(), save_dir, progress=False)


def finished_run(save_dir):
    """One good supervised epoch in ``save_dir``; returns the bytes of its checkpoints."""
    labeled = NaNPatchSet(TinySegmentationSet(4, "labeled", seed=1, flip=False), bad=())
    make_trainer(save_dir, labeled).fit()
    return {name: (save_dir / name).read_bytes() for name in ("latest.pth", "best.pth")}


def assert_checkpoints_kept(save_dir, before):
    for name, content in before.items():
        assert (save_dir / name).read_bytes() == content, f"{name} was overwritten"
        assert nonfinite_tensors(torch.load(save_dir / name, weights_only=False)["model"]) == []


def test_nan_input_stops_at_that_iteration_naming_the_loss_term(tmp_path):
    before = finished_run(tmp_path)
    labeled = NaNPatchSet(TinySegmentationSet(4, "labeled", seed=1, flip=False), bad=[3])
    trainer = make_trainer(tmp_path, labeled, epochs=2)
    with pytest.raises(TrainingDiverged) as error:
        trainer.fit()
    message = str(error.value)
    assert "\n" not in message
    assert "non-finite loss at epoch 2, iteration" in message and "loss_x=nan" in message
    assert "check the inputs for NaN/Inf, lower lr" in message and "amp" in message
    assert_checkpoints_kept(tmp_path, before)
    # on CPU the check comes before backward: the parameters never took the NaN step (the
    # BatchNorm running statistics of that forward did see the NaN; nothing is saved after it)
    assert nonfinite_tensors(dict(trainer.model.named_parameters())) == []


@pytest.mark.parametrize("method", ["supervised", "unimatch"])
def test_exploding_lr_stops_without_overwriting_the_checkpoints(tmp_path, method):
    unlabeled = TinySegmentationSet(8, "unlabeled", seed=2) if method != "supervised" else None
    labeled = TinySegmentationSet(4, "labeled", seed=1)
    make_trainer(tmp_path, labeled, unlabeled, method=method).fit()
    before = {name: (tmp_path / name).read_bytes() for name in ("latest.pth", "best.pth")}
    with pytest.raises(TrainingDiverged, match="epoch 2.*loss"):
        make_trainer(tmp_path, labeled, unlabeled, method=method, epochs=2, lr=1e30).fit()
    assert_checkpoints_kept(tmp_path, before)


class DeferredGuard(NonFiniteLossGuard):
    """The guard as it runs on CUDA: no per-iteration check, only at log points and epoch end."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.check_every_step = False


def test_deferred_check_as_on_cuda_still_stops_before_any_checkpoint(tmp_path, monkeypatch):
    before = finished_run(tmp_path)
    monkeypatch.setattr(engine, "NonFiniteLossGuard", DeferredGuard)
    labeled = NaNPatchSet(TinySegmentationSet(4, "labeled", seed=1, flip=False), bad=range(4))
    # both iterations of epoch 2 are non-finite: the first one is reported
    with pytest.raises(TrainingDiverged, match=r"epoch 2, iteration 1/2 \(global 3\).*loss_x=nan"):
        make_trainer(tmp_path, labeled, epochs=2).fit()
    assert_checkpoints_kept(tmp_path, before)


def test_weights_that_became_non_finite_are_never_saved(tmp_path):
    before = finished_run(tmp_path)
    labeled = NaNPatchSet(TinySegmentationSet(4, "labeled", seed=1, flip=False), bad=())
    trainer = make_trainer(tmp_path, labeled, epochs=2)
    trainer.resume()
    with torch.no_grad():
        trainer.model.classifier.bias.fill_(float("inf"))
    with pytest.raises(TrainingDiverged, match=r"holds NaN/Inf .*classifier\.bias.*latest\.pth was not overwritten"):
        trainer.save("latest.pth", trainer.checkpoint_state(1))
    assert_checkpoints_kept(tmp_path, before)


def test_guard_reports_the_first_bad_iteration_and_its_terms():
    guard = NonFiniteLossGuard(torch.device("cpu"), iters_per_epoch=5)
    guard.check_every_step = False
    guard.observe(0, torch.tensor(1.0), {"loss": 1.0, "loss_x": 1.0, "loss_s": 1.0, "mask_ratio": 0.5})
    guard.check()
    guard.observe(6, torch.tensor(float("inf")), {"loss": float("inf"), "loss_x": 2.0, "loss_s": float("inf")})
    guard.observe(7, torch.tensor(float("nan")), {"loss": float("nan"), "loss_x": float("nan"), "loss_s": 0.0})
    with pytest.raises(TrainingDiverged, match=r"epoch 2, iteration 2/5 \(global 7\): non-finite term\(s\) "
                                               r"loss=inf, loss_s=inf;"):
        guard.check()


def test_diverged_training_exits_with_status_2_and_one_line(tmp_path, monkeypatch, capsys):
    def main(argv):
        labeled = NaNPatchSet(TinySegmentationSet(4, "labeled", seed=1, flip=False), bad=range(4))
        make_trainer(tmp_path, labeled).fit()

    monkeypatch.setattr(sys, "argv", ["train"])
    with pytest.raises(SystemExit) as exit_info:
        exit_on_user_error(main)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: non-finite loss at epoch 1, iteration 1/2") and err.count("\n") == 1
    assert not (tmp_path / "latest.pth").exists()
