"""ACDC with UniMatch V2: ``--method unimatch_v2`` without ``--config`` trains the V2 demo config
(the DPT on one-channel slices), and evaluate / predict read its checkpoint with no other argument;
the V2 configs keep the V1 ACDC losses and perturbations and a slice side of whole 14-pixel patches."""
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from tasks.acdc import evaluate, predict, train
from tasks.acdc.common import TASK, AcdcConfig
from unimatch.config import load_config

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "acdc"


@pytest.fixture(scope="module")
def run(acdc_phantom, tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    save_dir = tmp_path_factory.mktemp("run")
    train.main(["--data-root", str(acdc_phantom), "--cases", "1", "--method", "unimatch_v2", "--save-dir", str(save_dir),
                "--epochs", "1", "--batch-size", "4", "--seed", "0", "--no-progress", "--device", "cpu",
                "crop_size=28"])
    return save_dir


def test_unimatch_v2_without_config_trains_the_v2_demo_dpt_and_evaluates_the_ema(run):
    assert TASK.default_config_for("unimatch_v2") == CONFIGS / "synthetic_v2.yaml"
    assert TASK.default_config_for("unimatch") == CONFIGS / "synthetic.yaml"
    stored = torch.load(run / "best.pth", map_location="cpu", weights_only=False)
    cfg = stored["config"]
    assert (cfg["model"], cfg["backbone"], cfg["in_channels"], cfg["crop_size"]) == ("dpt", "vit_tiny", 1, 28)
    assert cfg["method"] == "unimatch_v2" and cfg["unsup_loss"] == "dice"
    assert stored["model"]["backbone.patch_embed.proj.weight"].shape[1] == 1
    assert (run / "split.json").is_file()
    metrics = (run / "metrics.jsonl").read_text()
    assert '"ema/mean_dice"' in metrics


def test_evaluate_and_predict_read_the_v2_checkpoint_alone(run, acdc_phantom, tmp_path, capsys):
    checkpoint = run / "best.pth"
    out = evaluate.main(["--checkpoint", str(checkpoint)])
    assert f"(config: {checkpoint} (stored config))" in capsys.readouterr().out
    assert 0.0 <= out["metrics"]["mean_dice"] <= 100.0 and len(out["cases"]) == 2
    test = evaluate.main(["--checkpoint", str(checkpoint), "--split", "test"])
    assert len(test["cases"]) == 4 and not set(test["cases"]) & set(out["cases"])

    source_path = sorted(p for p in (acdc_phantom / "training" / "patient001").glob("*.nii.gz")
                         if not p.name.endswith("_gt.nii.gz"))[0]
    written = predict.main(["--checkpoint", str(checkpoint), "--input", str(source_path),
                            "--output", str(tmp_path / "out")])
    assert len(written) == 1
    labels, source = nib.load(str(written[0])), nib.load(str(source_path))
    assert labels.shape == source.shape
    np.testing.assert_allclose(labels.affine, source.affine)
    assert set(np.unique(np.asarray(labels.dataobj))) <= {0, 1, 2, 3}


@pytest.mark.parametrize("name, v1", [("synthetic_v2.yaml", "synthetic.yaml"), ("acdc_v2.yaml", "acdc.yaml")])
def test_the_v2_configs_keep_the_v1_acdc_losses_and_perturbations_on_whole_patches(name, v1):
    cfg = load_config(CONFIGS / name, schema=AcdcConfig)
    old = load_config(CONFIGS / v1, schema=AcdcConfig)
    assert cfg.model == "dpt" and cfg.method == "unimatch_v2" and cfg.in_channels == 1
    assert cfg.effective_slice_size % 14 == 0
    for key in ("criterion", "unsup_loss", "conf_thresh", "grayscale_p", "channel_group_size", "intensity_norm",
                "epochs", "batch_size", "nclass", "select_metric"):
        assert getattr(cfg, key) == getattr(old, key), key
    assert cfg.method_setting("optimizer") == "adamw" and cfg.method_setting("teacher") == "ema"
