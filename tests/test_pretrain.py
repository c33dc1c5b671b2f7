"""The built-in synthetic backbone (``pretrained: synthetic``): its source set, the pretraining run
through the real entry point, the trunk file every ``pretrained:`` loader reads, and its caching."""
from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from tasks.natural import scenes
from tasks.natural.scenes import DEMO_TEXTURES, SOURCE_CLASSES, SOURCE_TEXTURES, render_sample
from tasks.natural.synthetic import ensure_synthetic_voc
from unimatch import pretrained as pretrain
from unimatch.errors import CheckpointError, ConfigError, DataError
from unimatch.models.backbones import build_backbone
from unimatch.models.dpt import DPT, SiameseDPT
from unimatch.paths import config_path


@pytest.mark.parametrize("textures", [DEMO_TEXTURES, SOURCE_TEXTURES])
def test_each_object_wears_the_texture_its_set_gives_its_class(textures, monkeypatch):
    """The source set's disc is checkered where the demo's is striped, and so on."""
    calls = []
    shape, texture = scenes._shape, scenes._texture
    monkeypatch.setattr(scenes, "_shape", lambda c, *a: calls.append(("shape", c)) or shape(c, *a))
    monkeypatch.setattr(scenes, "_texture", lambda t_id, *a: calls.append(("texture", t_id)) or texture(t_id, *a))
    for index in range(6):
        render_sample(np.random.default_rng([7, index]), 48, textures)
    objects = [(calls[i - 1][1], calls[i][1]) for i in range(1, len(calls))
               if calls[i][0] == "texture" and calls[i - 1][0] == "shape"]
    assert len({c for c, _ in objects}) >= 4   # most classes drawn
    assert all(worn == textures[class_id] for class_id, worn in objects)


def test_textures_must_be_a_permutation_of_the_object_textures(tmp_path):
    with pytest.raises(DataError, match="textures"):
        ensure_synthetic_voc(tmp_path / "bad", n_images=4, size=16, textures=(0, 1, 1, 2, 3, 4))


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A 10-image source set."""
    base = tmp_path_factory.mktemp("pretrain")
    return ensure_synthetic_voc(base / "source", n_images=10, size=32, seed=7, textures=SOURCE_TEXTURES)


@pytest.fixture(scope="module")
def trunk(source):
    """One tiny pretraining: 1 epoch, the tiny trunk at width 8."""
    return pretrain.synthetic_backbone("tiny", 8, True, root=source.parent / "backbone", source=source, epochs=1)


@pytest.fixture(scope="module")
def vit_trunk(source):
    """One tiny pretraining of the demo ViT (a DPT through the natural task's V2 config): 1 epoch."""
    return pretrain.synthetic_backbone("vit_tiny", root=source.parent / "vit", source=source, epochs=1)


def test_pretraining_keeps_the_trunk_of_the_source_run(trunk):
    weights = torch.load(trunk, weights_only=True)
    checkpoint = torch.load(trunk.parent / "run" / "best.pth", weights_only=False)
    expected = {k[len("backbone."):]: v for k, v in checkpoint["model"].items() if k.startswith("backbone.")}
    assert weights.keys() == expected.keys() and len(weights) > 0
    assert all(torch.equal(weights[k], expected[k]) for k in weights)
    meta = json.loads((trunk.parent / "meta.json").read_text())
    assert meta["backbone"] == "tiny" and meta["width"] == 8 and meta["epochs"] == 1
    assert 0.0 <= meta["source_val_mIoU"] <= 100.0
    assert checkpoint["config"]["class_names"] == list(SOURCE_CLASSES)   # the log's tables name the source classes
    # pinned, whatever the natural demo config says: both change the file (unimatch/pretrained.py)
    assert (checkpoint["config"]["threads"], checkpoint["config"]["num_workers"]) == (1, 2)
    source_meta = json.loads((trunk.parent.parent / "source" / "meta.json").read_text())
    assert source_meta["classes"] == list(SOURCE_CLASSES) and source_meta["textures"] == list(SOURCE_TEXTURES)


def test_the_trunk_file_loads_as_a_pretrained_backbone(trunk):
    """Every trunk key is filled from the file (the loader refuses a partial file)."""
    backbone = build_backbone("tiny", pretrained=str(trunk), width=8, deep_stem=True)
    weights = torch.load(trunk, weights_only=True)
    assert all(torch.equal(value, weights[key]) for key, value in backbone.state_dict().items())
    with pytest.raises(CheckpointError, match="do not fit"):
        build_backbone("tiny", pretrained=str(trunk), width=16, deep_stem=True)


def test_a_second_request_reuses_the_file_without_training(trunk, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("pretrained again")

    monkeypatch.setattr(pretrain.subprocess, "run", refuse)
    before = trunk.stat().st_mtime_ns
    again = pretrain.synthetic_backbone("tiny", 8, True, root=trunk.parent, source=trunk.parent.parent / "source",
                                        epochs=1)
    assert again == trunk and trunk.stat().st_mtime_ns == before


def test_the_vit_trunk_is_a_dpt_encoder_trained_on_the_source_set(vit_trunk):
    weights = torch.load(vit_trunk, weights_only=True)
    checkpoint = torch.load(vit_trunk.parent / "run" / "best.pth", weights_only=False)
    expected = {k[len("backbone."):]: v for k, v in checkpoint["model"].items() if k.startswith("backbone.")}
    assert weights.keys() == expected.keys() and "cls_token" in weights
    assert all(torch.equal(weights[k], expected[k]) for k in weights)
    config = checkpoint["config"]
    assert (config["model"], config["backbone"], config["method"], config["optimizer"]) == \
        ("dpt", "vit_tiny", "supervised", "adamw")
    assert config["class_names"] == list(SOURCE_CLASSES)
    assert (config["crop_size"], config["lr"], config["threads"], config["num_workers"]) == \
        (70, pretrain.VIT_PRETRAIN_LR, 1, 2)
    meta = json.loads((vit_trunk.parent / "meta.json").read_text())
    assert {k: meta[k] for k in ("version", "backbone", "epochs", "seed")} == \
        {"version": 1, "backbone": "vit_tiny", "epochs": 1, "seed": 0} and "width" not in meta


def test_the_vit_trunk_fills_the_encoder_of_each_tasks_dpt(vit_trunk):
    """Natural images (RGB), change detection (one encoder for both images) and ACDC (gray: the RGB
    patch kernels summed) read the same file."""
    weights = torch.load(vit_trunk, weights_only=True)
    for model in (DPT(3, "vit_tiny", pretrained=str(vit_trunk)),
                  SiameseDPT(2, "vit_tiny", pretrained=str(vit_trunk), in_channels=6)):
        assert all(torch.equal(value, weights[key]) for key, value in model.backbone.state_dict().items())
    gray = DPT(4, "vit_tiny", pretrained=str(vit_trunk), in_channels=1).backbone.state_dict()
    assert torch.allclose(gray["patch_embed.proj.weight"], weights["patch_embed.proj.weight"].sum(1, keepdim=True))
    assert torch.equal(gray["blocks.3.mlp.fc2.weight"], weights["blocks.3.mlp.fc2.weight"])


def test_the_word_itself_never_reaches_the_encoder_loader():
    """A task that does not resolve ``pretrained: synthetic`` gets one ConfigError, not a missing file."""
    with pytest.raises(ConfigError, match="unresolved"):
        DPT(3, "vit_tiny", pretrained="synthetic")


@pytest.mark.parametrize("backbone", ["dinov2_small", "dinov2_giant"])
def test_the_dinov2_sizes_are_refused_in_one_line(backbone, tmp_path):
    with pytest.raises(ConfigError, match=r"trains only the demo ViT vit_tiny; backbone dinov2_\w+ starts from "
                                          r"Meta's dinov2_vit[sg]14_pretrain.pth") as error:
        pretrain.synthetic_backbone(backbone, root=tmp_path / "vit", source=tmp_path)
    assert "\n" not in str(error.value)
    with pytest.raises(ConfigError, match="trains only the demo ViT"):
        pretrain.resolve_pretrained(types.SimpleNamespace(pretrained="synthetic", backbone=backbone))
    assert not (tmp_path / "vit").exists()


def test_only_the_word_synthetic_is_resolved_and_with_the_configs_trunk(monkeypatch, tmp_path):
    asked = []

    def fake(backbone, width=None, deep_stem=None):
        asked.append((backbone, width, deep_stem))
        return tmp_path / "backbone.pth"

    monkeypatch.setattr(pretrain, "synthetic_backbone", fake)
    cfg = types.SimpleNamespace(pretrained="synthetic", backbone="resnet18", width=16, deep_stem=True)
    assert pretrain.resolve_pretrained(cfg) == {"pretrained": str(tmp_path / "backbone.pth")}
    assert set(asked) == {("resnet18", 16, True)}   # rank 0 writes, then every rank reads
    count = len(asked)
    for other in (None, "torchvision", str(tmp_path / "resnet50.pth")):
        assert pretrain.resolve_pretrained(types.SimpleNamespace(pretrained=other)) == {}
    assert len(asked) == count
    # a ViT's trunk is its name: width and deep_stem are ResNet keys (a DPT config leaves them at defaults)
    vit = types.SimpleNamespace(pretrained="synthetic", backbone="vit_tiny", width=64, deep_stem=False)
    assert pretrain.resolve_pretrained(vit) == {"pretrained": str(tmp_path / "backbone.pth")}
    assert asked[-1] == ("vit_tiny", None, None)


def child_command(monkeypatch, train) -> list:
    """The pretraining child's command line, stopped before it runs (``train()`` asks for the trunk)."""
    commands = []

    def stop(command, **kwargs):
        commands.append(command)
        raise KeyboardInterrupt

    monkeypatch.setattr(pretrain.subprocess, "Popen", stop)
    with pytest.raises(KeyboardInterrupt):
        train()
    (command,) = commands
    return command


def test_the_child_trains_on_the_registered_source_with_the_pinned_settings(tmp_path, monkeypatch):
    """The core builds the command from what the source's owner registered (the ``tasks`` package
    registers the natural source set); this is the command every cached trunk was trained by."""
    source = tmp_path / "source"
    command = child_command(monkeypatch, lambda: pretrain.synthetic_backbone("resnet18", 16, True,
                                                                             root=tmp_path / "backbone", source=source))
    run_dir = Path(command[command.index("--save-dir") + 1])   # in write_once's staging folder
    assert run_dir.name == "run" and run_dir.parent.parent == tmp_path
    assert command == [sys.executable, "-m", "tasks.natural.train", "--method", "supervised",
                       "--data-root", str(source), "--labeled-split", str(source / "splits" / "train.txt"),
                       "--val-split", str(source / "splits" / "val.txt"), "--epochs", "10", "--seed", "0",
                       "--save-dir", str(run_dir), "--no-progress",
                       "backbone=resnet18", "width=16", "deep_stem=true", "pretrained=null",
                       f"class_names=[{', '.join(SOURCE_CLASSES)}]", "batch_size=8", "crop_size=64", "lr=0.02",
                       "lr_multi=1.0", "sup_weight=1.0", "sup_warmup_epochs=0", "num_workers=2", "threads=1"]
    assert not (tmp_path / "backbone").exists()   # nothing half-made is kept
    # the ResNet trunk's parameters: the cached files of every V1 demo were written with them
    assert pretrain.trunk_parameters("resnet18", 16, True) == (
        {"version": 2, "backbone": "resnet18", "width": 16, "deep_stem": True, "epochs": 10, "seed": 0},
        "synthetic-v2-resnet18-w16-deepstem")


def test_the_vit_child_trains_a_dpt_through_the_natural_v2_config(tmp_path, monkeypatch):
    """The default config's DeepLabV3+ keys are refused for a DPT: the source owner names a ViT config."""
    source = tmp_path / "source"
    command = child_command(monkeypatch, lambda: pretrain.synthetic_backbone("vit_tiny", root=tmp_path / "vit",
                                                                             source=source))
    run_dir = Path(command[command.index("--save-dir") + 1])
    assert command == [sys.executable, "-m", "tasks.natural.train",
                       "--config", str(config_path("natural", "synthetic_v2.yaml")), "--method", "supervised",
                       "--data-root", str(source), "--labeled-split", str(source / "splits" / "train.txt"),
                       "--val-split", str(source / "splits" / "val.txt"), "--epochs", "20", "--seed", "0",
                       "--save-dir", str(run_dir), "--no-progress", "backbone=vit_tiny", "pretrained=null",
                       f"class_names=[{', '.join(SOURCE_CLASSES)}]", "model=dpt", "batch_size=8", "crop_size=70",
                       "optimizer=adamw", f"lr={pretrain.VIT_PRETRAIN_LR}", "lr_multi=1.0", "weight_decay=0.01",
                       "sup_weight=1.0", "sup_warmup_epochs=0", "num_workers=2", "threads=1"]


def test_the_default_root_is_the_cache_every_demo_reads(tmp_path, monkeypatch):
    asked = []
    monkeypatch.setattr(pretrain, "write_once", lambda root, parameters, make, what: asked.append(root) or root)
    monkeypatch.setattr(pretrain, "data_home", lambda: tmp_path)
    pretrain.synthetic_backbone("resnet18", 16, True)
    pretrain.synthetic_backbone("resnet50", 64, False)
    pretrain.synthetic_backbone("vit_tiny", 64, False)   # width and stem are not a ViT's
    assert asked == [tmp_path / "pretrained" / "synthetic-v2-resnet18-w16-deepstem",
                     tmp_path / "pretrained" / "synthetic-v2-resnet50-w64-stem7",
                     tmp_path / "pretrained" / "synthetic-v1-vit_tiny"]
