"""Speed of one full training iteration, and of the batched strong views.

``iteration`` (default): one UniMatch iteration (``Trainer.train_iteration``: the real
``UniMatchStep``, backward, SGD step, i.e. the code path of ``Trainer.fit``) of a scenario at the
official shapes, for each speed variant. Every variant runs in a fresh process (so peak RSS and
the allocator setting are its own); the variants are alternated round by round (A B C A B C ...),
so a load change on a shared machine hits them alike. Reported per variant: s/iter (median, min,
max over all timed iterations), iterations per second, the process's CPU seconds per iteration
(less disturbed than wall time when other jobs share the cores), peak RSS (CPU) or peak GPU memory, the
load average before each process, and on CUDA achieved TFLOP/s and the share of the device's peak
(FLOPs counted once with ``FlopCounterMode``).

    python benchmarks/bench_step.py --scenario natural --variants fp32 recommended --rounds 3
    python benchmarks/bench_step.py --scenario acdc --ref-root /tmp/main-ref --variants main fp32_fast

``--ref-root DIR`` adds the variant ``main``: the same iteration with the ``unimatch`` package of
another checkout (e.g. ``git worktree add /tmp/main-ref 630649b``), at its defaults.

``views``: the official per-sample PIL strong-view pipeline against our batched
``StrongPerturbation`` (``--part views``).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# (config file, overrides) at the official settings; no pretrained file (random weights run alike)
SCENARIOS = {
    "natural": ("configs/natural/pascal.yaml", {"backbone": "resnet50", "batch_size": 2}),
    "change_detection": ("configs/change_detection/whu.yaml", {"batch_size": 2, "in_channels": 6}),
    "acdc": ("configs/acdc/acdc.yaml", {"batch_size": 12}),
}
# speed settings per variant; "main" is the reference checkout at its own defaults
VARIANTS = {
    "main": {},
    "fp32": {"amp": "none", "channels_last": False, "cpu_allocator": "default", "compile": False},
    "channels_last": {"amp": "none", "channels_last": True, "cpu_allocator": "default", "compile": False},
    "reuse": {"amp": "none", "channels_last": False, "cpu_allocator": "reuse", "compile": False},
    "fp32_fast": {"amp": "none", "channels_last": True, "cpu_allocator": "reuse", "compile": False},
    "bf16": {"amp": "bf16", "channels_last": False, "cpu_allocator": "default", "compile": False},
    "recommended": {"amp": "bf16", "channels_last": True, "cpu_allocator": "reuse", "compile": False},
    "compile": {"amp": "none", "channels_last": True, "cpu_allocator": "reuse", "compile": True},
    "recommended_compile": {"amp": "bf16", "channels_last": True, "cpu_allocator": "reuse", "compile": True},
}
# opt-in, not exact: the CutMix partner and its pseudo-label from the same batch (one forward less)
for _name in ("fp32_fast", "recommended"):
    VARIANTS[f"{_name}_batch_partner"] = dict(VARIANTS[_name], partner_from_batch=True)
# environment of a variant's process (OpenMP reads it when torch loads); the rest inherit ours
VARIANT_ENV = {"recommended_passive": {"OMP_WAIT_POLICY": "PASSIVE"}}
VARIANTS["recommended_passive"] = VARIANTS["recommended"]
# dense peak TFLOP/s (fp32 without TF32, bf16) of devices we quote a share for
DEVICE_PEAK_TFLOPS = {"H200": (67.0, 989.0), "H100": (67.0, 989.0), "A100": (19.5, 312.0)}


# ---- one variant, in its own process ---------------------------------------------------------
def scenario_config(name: str, settings: dict):
    """The scenario's official YAML read into the core ``Config`` (task-only keys, such as ACDC's
    intensity normalisation, do not shape an iteration), so the benchmark needs no task packages."""
    import dataclasses

    import yaml

    from unimatch.config import Config, load_config
    path, overrides = SCENARIOS[name]
    known = {f.name for f in dataclasses.fields(Config)}
    official = {k: v for k, v in yaml.safe_load((REPO / path).read_text()).items() if k in known}
    values = dict(official, **overrides, **settings, pretrained=None, num_workers=0, log_every=0)
    return load_config(None, **values)


def random_batches(cfg, device):
    """Labelled, unlabelled and partner batches that follow the data contract (uint8 images, or
    float [0, 1] MRI; labels; ignore masks with a padded strip)."""
    import torch
    g = torch.Generator().manual_seed(0)
    b, c, s = cfg.batch_size, cfg.in_channels, cfg.crop_size

    def image():
        if c == 1:
            return torch.rand(b, c, s, s, generator=g)
        return torch.randint(0, 256, (b, c, s, s), generator=g, dtype=torch.uint8)

    ignore = torch.zeros(b, s, s, dtype=torch.long)
    ignore[:, -s // 8:] = 255
    labels = torch.randint(0, cfg.nclass, (b, s, s), generator=g)
    return [(image(), labels), (image(), ignore), (image(), ignore.clone())]


def run_variant(args) -> dict:
    settings = json.loads(args.settings)
    if "cpu_allocator" in settings:
        from unimatch.precision import configure_cpu_allocator
        configure_cpu_allocator(settings["cpu_allocator"])  # first, as the entry points do
    import resource

    import torch
    from torch.utils.data import TensorDataset

    from unimatch.distributed import DistContext, wrap_model
    from unimatch.engine import Trainer
    from unimatch.models import build_model

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    cfg = scenario_config(args.scenario, settings)
    ctx = DistContext(0, 1, 0, device)
    model = build_model(cfg)
    if "channels_last" in settings:
        from unimatch.precision import prepare_model
        model = prepare_model(model, cfg.channels_last, cfg.compile, device)
    model = wrap_model(model, ctx)
    batches = random_batches(cfg, device)
    labeled = TensorDataset(*batches[0])
    unlabeled = TensorDataset(*batches[1])
    with tempfile.TemporaryDirectory() as save_dir:
        trainer = Trainer(cfg, model, labeled, unlabeled, lambda m: None, ctx, save_dir, progress=False)
        device_batches = [trainer.to_device(list(b)) for b in batches]

        def iteration():
            if hasattr(trainer, "train_iteration"):
                return trainer.train_iteration(device_batches)
            # the reference checkout's Trainer.fit body
            loss, stats = trainer.step(*device_batches, autocast=trainer.autocast)
            trainer.optimizer.zero_grad(set_to_none=True)
            trainer.scaler.scale(loss).backward()
            trainer.scaler.step(trainer.optimizer)
            trainer.scaler.update()
            return stats

        def sync():
            if device.type == "cuda":
                torch.cuda.synchronize(device)

        for _ in range(args.warmup):
            iteration()
        sync()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        times, cpu_times = [], []
        for _ in range(args.iters):
            start, cpu_start = time.perf_counter(), time.process_time()
            iteration()
            sync()
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
        result = {"times": times, "cpu_times": cpu_times,
                  "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20}
        if device.type == "cuda":
            result["peak_gpu_gib"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
        if args.flops:
            from torch.utils.flop_counter import FlopCounterMode
            counter = FlopCounterMode(display=False)
            with counter:
                iteration()
            result["flops"] = counter.get_total_flops()
        if args.profile:
            result["profile"] = profile_ops(iteration, sync)
    return result


def profile_ops(iteration, sync, top: int = 12) -> list[dict]:
    """One more iteration under ``torch.profiler``: the operators with the most self time (CPU,
    or CUDA on a GPU) and their share of the iteration, to see which work an option could cut."""
    import torch
    activities = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        iteration()
        sync()
    events = prof.key_averages()
    attribute = "self_device_time_total" if len(activities) > 1 else "self_cpu_time_total"
    total = sum(getattr(e, attribute) for e in events) or 1.0
    ranked = sorted(events, key=lambda e: getattr(e, attribute), reverse=True)[:top]
    return [{"op": e.key, "self_s": getattr(e, attribute) / 1e6, "share": getattr(e, attribute) / total,
             "calls": e.count} for e in ranked]


# ---- the parent: alternate the variants, summarise -------------------------------------------
def measure(args, variants: list[str]) -> dict:
    runs = {v: [] for v in variants}
    for round_index in range(args.rounds):
        order = variants if round_index % 2 == 0 else variants[::-1]
        for variant in order:
            root = Path(args.ref_root) if variant == "main" else REPO
            env = dict(os.environ, PYTHONPATH=str(root), OMP_NUM_THREADS=str(args.threads),
                       NO_ALBUMENTATIONS_UPDATE="1", **VARIANT_ENV.get(variant, {}))
            command = [sys.executable, str(Path(__file__).resolve()), "--child", "--scenario", args.scenario,
                       "--device", args.device, "--threads", str(args.threads), "--iters", str(args.iters),
                       "--warmup", str(args.warmup), "--settings", json.dumps(VARIANTS[variant])]
            if args.flops and not runs[variant]:
                command.append("--flops")
            if args.profile and not runs[variant]:
                command.append("--profile")
            load = os.getloadavg()[0]
            done = subprocess.run(command, env=env, cwd=root, capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"variant {variant} failed:\n{done.stderr[-3000:]}")
            result = json.loads(done.stdout.strip().splitlines()[-1])
            result["load_before"] = load
            runs[variant].append(result)
            print(f"round {round_index + 1} {variant}: " + " ".join(f"{t:.2f}" for t in result["times"]) +
                  " s/iter (CPU " + " ".join(f"{t:.2f}" for t in result["cpu_times"]) + f" s), peak RSS {result['peak_rss_gb']:.2f} GB, load {load:.2f}", file=sys.stderr, flush=True)
    return runs


def summarise(args, runs: dict) -> dict:
    import torch
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    out = {"scenario": args.scenario, "device": device_name, "threads": args.threads, "torch": torch.__version__,
           "iters": args.iters, "warmup": args.warmup, "rounds": args.rounds,
           "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(unset)"), "variants": {}}
    base = None
    for variant, results in runs.items():
        times = [t for r in results for t in r["times"]]
        median = statistics.median(times)
        cpu_times = [t for r in results for t in r["cpu_times"]]
        row = {"settings": VARIANTS[variant], "s_per_iter_median": median, "s_per_iter_min": min(times),
               "cpu_s_per_iter_median": statistics.median(cpu_times), "cpu_times": cpu_times,
               "s_per_iter_max": max(times), "iter_per_s": 1 / median,
               "peak_rss_gb": max(r["peak_rss_gb"] for r in results),
               "load_average_before": [r["load_before"] for r in results], "times": times}
        if "peak_gpu_gib" in results[0]:
            row["peak_gpu_gib"] = max(r["peak_gpu_gib"] for r in results)
        profile = next((r["profile"] for r in results if "profile" in r), None)
        if profile:
            row["profile"] = profile
        flops = next((r["flops"] for r in results if "flops" in r), None)
        if flops:
            row["tflop_per_iter"] = flops / 1e12
            row["achieved_tflops"] = flops / 1e12 / median
            peak = next((p for name, p in DEVICE_PEAK_TFLOPS.items() if name in device_name), None)
            if peak:
                row["share_of_peak"] = row["achieved_tflops"] / peak[1 if VARIANTS[variant].get("amp") == "bf16" else 0]
        base = base or row
        row["speedup_vs_first"] = base["s_per_iter_median"] / median
        row["peak_rss_vs_first"] = row["peak_rss_gb"] / base["peak_rss_gb"]
        out["variants"][variant] = row
    return out


def print_table(summary: dict) -> None:
    print(f"scenario {summary['scenario']} on {summary['device']}, {summary['threads']} threads, "
          f"OMP_WAIT_POLICY {summary['omp_wait_policy']}, "
          f"{summary['rounds']} rounds x {summary['iters']} iterations (+{summary['warmup']} warm-up)")
    print("| variant | s/iter median | min | max | it/s | CPU s/iter | peak RSS GB | speed-up | RSS ratio | load |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, row in summary["variants"].items():
        loads = row["load_average_before"]
        print(f"| {name} | {row['s_per_iter_median']:.2f} | {row['s_per_iter_min']:.2f} | "
              f"{row['s_per_iter_max']:.2f} | {row['iter_per_s']:.3f} | {row['cpu_s_per_iter_median']:.2f} | "
              f"{row['peak_rss_gb']:.2f} | "
              f"{row['speedup_vs_first']:.2f}x | {row['peak_rss_vs_first']:.2f} | "
              f"{min(loads):.1f}-{max(loads):.1f} |")
    for name, row in summary["variants"].items():
        if "profile" in row:
            print(f"\n{name}: operators with the most self time in one iteration")
            print("| operator | self s | share | calls |")
            print("|---|---|---|---|")
            for op in row["profile"]:
                print(f"| {op['op']} | {op['self_s']:.2f} | {100 * op['share']:.1f} % | {op['calls']} |")


# ---- strong views ------------------------------------------------------------------------------
def pil_strong_views(images, crop: int):
    """Per-sample strong views with PIL/torchvision transforms, as the official loaders make them."""
    import numpy as np
    import torch
    from PIL import ImageFilter
    from torchvision import transforms
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


def bench_views(args) -> dict:
    import numpy as np
    import torch
    from PIL import Image

    from unimatch.perturb import Normalizer, PerturbationSettings, StrongPerturbation
    device = torch.device(args.device)

    def time_it(fn, repeats):
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return (time.perf_counter() - start) / repeats

    rng = np.random.default_rng(0)
    pil = [Image.fromarray(rng.integers(0, 256, (args.crop, args.crop, 3), dtype=np.uint8))
           for _ in range(args.batch)]
    perturb = StrongPerturbation(PerturbationSettings(), torch.Generator().manual_seed(0))
    normalizer = Normalizer([0.485, 0.456, 0.406], [0.229, 0.224, 0.225], 3)
    batch = torch.from_numpy(np.stack([np.asarray(p) for p in pil])).permute(0, 3, 1, 2).to(device)

    def ours():
        weak = batch.float() / 255
        for _ in range(2):
            normalizer(perturb(weak))
            perturb.cutmix_boxes(args.batch, args.crop, args.crop, device=device)
    return {"crop": args.crop, "batch": args.batch,
            "pil_strong_views_ms_per_batch": 1000 * time_it(lambda: pil_strong_views(pil, args.crop), 3),
            "ours_strong_views_ms_per_batch": 1000 * time_it(ours, 5)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["iteration", "views"], default="iteration")
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), default="natural")
    parser.add_argument("--variants", nargs="+", default=["fp32", "recommended"], choices=sorted(VARIANTS))
    parser.add_argument("--ref-root", help="checkout whose unimatch package the variant 'main' uses")
    parser.add_argument("--device", default=None)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--iters", type=int, default=3, help="timed iterations per process")
    parser.add_argument("--warmup", type=int, default=1, help="untimed iterations per process first")
    parser.add_argument("--rounds", type=int, default=2, help="fresh processes per variant, alternated")
    parser.add_argument("--flops", action="store_true", help="count FLOPs once per variant (TFLOP/s)")
    parser.add_argument("--profile", action="store_true",
                        help="profile one more iteration per variant: the operators with the most self time")
    parser.add_argument("--crop", type=int, default=321, help="views: crop size")
    parser.add_argument("--batch", type=int, default=8, help="views: images per batch")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--settings", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.device is None:
        import torch
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.child:
        print(json.dumps(run_variant(args)))
        return
    if args.part == "views":
        summary = bench_views(args)
        print(json.dumps(summary, indent=2))
    else:
        if "main" in args.variants and not args.ref_root:
            parser.error("variant 'main' needs --ref-root")
        summary = summarise(args, measure(args, args.variants))
        print_table(summary)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
