"""How the maths runs, not what it computes: autocast dtype, memory format, ``torch.compile``, the
CPU allocator and the CPU thread count.

One small module so that the Trainer, the benchmark and the evaluation code make the same choice
from the same config keys (``amp``, ``channels_last``, ``compile``, ``cpu_allocator``, ``threads``). Each
setting is a speed option; its effect on the numbers is bounded by the tests in
``tests/test_precision.py`` and measured in ``docs/benchmarks.md``.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging

import torch
import torch.nn as nn

from unimatch.errors import ConfigError

log = logging.getLogger("unimatch")

# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4

CPU_ALLOCATORS = ("default", "reuse")


def cpu_supports_bf16() -> bool:
    """True when oneDNN has native bf16 kernels on this CPU (avx512_bf16 / AMX); elsewhere bf16
    autocast on the CPU is emulated and slower than fp32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``amp`` (none | bf16 | fp16) on ``device``, or None for fp32.

    fp16 is CUDA-only (the CPU has no fast fp16 kernels and training needs the GradScaler);
    bf16 on a CPU without native bf16 falls back to fp32 with one log line, because there it
    would only be slower.
    """
    if amp == "none":
        return None
    if device.type == "cuda":
        return torch.bfloat16 if amp == "bf16" else torch.float16
    if amp == "fp16":
        raise ConfigError("amp: fp16 needs a CUDA device; use amp=bf16 on the CPU")
    if amp == "bf16" and device.type == "cpu" and not cpu_supports_bf16():
        log.warning("amp=bf16: this CPU has no native bf16 kernels (avx512_bf16/AMX); running in fp32")
        return None
    return torch.bfloat16


def autocast_for(amp: str, device: torch.device):
    """The autocast context for ``amp`` on ``device`` (a disabled one for fp32)."""
    dtype = autocast_dtype(amp, device)
    if dtype is None:
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=dtype)


def memory_format(channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last else torch.contiguous_format


def to_memory_format(tensor, channels_last: bool):
    """A 4-D image batch in the chosen memory format (anything else unchanged).

    channels_last (NHWC) lets oneDNN / cuDNN run convolutions without reordering the
    activations before and after every layer.
    """
    if channels_last and torch.is_tensor(tensor) and tensor.dim() == 4:
        return tensor.contiguous(memory_format=torch.channels_last)
    return tensor


def compile_available(device: torch.device) -> str | None:
    """None if ``torch.compile`` works on ``device`` here, else why not.

    Compilation is lazy (it happens at the first forward), so a missing C++ compiler or Triton
    would only show up inside the training loop; a two-operation function compiled and run now
    finds that out before the run starts.
    """
    try:
        probe = torch.compile(lambda t: t * 2 + 1)
        probe(torch.ones(8, device=device))
        return None
    except Exception as error:  # any failure here only costs speed
        return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"


def prepare_model(model: nn.Module, channels_last: bool, compile_model: bool,
                  device: torch.device | None = None) -> nn.Module:
    """Convert ``model``'s weights to the memory format and, if asked, compile it in place.

    ``nn.Module.compile`` keeps the module and its state-dict keys, so checkpoints stay
    loadable by the official code and by an uncompiled model. When compilation is not possible
    on ``device`` the model runs eagerly after one log line.
    """
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if compile_model:
        problem = compile_available(device or torch.device("cpu"))
        if problem is None:
            model.compile()
        else:
            log.warning(f"compile: torch.compile does not work here ({problem}); running the model eagerly")
    return model


def configure_threads(threads: int | None) -> None:
    """Use ``threads`` intra-op threads for the CPU maths (None: leave torch's default).

    Why: a model as small as the demos' spends its iteration in per-operator overhead, which a
    second thread does not shorten; one thread is faster there and leaves a core to the loaders.
    """
    if threads is not None:
        torch.set_num_threads(int(threads))


def configure_cpu_allocator(mode: str, keep_mb: int = 1024) -> bool:
    """Tell glibc malloc to keep and reuse the large activation buffers of a training step.

    By default glibc serves every allocation above its mmap threshold (at most 32 MiB) with a
    fresh ``mmap`` and returns it with ``munmap``; a training step allocates and frees its
    activations every iteration, so the kernel zero-fills the same gigabytes again and again
    (page faults). ``reuse`` serves large blocks from the heap instead (``M_MMAP_MAX=0``) and
    returns free memory at the top of the heap to the system only beyond ``keep_mb`` MiB
    (``M_TRIM_THRESHOLD``), so the cache is bounded. Call it early, before the first large
    allocation. Returns whether it was applied (False on non-glibc platforms or for
    ``default``).
    """
    if mode not in CPU_ALLOCATORS:
        raise ConfigError(f"cpu_allocator: {mode!r} must be one of {', '.join(CPU_ALLOCATORS)}")
    if mode == "default":
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        log.warning("cpu_allocator=reuse: no glibc mallopt on this platform; the allocator is unchanged")
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = mallopt(_M_MMAP_MAX, 0) == 1
    ok = mallopt(_M_TRIM_THRESHOLD, int(keep_mb) * 2 ** 20) == 1 and ok
    return ok
