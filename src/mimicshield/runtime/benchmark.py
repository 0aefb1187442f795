"""Measured cost of protection: time per PGD step, peak memory, FLOPs and FLOP/s, per method.

Every measurement runs the real ``protect`` on random images, so it times exactly what users run.
One protection of ``warmup_steps + 1 + steps_timed`` steps per method and configuration:

1. the warm-up steps (first-call costs: allocator, cuDNN autotuning, compilation) are not timed;
2. the next step runs under ``torch.utils.flop_counter.FlopCounterMode`` (forward and backward
   FLOPs of that one step; the counter's Python overhead would distort its time, so it is not
   timed either);
3. the remaining ``steps_timed`` steps are timed one by one; the row reports their median.

Peak memory is ``torch.cuda.max_memory_allocated`` on CUDA (tensors only, weights included) and
the process's peak resident set (VmHWM, reset before each measurement) on CPU, which also counts
the Python heap and the weights. Costs do not depend on weight values, so the random-weight
models of ``RANDOM_MODELS`` (``sd15-random``, ``sdxl-random``, ``sd35-medium-random``,
``flux-dev-random``) measure the real architectures without a download. Parameters and weight
bytes count every network of the model (``model.networks``: VAE, denoiser, text encoders).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from ..budget import Budget
from ..methods import METHODS, Amortised
from ..models import LatentDiffusion
from ..models.ensemble import Surrogate
from ..protect import protect
from .speed import SpeedOptions, configure

#: The method the ratio table divides by when it was measured (the recommended one).
REFERENCE_METHOD = "sds-"
#: Steps of a default protection, for the per-image extrapolation.
DEFAULT_STEPS = Budget().steps
#: The methods this benchmark times: those with PGD steps. The amortised method runs one forward
#: pass of its own network (bench/amortised_mini.py times it).
PGD_METHODS = tuple(name for name, method in METHODS.items() if not issubclass(method, Amortised))


@dataclass(frozen=True)
class BenchConfig:
    """What to measure: the product of methods × resolutions × batch sizes × dtypes.

    Attributes:
        model: a name of ``RANDOM_MODELS`` (``tiny``, ``tiny-sd3``, ``tiny-flux``,
            ``sd15-random``, ``flux-dev-random``, ...), ``mini``, a diffusers folder / hub id or
            a single-file checkpoint; any family.
        methods: names from ``PGD_METHODS`` (every method but ``amortised``).
        resolutions: square image sides in pixels.
        batch_sizes: images protected together.
        dtypes: network precisions (``fp32``, ``bf16``, ``fp16``); the perturbation stays fp32.
        device: ``auto``, ``cpu``, ``cuda``, ...
        steps_timed: timed PGD steps per measurement (≥ 1).
        warmup_steps: untimed steps before the FLOP-counted step (≥ 1).
        speed: layout / compile / slicing / tiling switches applied to the model.
        seed: seeds the random images and the protection.
    """

    model: str = "tiny"
    methods: tuple[str, ...] = PGD_METHODS
    resolutions: tuple[int, ...] = (512,)
    batch_sizes: tuple[int, ...] = (1,)
    dtypes: tuple[str, ...] = ("fp32",)
    device: str = "auto"
    steps_timed: int = 3
    warmup_steps: int = 1
    speed: SpeedOptions = field(default_factory=SpeedOptions)
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = [name for name in self.methods if name not in PGD_METHODS]
        if unknown:
            one_pass = " (amortised has no PGD steps: bench/amortised_mini.py times it)"
            raise ValueError(
                f"unknown methods {unknown}; choose from {', '.join(PGD_METHODS)}"
                + (one_pass if "amortised" in unknown else "")
            )
        if self.steps_timed < 1 or self.warmup_steps < 1:
            raise ValueError(
                f"steps_timed and warmup_steps must be ≥ 1, got {self.steps_timed} and "
                f"{self.warmup_steps}"
            )
        for name, values in (("resolutions", self.resolutions), ("batch_sizes", self.batch_sizes)):
            if not values or min(values) < 1:
                raise ValueError(f"{name} must be positive whole numbers, got {values}")


def run_benchmark(
    config: BenchConfig, *, on_row: Callable[[dict[str, object]], None] | None = None
) -> list[dict[str, object]]:
    """Measure every method × configuration of ``config``; one row (a flat dict) each.

    The model is loaded once per dtype; within a configuration the methods run one after the
    other in the same process, so their ratios compare like with like.
    """
    rows: list[dict[str, object]] = []
    for dtype in config.dtypes:
        model = LatentDiffusion.from_pretrained(config.model, device=config.device, dtype=dtype)
        configure(model, config.speed)
        for resolution in config.resolutions:
            for batch_size in config.batch_sizes:
                for method in config.methods:
                    row = measure(
                        model,
                        method,
                        resolution=resolution,
                        batch_size=batch_size,
                        steps_timed=config.steps_timed,
                        warmup_steps=config.warmup_steps,
                        seed=config.seed,
                    )
                    row["speed"] = config.speed.as_record()
                    rows.append(row)
                    if on_row is not None:
                        on_row(row)
        del model
    return rows


def measure(
    model: Surrogate,
    method_name: str,
    *,
    resolution: int,
    batch_size: int = 1,
    steps_timed: int = 3,
    warmup_steps: int = 1,
    seed: int = 0,
) -> dict[str, object]:
    """Time, memory and FLOPs of one method on (batch_size, 3, resolution, resolution) images.

    Returns a row with: method, model, family, resolution, batch_size, dtype, device,
    device_name, threads, step_seconds (median of the timed steps), step_seconds_timed,
    warmup_step_seconds, seconds_per_image_100_steps (extrapolated), peak_memory_bytes,
    memory_kind, memory_before_bytes, memory_increase_bytes (peak − before: what the run itself
    needed), parameters and weights_bytes (of ``model.networks``), flops_per_step,
    achieved_flops_per_second, denoiser_backward (whether the gradient runs through the UNet or
    transformer).
    """
    device = model.device
    counted_step = warmup_steps + 1
    steps = counted_step + steps_timed
    method = METHODS[method_name](budget=Budget(steps=steps))
    weights = method.weights()
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(batch_size, 3, resolution, resolution, generator=generator)

    _reset_peak_memory(device)
    memory_before = _current_memory(device)
    probe = _StepProbe(device, counted_step)
    try:
        probe.start()
        protect(images, method, model, generator=generator, callback=probe)
    finally:
        probe.close()
    peak, memory_kind = _peak_memory(device)

    timed = probe.durations[counted_step:]
    median = statistics.median(timed)
    return {
        "method": method_name,
        "model": model.name,
        "family": model.family,
        "random_weights": model.random_weights,
        "resolution": resolution,
        "batch_size": batch_size,
        "dtype": str(model.dtype).removeprefix("torch."),
        "device": str(device),
        "device_name": device_name(device),
        "threads": torch.get_num_threads(),
        "steps_timed": steps_timed,
        "step_seconds": median,
        "step_seconds_timed": timed,
        "warmup_step_seconds": probe.durations[:counted_step],
        "seconds_per_image_100_steps": median * DEFAULT_STEPS / batch_size,
        "peak_memory_bytes": peak,
        "memory_kind": memory_kind,
        "memory_before_bytes": memory_before,
        "memory_increase_bytes": None if memory_before is None else peak - memory_before,
        "parameters": sum(p.numel() for net in model.networks for p in net.parameters()),
        "weights_bytes": _weights_bytes(model),
        "flops_per_step": probe.flops,
        "achieved_flops_per_second": probe.flops / median if median > 0 else None,
        "denoiser_backward": weights.denoising != 0,
    }


def _cpu_attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_attention_backward_flops(
    grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs
):
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


#: FLOP formulas for the CPU's fused attention kernels, which torch's counter has none for (it
#: would count attention as 0 FLOPs on a CPU): torch's own formulas for scaled dot-product
#: attention, forward (2 matrix products) and backward.
CPU_ATTENTION_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: (
        _cpu_attention_backward_flops
    ),
}


class _StepProbe:
    """PGD callback that timestamps every step and counts the FLOPs of step ``counted_step``.

    The counter is entered before the protection starts and left right after the counted step,
    so the FLOPs of that step are the difference of the counter's totals at its two ends.
    """

    def __init__(self, device: torch.device, counted_step: int) -> None:
        self.device = device
        self.counted_step = counted_step
        self.counter = FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS)
        self.counting = False
        self.durations: list[float] = []
        self.flops = 0
        self._flops_before = 0
        self._last = 0.0

    def start(self) -> None:
        self.counter.__enter__()
        self.counting = True
        self._last = self._now()

    def __call__(self, step: int, steps: int, value: float) -> None:
        now = self._now()
        self.durations.append(now - self._last)
        if step == self.counted_step - 1:
            self._flops_before = self.counter.get_total_flops()
        elif step == self.counted_step:
            self.flops = self.counter.get_total_flops() - self._flops_before
            self.close()
        self._last = self._now()  # the probe's own work is no step's time

    def close(self) -> None:
        if self.counting:
            self.counter.__exit__(None, None, None)
            self.counting = False

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()


# ------------------------------------------------------------------------------------ memory

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _reset_peak_memory(device: torch.device) -> None:
    """Start a fresh peak: CUDA's allocator statistics, or the process's VmHWM on Linux."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        return
    # Hand freed heap pages back first, or the reset peak would start from memory the previous
    # measurement freed but glibc kept.
    libc_name = ctypes.util.find_library("c")
    if libc_name and platform.system() == "Linux":
        ctypes.CDLL(libc_name).malloc_trim(0)
    try:
        _CLEAR_REFS.write_text("5")  # "5" resets the peak resident set size (proc(5))
    except OSError:
        pass  # not Linux, or not allowed: _peak_memory then says the peak is since start


def _peak_memory(device: torch.device) -> tuple[int, str]:
    """(bytes, kind): the peak since the last reset, and what kind of peak it is."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), "cuda_max_allocated"
    peak_kib = _status_kib("VmHWM")
    if peak_kib is not None:
        return peak_kib * 1024, "cpu_peak_rss"
    # ru_maxrss cannot be reset: it is the peak of the whole process (KiB on Linux).
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "cpu_peak_rss_since_start"


def _current_memory(device: torch.device) -> int | None:
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device)
    current_kib = _status_kib("VmRSS")
    return None if current_kib is None else current_kib * 1024


def _status_kib(key: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _weights_bytes(model: Surrogate) -> int:
    networks = model.networks
    return sum(p.numel() * p.element_size() for net in networks for p in net.parameters())


def device_name(device: torch.device) -> str:
    """The card's name on CUDA; the CPU model otherwise."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# ------------------------------------------------------------------------------------- table

_CONFIG_KEYS = ("model", "resolution", "batch_size", "dtype", "device")


def format_table(rows: list[dict[str, object]], reference: str = REFERENCE_METHOD) -> str:
    """A text table per configuration: each method's cost and its ratio to ``reference``.

    Ratios divide numbers measured in the same run and process; where ``reference`` was not
    measured in a configuration, its first method is the reference.
    """
    groups: dict[tuple, list[dict[str, object]]] = {}
    for row in rows:
        groups.setdefault(tuple(row[key] for key in _CONFIG_KEYS), []).append(row)
    lines: list[str] = []
    for key, group in groups.items():
        base = next((row for row in group if row["method"] == reference), group[0])
        model, resolution, batch, dtype, device = key
        lines.append(
            f"{model} {resolution}×{resolution} batch {batch} {dtype} on {device} "
            f"({group[0]['device_name']}); ratios to {base['method']}"
        )
        lines.append(
            f"{'method':<11}{'s/step':>10}{'×':>7}{'peak GiB':>10}{'×':>7}"
            f"{'TFLOP/step':>12}{'×':>7}{'TFLOP/s':>9}{'s/img@100':>11}"
        )
        for row in group:
            lines.append(
                f"{row['method']:<11}"
                f"{row['step_seconds']:>10.4g}{_ratio(row, base, 'step_seconds'):>7}"
                f"{row['peak_memory_bytes'] / 2**30:>10.3f}"
                f"{_ratio(row, base, 'peak_memory_bytes'):>7}"
                f"{row['flops_per_step'] / 1e12:>12.4g}{_ratio(row, base, 'flops_per_step'):>7}"
                f"{(row['achieved_flops_per_second'] or 0) / 1e12:>9.3g}"
                f"{row['seconds_per_image_100_steps']:>11.4g}"
            )
        lines.append("")
    return "\n".join(lines)


def _ratio(row: dict[str, object], base: dict[str, object], key: str) -> str:
    denominator = base[key]
    return f"{row[key] / denominator:.2f}" if denominator else "-"
