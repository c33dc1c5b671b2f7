"""The source set of ``pretrained: synthetic`` (:mod:`unimatch.pretrained`), which this task owns.

The set (:func:`tasks.natural.synthetic.ensure_synthetic_source`) pairs the demo's shapes with other
textures, so its classes are not the target's, as ImageNet's classes are not Pascal's; the trunk
is trained on it through this task's ``train`` entry point: a ResNet trunk with the default config
(a DeepLabV3+), the ViT ``vit_tiny`` with the V2 demo config (a DPT; the default config's DeepLabV3+
keys are refused for it), the settings that shape the trunk pinned by :mod:`unimatch.pretrained`. The ``tasks`` package registers
:data:`SYNTHETIC_SOURCE`, so another task that asks for the trunk never imports this one.
"""
from __future__ import annotations

from pathlib import Path

from tasks.natural.scenes import SOURCE_CLASSES
from tasks.natural.synthetic import ensure_synthetic_source
from unimatch.paths import config_path
from unimatch.pretrained import SyntheticSource


def data_arguments(source: Path) -> list[str]:
    """Every source training image is labelled; its validation images choose ``best.pth``."""
    return ["--data-root", str(source), "--labeled-split", str(source / "splits" / "train.txt"),
            "--val-split", str(source / "splits" / "val.txt")]


SYNTHETIC_SOURCE = SyntheticSource(train_module="tasks.natural.train", ensure=ensure_synthetic_source,
                                   data_arguments=data_arguments,
                                   overrides=(f"class_names=[{', '.join(SOURCE_CLASSES)}]",),
                                   vit_config=str(config_path("natural", "synthetic_v2.yaml")))
