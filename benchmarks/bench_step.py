"""Speed of the pieces that differ from the official code, on this machine's device.

1. Strong views: the official per-sample PIL pipeline (ColorJitter p=0.8, RandomGrayscale 0.2,
   Gaussian blur p=0.5, CutMix box; two strong views per image, then ToTensor + Normalize), as a
   data-loader worker runs it, against our batched ``StrongPerturbation`` on the device.
2. One full UniMatch training iteration (forward + backward + SGD) of DeepLabV3+ ResNet-101,
   fp32 against bf16 autocast, and against the supervised-only iteration.

    python benchmarks/bench_step.py --device cuda --crop 321 --batch 8
    python benchmarks/bench_step.py --device cpu --crop 321 --batch 2 --backbone resnet50 --iters 2
"""
from __future__ import annotations

import argparse
import json
import random
import time

import numpy as np
import torch
from PIL import Image, ImageFilter
from torchvision import transforms

from unimatch.config import Config
from unimatch.losses import build_criterion
from unimatch.method import StepSettings, UniMatchStep
from unimatch.models.deeplabv3plus import DeepLabV3Plus
from unimatch.perturb import Normalizer, PerturbationSettings, StrongPerturbation


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def pil_strong_views(images: list[Image.Image], crop: int) -> torch.Tensor:
    """Per-sample strong views with PIL/torchvision transforms, as the official loaders make them."""
    jitter = transforms.RandomApply([transforms.ColorJitter(0.5, 0.5, 0.5, 0.25)], p=0.8)
    gray = transforms.RandomGrayscale(p=0.2)
    to_tensor = transforms.Compose([transforms.ToTensor(),
                                    transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    out = []
    for image in images:
        for _ in range(2):
            view = gray(jitter(image))
            if random.random() < 0.5:
                view = view.filter(ImageFilter.GaussianBlur(radius=np.random.uniform(0.1, 2.0)))
            box = np.zeros((crop, crop), np.uint8)
            if random.random() < 0.5:
                area = np.random.uniform(0.02, 0.4) * crop * crop
                while True:
                    ratio = np.random.uniform(0.3, 1 / 0.3)
                    w, h = int(np.sqrt(area / ratio)), int(np.sqrt(area * ratio))
                    x, y = np.random.randint(0, crop), np.random.randint(0, crop)
                    if x + w <= crop and y + h <= crop:
                        break
                box[y:y + h, x:x + w] = 1
            out.append(to_tensor(view))
    return torch.stack(out)


def time_it(fn, repeats: int, device) -> float:
    fn()
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync(device)
    return (time.perf_counter() - start) / repeats


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--crop", type=int, default=321)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--backbone", default="resnet101")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--json")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    results = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
               "torch": torch.__version__, "crop": args.crop, "batch": args.batch, "backbone": args.backbone}

    rng = np.random.default_rng(0)
    pil = [Image.fromarray(rng.integers(0, 256, (args.crop, args.crop, 3), dtype=np.uint8)) for _ in range(args.batch)]
    results["pil_strong_views_ms_per_batch"] = 1000 * time_it(lambda: pil_strong_views(pil, args.crop), 3,
                                                              torch.device("cpu"))
    perturb = StrongPerturbation(PerturbationSettings(), torch.Generator().manual_seed(0))
    normalizer = Normalizer([0.485, 0.456, 0.406], [0.229, 0.224, 0.225], 3)
    batch = torch.from_numpy(np.stack([np.asarray(p) for p in pil])).permute(0, 3, 1, 2).to(device)

    def ours():
        weak = batch.float() / 255
        for _ in range(2):
            normalizer(perturb(weak))
            perturb.cutmix_boxes(args.batch, args.crop, args.crop, device=device)
    results["ours_strong_views_ms_per_batch"] = 1000 * time_it(ours, 5, device)

    cfg = Config(nclass=21, crop_size=args.crop, backbone=args.backbone, conf_thresh=0.95)
    model = DeepLabV3Plus(21, args.backbone).to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    b, c = args.batch, args.crop
    labeled = (torch.randint(0, 256, (b, 3, c, c), dtype=torch.uint8, device=device),
               torch.randint(0, 21, (b, c, c), device=device))
    weak = (torch.randint(0, 256, (b, 3, c, c), dtype=torch.uint8, device=device),
            torch.zeros(b, c, c, dtype=torch.long, device=device))
    partner = (torch.randint(0, 256, (b, 3, c, c), dtype=torch.uint8, device=device),
               torch.zeros(b, c, c, dtype=torch.long, device=device))
    for method in ("supervised", "unimatch"):
        for amp in (["none", "bf16"] if device.type == "cuda" else ["none"]):
            settings = StepSettings.from_config(Config(method=method, conf_thresh=0.95))
            step = UniMatchStep(model, settings, build_criterion(cfg.criterion, 21), perturb, normalizer, 21)
            autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if amp == "bf16"
                        else torch.autocast(device.type, enabled=False))

            def iteration():
                loss, _ = step(labeled, weak, partner, autocast=autocast)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            results[f"{method}_{amp}_s_per_iter"] = time_it(iteration, args.iters, device)
            if device.type == "cuda":
                results[f"{method}_{amp}_peak_gib"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
                torch.cuda.reset_peak_memory_stats(device)
    print(json.dumps(results, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
