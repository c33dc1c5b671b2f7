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


# ---- UniMatch V2 (LiheYoung/UniMatch-V2): DINOv2 encoder and DPT head ---------------------------
# DINOv2(model_name) in model/backbone/dinov2.py: (embed_dim, depth) of vit_small/base/large/giant2,
# built with img_size 518, patch 14, init_values 1.0 (LayerScale in every block), no register tokens,
# block_chunks 0 (keys blocks.N), ffn "mlp" except "swiglufused" for giant.
OFFICIAL_DINOV2_SIZES = {"small": (384, 12), "base": (768, 12), "large": (1024, 24), "giant": (1536, 40)}
# model_configs of unimatch_v2.py (the remote-sensing script has the same table): (features, out_channels)
OFFICIAL_V2_HEAD_WIDTHS = {"small": (64, [48, 96, 192, 384]), "base": (128, [96, 192, 384, 768]),
                           "large": (256, [256, 512, 1024, 1024]), "giant": (384, [1536, 1536, 1536, 1536])}


def official_dinov2_shapes(embed_dim, depth, swiglu=False, in_chans=3, img_size=518, patch=14) -> dict:
    """Every key of DinoVisionTransformer and its shape, from reading dinov2.py and dinov2_layers/.

    The transformer's own parameters are cls_token (1, 1, D), pos_embed (1, 1 + (518/14)^2, D) and
    mask_token (1, D); PatchEmbed is ``proj`` = Conv2d(in_chans, D, 14, stride 14). A
    NestedTensorBlock holds norm1, attn (qkv Linear(D, 3D, bias), proj Linear(D, D)), ls1.gamma (D),
    norm2, mlp, ls2.gamma; Mlp is fc1 Linear(D, 4D), fc2 Linear(4D, D); SwiGLUFFNFused shrinks the
    hidden width to (int(4D * 2/3) + 7) // 8 * 8 and holds w12 Linear(D, 2 hidden), w3
    Linear(hidden, D). The final ``norm`` is a LayerNorm; ``head`` is Identity (no keys).
    """
    d = embed_dim
    grid = img_size // patch
    shapes = {"cls_token": (1, 1, d), "pos_embed": (1, grid * grid + 1, d), "mask_token": (1, d),
              "patch_embed.proj.weight": (d, in_chans, patch, patch), "patch_embed.proj.bias": (d,)}
    for i in range(depth):
        p = f"blocks.{i}"
        shapes.update({f"{p}.norm1.weight": (d,), f"{p}.norm1.bias": (d,),
                       f"{p}.attn.qkv.weight": (3 * d, d), f"{p}.attn.qkv.bias": (3 * d,),
                       f"{p}.attn.proj.weight": (d, d), f"{p}.attn.proj.bias": (d,), f"{p}.ls1.gamma": (d,),
                       f"{p}.norm2.weight": (d,), f"{p}.norm2.bias": (d,)})
        if swiglu:
            hidden = (int(4 * d * 2 / 3) + 7) // 8 * 8
            shapes.update({f"{p}.mlp.w12.weight": (2 * hidden, d), f"{p}.mlp.w12.bias": (2 * hidden,),
                           f"{p}.mlp.w3.weight": (d, hidden), f"{p}.mlp.w3.bias": (d,)})
        else:
            shapes.update({f"{p}.mlp.fc1.weight": (4 * d, d), f"{p}.mlp.fc1.bias": (4 * d,),
                           f"{p}.mlp.fc2.weight": (d, 4 * d), f"{p}.mlp.fc2.bias": (d,)})
        shapes[f"{p}.ls2.gamma"] = (d,)
    shapes.update({"norm.weight": (d,), "norm.bias": (d,)})
    return shapes


def official_dpt_head_shapes(nclass, embed_dim, features, out_channels) -> dict:
    """Every key of DPTHead (model/semseg/dpt.py, the same head in remote-sensing/) and its shape.

    projects.i = Conv2d(D, out_channels[i], 1); resize_layers = [ConvTranspose2d(c0, c0, 4, stride 4),
    ConvTranspose2d(c1, c1, 2, stride 2), Identity, Conv2d(c3, c3, 3, stride 2)] (a transposed
    convolution's weight is (in, out, k, k)); _make_scratch(expand=False) gives layerN_rn =
    Conv2d(c_{N-1}, features, 3, bias=False); FeatureFusionBlock(expand=False, bn=False) holds
    out_conv Conv2d(F, F, 1) then resConfUnit1/2 (conv1, conv2: Conv2d(F, F, 3, bias)); output_conv
    = Sequential(Conv2d(F, F, 3), ReLU, Conv2d(F, nclass, 1)). stem_transpose is None (no keys).
    """
    c, f = out_channels, features
    shapes = {}
    for i, width in enumerate(c):
        shapes[f"head.projects.{i}.weight"] = (width, embed_dim, 1, 1)
        shapes[f"head.projects.{i}.bias"] = (width,)
    shapes.update({"head.resize_layers.0.weight": (c[0], c[0], 4, 4), "head.resize_layers.0.bias": (c[0],),
                   "head.resize_layers.1.weight": (c[1], c[1], 2, 2), "head.resize_layers.1.bias": (c[1],),
                   "head.resize_layers.3.weight": (c[3], c[3], 3, 3), "head.resize_layers.3.bias": (c[3],)})
    for n in range(1, 5):
        shapes[f"head.scratch.layer{n}_rn.weight"] = (f, c[n - 1], 3, 3)
    for n in range(1, 5):
        p = f"head.scratch.refinenet{n}"
        shapes.update({f"{p}.out_conv.weight": (f, f, 1, 1), f"{p}.out_conv.bias": (f,)})
        for unit in ("resConfUnit1", "resConfUnit2"):
            for conv in ("conv1", "conv2"):
                shapes.update({f"{p}.{unit}.{conv}.weight": (f, f, 3, 3), f"{p}.{unit}.{conv}.bias": (f,)})
    shapes.update({"head.scratch.output_conv.0.weight": (f, f, 3, 3), "head.scratch.output_conv.0.bias": (f,),
                   "head.scratch.output_conv.2.weight": (nclass, f, 1, 1),
                   "head.scratch.output_conv.2.bias": (nclass,)})
    return shapes


def official_dpt_shapes(size, nclass, in_chans=3) -> dict:
    """The official V2 ``DPT(**model_configs[size], nclass)``: ``backbone.`` + DINOv2, then ``head.``.
    The remote-sensing DPT has the same keys (its encoder reads one date of 3 bands)."""
    embed_dim, depth = OFFICIAL_DINOV2_SIZES[size]
    features, out_channels = OFFICIAL_V2_HEAD_WIDTHS[size]
    encoder = official_dinov2_shapes(embed_dim, depth, swiglu=size == "giant", in_chans=in_chans)
    return {**{f"backbone.{k}": v for k, v in encoder.items()},
            **official_dpt_head_shapes(nclass, embed_dim, features, out_channels)}
