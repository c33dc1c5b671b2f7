"""The shipped UniMatch V2 configs of the natural-image and change-detection tasks: each loads as it is,
builds its model, and holds the official V2 hyperparameters.

The expected values are written here from the official files of LiheYoung/UniMatch-V2
(configs/{pascal,cityscapes,coco}.yaml, remote-sensing/configs/{levir,whu}.yaml) and from what its
scripts do with them: AdamW (betas 0.9/0.999, weight decay 0.01), an EMA capped at 0.996, pseudo-labels
from the EMA in unimatch_v2.py and from the student in remote-sensing/unimatch_v2.py, a sliding-window
evaluation for cityscapes only (windows of crop_size).
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

from tasks.change_detection.common import CDConfig, ChangeDetectionTask
from tasks.natural.common import NaturalConfig, NaturalTask
from unimatch.config import load_config, method_setting
from unimatch.models import build_model
from unimatch.paths import config_path

OHEM = {"name": "OHEM", "kwargs": {"ignore_index": 255, "thresh": 0.7, "min_kept": 200000}}
CE = {"name": "CELoss", "kwargs": {"ignore_index": 255}}
# file -> (schema, official values); every official file has lr 5e-6, lr_multi 40, conf_thresh 0.95, lock_backbone False
OFFICIAL = {
    "natural/pascal_v2.yaml": (NaturalConfig, dict(
        dataset="pascal", nclass=21, crop_size=518, epochs=60, batch_size=4, criterion=CE,
        backbone="dinov2_small", model="dpt", eval_mode="original", teacher="ema")),
    "natural/cityscapes_v2.yaml": (NaturalConfig, dict(
        dataset="cityscapes", nclass=19, crop_size=798, epochs=180, batch_size=2, criterion=OHEM,
        backbone="dinov2_small", model="dpt", eval_mode="sliding_window", teacher="ema")),
    "natural/coco_v2.yaml": (NaturalConfig, dict(
        dataset="coco", nclass=81, crop_size=518, epochs=20, batch_size=4, criterion=CE,
        backbone="dinov2_small", model="dpt", eval_mode="original", teacher="ema")),
    "change_detection/levir_v2.yaml": (CDConfig, dict(
        dataset="levir", nclass=2, crop_size=252, epochs=60, batch_size=8, criterion=CE,
        backbone="dinov2_base", model="siamese_dpt", eval_mode="original", teacher="student")),
    "change_detection/whu_v2.yaml": (CDConfig, dict(
        dataset="whu", nclass=2, crop_size=252, epochs=60, batch_size=8, criterion=CE,
        backbone="dinov2_base", model="siamese_dpt", eval_mode="original", teacher="student")),
}
# DINOv2 encoder parameters (Meta's files; docs/architecture.md)
ENCODER_PARAMS = {"dinov2_small": "22.06M", "dinov2_base": "86.58M"}


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_v2_config_holds_the_official_values_and_builds_its_model(name):
    schema, expected = OFFICIAL[name]
    task, file = name.split("/")
    cfg = load_config(config_path(task, file), schema=schema)
    teacher = expected.pop("teacher")
    assert {key: getattr(cfg, key) for key in expected} == expected
    assert (cfg.method, cfg.lr, cfg.lr_multi, cfg.conf_thresh, cfg.lock_backbone) == \
        ("unimatch_v2", 5e-6, 40.0, 0.95, False)
    resolved = {key: method_setting(vars(cfg), key)
                for key in ("teacher", "ema", "comp_drop", "cutmix_partner", "optimizer", "weight_decay")}
    assert resolved == dict(teacher=teacher, ema=True, comp_drop=True, cutmix_partner="flip", optimizer="adamw",
                            weight_decay=0.01)
    assert cfg.ema_ratio == 0.996
    assert cfg.effective_eval_window == cfg.crop_size   # the official sliding window is crop_size wide
    if task == "change_detection":
        assert cfg.grayscale_p == 0.0 and cfg.select_metric == "changed_IoU" and cfg.class_values == [0, 255]
    with torch.device("meta"):
        model = build_model(dataclasses.replace(cfg, pretrained=None))
    assert f"{sum(p.numel() for p in model.backbone.parameters()) / 1e6:.2f}M" == ENCODER_PARAMS[cfg.backbone]
    assert model.backbone.patch_embed.proj.in_channels == 3   # the siamese DPT runs the encoder on each date
    assert getattr(model, "supports_comp_drop", False)


def test_the_v2_configs_name_the_official_pretrained_files():
    """The official scripts read ./pretrained/<backbone>.pth (Meta's DINOv2 files renamed)."""
    for name, (schema, _) in OFFICIAL.items():
        task, file = name.split("/")
        cfg = load_config(config_path(task, file), schema=schema)
        assert cfg.pretrained == f"pretrained/{cfg.backbone}.pth", name


@pytest.mark.parametrize("task, schema, owner", [("natural", NaturalConfig, NaturalTask),
                                                 ("change_detection", CDConfig, ChangeDetectionTask)])
def test_the_v2_demo_trains_on_the_v1_demos_data_for_at_least_as_many_iterations(task, schema, owner):
    """The V2 demo differs from the V1 demo in the model, the method and the schedule only: the same
    synthetic set and splits, the same batch, at least the V1 demo's epochs (the V2 demo keeps the
    iterations it was benchmarked at; the V1 demo became shorter for CPUs without bf16), a crop that
    is the multiple of the patch 14 nearest the V1 crop, and train --method unimatch_v2 picks it."""
    v1 = load_config(config_path(task, "synthetic.yaml"), schema=schema)
    v2 = load_config(config_path(task, "synthetic_v2.yaml"), schema=schema)
    data = [f.name for f in dataclasses.fields(schema) if f.name.startswith("synthetic_")] + \
        ["dataset", "nclass", "class_names", "labeled_split", "unlabeled_split", "val_split", "batch_size",
         "eval_mode", "select_metric"]
    assert {k: getattr(v2, k) for k in data} == {k: getattr(v1, k) for k in data}
    assert v2.epochs >= v1.epochs
    assert v2.crop_size % 14 == 0 and abs(v2.crop_size - v1.crop_size) <= 7
    assert (v2.method, v2.backbone, v2.model) == ("unimatch_v2", "vit_tiny", "siamese_dpt" if task != "natural" else "dpt")
    assert owner().default_config_for("unimatch_v2") == config_path(task, "synthetic_v2.yaml")
