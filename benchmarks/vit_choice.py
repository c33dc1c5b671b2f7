"""Why our own DINOv2 ViT (unimatch/models/vit.py) and not timm's: keys, tokens and speed of the three.

Loads the official V2 ``DINOv2('small')`` (random weights, seeded) into ours and into timm's
``vit_small_patch14_dinov2`` (``dynamic_img_size``), then reports which official keys timm lacks (and
how its ViT-g names differ), the
largest difference of each one's last-block tokens from the official ones at 56x70, and the time of
one encoder forward at 518x518, batch 1, on the CPU (best and median of ``--repeats``, in rounds that
alternate the three). timm is not a dependency: install it apart, e.g.
``pip install --target /tmp/timmpkg --no-deps timm``.

    PYTHONPATH=.:/tmp/timmpkg python benchmarks/vit_choice.py --official /path/to/UniMatch-V2
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch


def timed(forward, repeats: int) -> list[float]:
    with torch.no_grad():
        forward()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            forward()
            times.append((time.perf_counter() - start) * 1000)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", required=True, help="a checkout of LiheYoung/UniMatch-V2")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    sys.path.insert(0, args.official)
    import timm
    from model.backbone.dinov2 import DINOv2

    from unimatch.models.vit import VisionTransformer

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    official = DINOv2("small").eval()
    ours = VisionTransformer("dinov2_small").eval()
    ours.load_state_dict(official.state_dict())
    theirs = timm.create_model("vit_small_patch14_dinov2", pretrained=False, img_size=518,
                               dynamic_img_size=True).eval()
    lacking = sorted(set(official.state_dict()) - set(theirs.state_dict()))
    theirs.load_state_dict({k: v for k, v in official.state_dict().items() if k not in lacking})
    print(f"timm {timm.__version__}: official keys it lacks: {lacking}")
    with torch.device("meta"):   # ViT-g, compared with ours (whose keys are the official ones, tests/test_dpt.py)
        giant = set(timm.create_model("vit_giant_patch14_dinov2", pretrained=False, img_size=518).state_dict())
        official_giant = set(VisionTransformer("dinov2_giant").state_dict())
    print(f"ViT-g: official keys timm lacks: {sorted(official_giant - giant)[:4]} ..., timm's own: "
          f"{sorted(giant - official_giant)[:4]} ...")

    x = torch.randn(1, 3, 56, 70)
    with torch.no_grad():
        reference = official.get_intermediate_layers(x, [11])[0]
        for name, tokens in (("ours", ours.get_intermediate_layers(x, [11])[0]),
                             ("timm", theirs.forward_features(x)[:, 1:])):
            print(f"56x70 last-block tokens, max |{name} - official|: {(tokens - reference).abs().max():.2e}")

    x = torch.randn(1, 3, 518, 518)
    forwards = {"ours": lambda: ours.get_intermediate_layers(x, [11]), "timm": lambda: theirs.forward_features(x),
                "official": lambda: official.get_intermediate_layers(x, [11])}
    for round_index in range(args.rounds):
        for name, forward in forwards.items():
            times = timed(forward, args.repeats)
            print(f"round {round_index + 1} {name:8s} 518x518 batch 1, {args.threads} thread(s): "
                  f"best {min(times):.0f} ms, median {statistics.median(times):.0f} ms")


if __name__ == "__main__":
    main()
