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


def official_unet_shapes(in_chns: int = 1, class_num: int = 4, ft=(16, 32, 64, 128, 256)) -> dict:
    """Every state-dict key of the official medical UNet and its shape, written from reading
    LiheYoung/UniMatch more-scenarios/medical/model/unet.py (not from our model).

    There ``Decoder`` builds ``UpBlock(c_deep, c_skip, c_out, dropout_p=0.0)`` without passing
    ``bilinear``, so ``UpBlock``'s default ``bilinear=True`` applies: ``conv1x1`` =
    Conv2d(c_deep, c_skip, 1), then a parameter-free ``nn.Upsample``; no ``up`` weights. A
    ``ConvBlock(cin, cout)`` is ``conv_conv`` = [Conv2d 3x3, BN, LeakyReLU, Dropout, Conv2d 3x3,
    BN, LeakyReLU], whose parameters sit at indices 0, 1, 4, 5.
    """
    shapes = {}

    def conv_block(prefix, cin, cout):
        for index, c_in in ((0, cin), (4, cout)):
            shapes[f"{prefix}.conv_conv.{index}.weight"] = (cout, c_in, 3, 3)
            shapes[f"{prefix}.conv_conv.{index}.bias"] = (cout,)
        for index in (1, 5):
            for name in ("weight", "bias", "running_mean", "running_var"):
                shapes[f"{prefix}.conv_conv.{index}.{name}"] = (cout,)
            shapes[f"{prefix}.conv_conv.{index}.num_batches_tracked"] = ()

    conv_block("encoder.in_conv", in_chns, ft[0])
    for i in range(1, 5):
        conv_block(f"encoder.down{i}.maxpool_conv.1", ft[i - 1], ft[i])
    for i in range(1, 5):
        deep, skip = ft[5 - i], ft[4 - i]
        shapes[f"decoder.up{i}.conv1x1.weight"] = (skip, deep, 1, 1)
        shapes[f"decoder.up{i}.conv1x1.bias"] = (skip,)
        conv_block(f"decoder.up{i}.conv", 2 * skip, skip)
    shapes["decoder.out_conv.weight"] = (class_num, ft[0], 3, 3)
    shapes["decoder.out_conv.bias"] = (class_num,)
    return shapes
