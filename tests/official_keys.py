"""State-dict keys of the official UniMatch models, written from the official code (LiheYoung/UniMatch),
never generated from ours: checkpoints and pretrained files of the official releases load only
if our models have exactly these names."""

BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def bn_keys(prefix):
    return [f"{prefix}.{name}" for name in BN]


def official_deep_stem_resnet_keys(blocks):
    """Keys of the official UniMatch ``model/backbone/resnet.py`` (deep stem, Bottleneck blocks):
    ``conv1`` is Sequential(conv, bn, relu, conv, bn, relu, conv) -> conv1.0/1/3/4/6, then ``bn1``;
    every stage's first block has ``downsample`` = Sequential(conv1x1, bn)."""
    keys = ["conv1.0.weight", *bn_keys("conv1.1"), "conv1.3.weight", *bn_keys("conv1.4"), "conv1.6.weight",
            *bn_keys("bn1")]
    for stage, count in enumerate(blocks, start=1):
        for block in range(count):
            prefix = f"layer{stage}.{block}"
            for i in (1, 2, 3):
                keys += [f"{prefix}.conv{i}.weight", *bn_keys(f"{prefix}.bn{i}")]
            if block == 0:
                keys += [f"{prefix}.downsample.0.weight", *bn_keys(f"{prefix}.downsample.1")]
    return keys


RESNET50_BLOCKS, RESNET101_BLOCKS = (3, 4, 6, 3), (3, 4, 23, 3)

# Non-backbone keys of the official DeepLabV3+ (model/semseg/deeplabv3plus.py, the same head in the
# natural-image and remote-sensing code), in state-dict order: head.b0..b3 (conv, bn), head.b4.gap
# (pool, conv, bn), head.project (conv, bn), reduce (conv, bn), fuse = flat Sequential(conv, bn,
# relu, conv, bn, relu), classifier.
OFFICIAL_DEEPLAB_HEAD_KEYS = (
    [k for b in ("b0", "b1", "b2", "b3") for k in [f"head.{b}.0.weight"] + bn_keys(f"head.{b}.1")]
    + ["head.b4.gap.1.weight"] + bn_keys("head.b4.gap.2")
    + ["head.project.0.weight"] + bn_keys("head.project.1")
    + ["reduce.0.weight"] + bn_keys("reduce.1")
    + ["fuse.0.weight"] + bn_keys("fuse.1") + ["fuse.3.weight"] + bn_keys("fuse.4")
    + ["classifier.weight", "classifier.bias"])
# Non-backbone keys of the official remote-sensing PSPNet (more-scenarios/remote-sensing, pspnet.py).
OFFICIAL_PSPNET_HEAD_KEYS = (
    [k for i in (1, 2, 3, 4) for k in [f"head.conv5.0.conv{i}.0.weight"] + bn_keys(f"head.conv5.0.conv{i}.1")]
    + ["head.conv5.1.weight"] + bn_keys("head.conv5.2") + ["head.conv5.5.weight", "head.conv5.5.bias"])
