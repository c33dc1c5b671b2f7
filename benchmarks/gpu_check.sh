#!/usr/bin/env bash
# One short GPU session: the CUDA tests of the core and the step benchmark.
# Needs only torch/torchvision/pyyaml/tqdm/tensorboard (no task packages), so it runs on a bare
# GPU image with the repository on PYTHONPATH:  bash benchmarks/gpu_check.sh [OUT_DIR]
set -u
out="${1:-${OUT:-.}}"
export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1 NO_ALBUMENTATIONS_UPDATE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, torch.cuda.get_device_name())"
python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_method.py tests/test_perturb.py tests/test_engine.py 2>&1 | tail -15
python3 benchmarks/bench_step.py --part views --device cuda --crop 321 --batch 8 --json "$out/bench_views_321.json"
for scenario in natural change_detection acdc; do
  python3 benchmarks/bench_step.py --device cuda --scenario "$scenario" --variants fp32 channels_last bf16 recommended \
      --iters 10 --warmup 3 --rounds 2 --flops --json "$out/bench_gpu_$scenario.json"
done
