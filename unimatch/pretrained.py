"""A backbone pretrained on a built-in synthetic source set: the demos' stand-in for ImageNet.

Why: the paper's models start from ImageNet weights, and the built-in demos cannot download any.
docs/benchmarks.md measures what the pretrained trunk adds to UniMatch and to the supervised
baseline on the demos that use it.
The source set pairs a demo's shapes with other textures, so its classes are not the target's, as
ImageNet's classes are not those of the paper's benchmarks. The task that owns the source set
describes it (its root, written once, and the train command that reads it) as a
:class:`SyntheticSource` and the ``tasks`` package registers it (:func:`register_synthetic_source`),
so every task can use the trunk and none imports another.

``pretrained: synthetic`` in a config asks for it. The first run trains the task's backbone (same
architecture, width and stem for a ResNet; the ViT ``vit_tiny`` inside a DPT) on every source training
image with the supervised method, through the source owner's real ``train`` entry point in a child
process, and keeps the trunk's weights under ``data_home()/pretrained/``; later runs reuse the file.
The checkpoint's ``backbone.*`` keys are stored without the prefix, the layout every ``pretrained:``
file has (:func:`unimatch.models.backbones.load_backbone_weights`,
:func:`unimatch.models.vit.load_pretrained_vit`).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from unimatch import atomic
from unimatch.checkpoint import load_checkpoint, save_checkpoint
from unimatch.distributed import main_rank_first
from unimatch.errors import CheckpointError, ConfigError
from unimatch.paths import data_home, write_once

SYNTHETIC_PRETRAINED = "synthetic"   # the ``pretrained:`` value that asks for this backbone
# the ResNet trunk's version (its folder name): 2 since its pretraining became 10 epochs, so that a
# data home holding a 23-epoch trunk of version 1 trains the new one instead of refusing the folder
PRETRAIN_VERSION = 2
# 10 x 40 = 400 iterations at batch 8 on the 320 source images: about 60 s on a 2-core AVX2-only CPU
# in fp32, part of every demo's first run (docs/benchmarks.md, "The demos on a CPU without native bf16")
PRETRAIN_EPOCHS = 10
VIT_PRETRAIN_VERSION = 1
PRETRAIN_SEED = 0
# the training settings, pinned so that a change to the source owner's demo config leaves the trunk as
# it is; the loader workers seed the augmentation and the thread count orders the sums, so both are
# pinned too
PRETRAIN_SETTINGS = ("batch_size=8", "crop_size=64", "lr=0.02", "lr_multi=1.0", "sup_weight=1.0",
                     "sup_warmup_epochs=0", "num_workers=2", "threads=1")
# the ViT trunk: a DPT on ``vit_tiny`` trained through the source owner's ViT config
# (SyntheticSource.vit_config; the default config's DeepLabV3+ keys are refused for a DPT), with its
# own pinned settings. The lr was chosen by the source val (seed 0, 20 epochs): see VIT_PRETRAIN_LR.
SYNTHETIC_VITS = ("vit_tiny",)       # the DINOv2 sizes start from Meta's files, not from this set
VIT_PRETRAIN_EPOCHS = 20             # 20 x 40 = 800 iterations at batch 8 on the 320 source images
VIT_PRETRAIN_LR = 0.001
VIT_PRETRAIN_SETTINGS = ("model=dpt", "batch_size=8", "crop_size=70", "optimizer=adamw",
                         f"lr={VIT_PRETRAIN_LR}", "lr_multi=1.0", "weight_decay=0.01", "sup_weight=1.0",
                         "sup_warmup_epochs=0", "num_workers=2", "threads=1")
BACKBONE_FILE = "backbone.pth"
# what a torchrun parent sets; the child is one plain process
DISTRIBUTED_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK",
                   "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT")


@dataclass(frozen=True)
class SyntheticSource:
    """The source set to pretrain on and the command that trains on it, from the task that owns it."""
    train_module: str                             # its ``train`` entry point, run as ``python -m``
    ensure: Callable[[], Path]                    # writes the set once and returns its root
    data_arguments: Callable[[Path], list]        # the flags that point ``train`` at the set's root
    overrides: tuple = ()                         # KEY=VALUE config values the set needs (its class names)
    metric: str = "mIoU"                          # the validation score ``train`` logs each epoch
    vit_config: str | None = None                 # the config (path) ``train`` reads for a ViT trunk


_providers: list[Callable[[], SyntheticSource]] = []


def register_synthetic_source(provider: Callable[[], SyntheticSource]) -> None:
    """Name the source set of ``pretrained: synthetic``: ``provider()`` returns it (called only
    when a trunk is trained, so registering imports nothing). The ``tasks`` package registers the
    built-in one; the last registration wins."""
    _providers.append(provider)


def synthetic_source() -> SyntheticSource:
    if not _providers:
        raise ConfigError("pretrained: synthetic needs a source set, and no task registered one "
                          "(unimatch.pretrained.register_synthetic_source)")
    return _providers[-1]()


def is_vit_trunk(backbone: str) -> bool:
    """A ViT encoder name (``unimatch.models.vit.VIT_SIZES``): its trunk is trained inside a DPT."""
    from unimatch.models.vit import VIT_SIZES
    return backbone in VIT_SIZES


def refuse_unsupported_vit(backbone: str) -> None:
    """``pretrained: synthetic`` trains only the demo ViT; the DINOv2 sizes have Meta's files."""
    from unimatch.models.vit import VIT_SIZES
    if backbone in VIT_SIZES and backbone not in SYNTHETIC_VITS:
        raise ConfigError(f"pretrained: synthetic trains only the demo ViT {', '.join(SYNTHETIC_VITS)}; backbone "
                          f"{backbone} starts from Meta's {VIT_SIZES[backbone].meta_file} (DINOv2 release), "
                          f"or pretrained: null")


def trunk_parameters(backbone: str, width: int | None = None, deep_stem: bool | None = None,
                     epochs: int | None = None) -> tuple[dict, str]:
    """The parameters that make the trunk (its ``meta.json``) and its folder name under
    ``data_home()/pretrained``: a ResNet's are its architecture, width and stem; a ViT's its name."""
    if is_vit_trunk(backbone):
        refuse_unsupported_vit(backbone)
        epochs = VIT_PRETRAIN_EPOCHS if epochs is None else epochs
        parameters = {"version": VIT_PRETRAIN_VERSION, "backbone": backbone, "epochs": int(epochs),
                      "seed": PRETRAIN_SEED}
        return parameters, f"synthetic-v{VIT_PRETRAIN_VERSION}-{backbone}"
    epochs = PRETRAIN_EPOCHS if epochs is None else epochs
    parameters = {"version": PRETRAIN_VERSION, "backbone": backbone, "width": int(width),
                  "deep_stem": bool(deep_stem), "epochs": int(epochs), "seed": PRETRAIN_SEED}
    stem = "deepstem" if deep_stem else "stem7"
    return parameters, f"synthetic-v{PRETRAIN_VERSION}-{backbone}-w{width}-{stem}"


def synthetic_backbone(backbone: str, width: int | None = None, deep_stem: bool | None = None,
                       root: Path | None = None, source: Path | None = None, epochs: int | None = None) -> Path:
    """The backbone file for this trunk, trained once (about a minute on an idle 2-core CPU for the
    demo's ResNet; about 2 minutes, shared, for ``vit_tiny``).

    ``root`` defaults to ``data_home()/pretrained/synthetic-v2-<backbone>-w<width>-<stem>`` for a
    ResNet and ``data_home()/pretrained/synthetic-v1-<backbone>`` for a ViT (``width`` and
    ``deep_stem`` are ResNet keys, not read for it); ``source`` to the registered source set's root;
    both and ``epochs`` are there for small tests.
    """
    parameters, name = trunk_parameters(backbone, width, deep_stem, epochs)
    if root is None:
        root = data_home() / "pretrained" / name
    folder = write_once(Path(root), parameters, lambda staging: _pretrain(staging, parameters, source),
                        what="the built-in synthetic backbone")
    return folder / BACKBONE_FILE


def resolve_pretrained(cfg, ctx=None) -> dict:
    """Config changes that turn ``pretrained: synthetic`` into the backbone file (rank 0 trains it
    once; the other ranks wait, then read it); none for any other value."""
    if cfg.pretrained != SYNTHETIC_PRETRAINED:
        return {}
    if is_vit_trunk(cfg.backbone):
        refuse_unsupported_vit(cfg.backbone)   # before any rank waits
        path = main_rank_first(lambda: synthetic_backbone(cfg.backbone), ctx)
    else:
        path = main_rank_first(lambda: synthetic_backbone(cfg.backbone, cfg.width, cfg.deep_stem), ctx)
    return {"pretrained": str(path)}


def _pretrain(out: Path, parameters: dict, source: Path | None) -> None:
    """Supervised training on the source set in a child process; keeps the trunk's weights (and
    the child's run folder, whose ``best.pth`` they come from)."""
    provider = synthetic_source()
    source = Path(source) if source is not None else provider.ensure()
    run_dir = out / "run"
    if "width" in parameters:   # a ResNet: the owner's default config (a DeepLabV3+)
        config, trunk = [], [f"width={parameters['width']}", f"deep_stem={str(parameters['deep_stem']).lower()}"]
        settings = PRETRAIN_SETTINGS
    else:                       # a ViT: a DPT, through the owner's ViT config
        if provider.vit_config is None:
            raise ConfigError(f"pretrained: synthetic for {parameters['backbone']} needs the source set's ViT config "
                              f"(SyntheticSource.vit_config), and its owner names none")
        config, trunk, settings = ["--config", str(provider.vit_config)], [], VIT_PRETRAIN_SETTINGS
    command = [sys.executable, "-m", provider.train_module, *config, "--method", "supervised",
               *provider.data_arguments(source), "--epochs", str(parameters["epochs"]),
               "--seed", str(parameters["seed"]), "--save-dir", str(run_dir), "--no-progress",
               f"backbone={parameters['backbone']}", *trunk, "pretrained=null",
               *provider.overrides, *settings]
    epoch_line = re.compile(rf"\] epoch (\d+): {re.escape(provider.metric)} ([0-9.]+)")   # the trainer's log line
    env = {k: v for k, v in os.environ.items() if k not in DISTRIBUTED_ENV}
    started = time.monotonic()
    print(f"pretraining the backbone on the synthetic source set ({parameters['epochs']} epochs; the child's "
          f"log is kept as pretrain.log beside the file) ...", file=sys.stderr, flush=True)
    with open(out / "pretrain.log", "w") as log_file, \
            tqdm(total=parameters["epochs"], desc="pretraining", unit="epoch", disable=None) as bar:
        child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
        try:
            for line in child.stdout:
                log_file.write(line)
                epoch = epoch_line.search(line)
                if epoch:
                    bar.update(int(epoch.group(1)) - bar.n)
                    bar.set_postfix_str(f"source val {provider.metric} {float(epoch.group(2)):.1f}")
            finished = child.wait()
        except BaseException:   # interrupted: the child (not in the scheduler's sight) stops too
            child.terminate()
            child.wait()
            raise
    if finished != 0:
        tail = (out / "pretrain.log").read_text().splitlines()[-15:]
        raise CheckpointError("pretraining the synthetic backbone failed:\n" + "\n".join(tail))
    checkpoint = load_checkpoint(run_dir / "best.pth")
    trunk = {k[len("backbone."):]: v for k, v in checkpoint["model"].items() if k.startswith("backbone.")}
    save_checkpoint(trunk, out / BACKBONE_FILE)
    score = round(float(checkpoint["metrics"][provider.metric]), 2)
    manifest = dict(parameters, source=str(source), **{f"source_val_{provider.metric}": score},
                    seconds=round(time.monotonic() - started))
    atomic.write_text(out / "meta.json", json.dumps(manifest, indent=2) + "\n")
