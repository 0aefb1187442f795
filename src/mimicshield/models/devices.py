"""Devices and precisions: which exist, which to pick, and the versions that decide results."""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version

import torch

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class ModelUnavailableError(RuntimeError):
    """The requested weights are neither on disk nor reachable."""


def resolve_device(name: str = "auto") -> torch.device:
    """Map ``auto|cpu|cuda|cuda:N|mps`` to a device, checking that it exists."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelUnavailableError(f"device '{name}' was asked for but CUDA is not available here")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ModelUnavailableError(f"device '{name}' was asked for but MPS is not available here")
    if device.type not in ("cpu", "cuda", "mps"):
        raise ModelUnavailableError(f"device must be auto, cpu, cuda or mps, got '{name}'")
    return device


def resolve_dtype(name: str | torch.dtype) -> torch.dtype:
    """Map ``fp32|fp16|bf16`` to a torch dtype."""
    if isinstance(name, torch.dtype):
        return name
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got '{name}'")
    return DTYPES[name]


def dtype_name(dtype: torch.dtype) -> str:
    """The short name (``fp32|fp16|bf16``) of a torch dtype, as records and plans write it."""
    for name, candidate in DTYPES.items():
        if candidate == dtype:
            return name
    raise ValueError(f"dtype must be one of {', '.join(map(str, DTYPES.values()))}, got {dtype}")


_PACKAGES = ("mimicshield", "torch", "diffusers", "transformers", "accelerate", "Pillow", "numpy")


def versions() -> dict[str, str]:
    """Python and the versions of the packages that decide results."""
    found = {"python": platform.python_version()}
    for package in _PACKAGES:
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "not installed"
    return found


def devices() -> list[dict[str, object]]:
    """Each usable device with the dtypes it runs."""
    cpu = {
        "device": "cpu",
        "name": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "dtypes": ["fp32", "bf16"],
    }
    listed: list[dict[str, object]] = [cpu]
    for index in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
        properties = torch.cuda.get_device_properties(index)
        dtypes = ["fp32", "fp16"] + (["bf16"] if torch.cuda.is_bf16_supported() else [])
        listed.append(
            {
                "device": f"cuda:{index}",
                "name": properties.name,
                "memory_gib": round(properties.total_memory / 2**30, 1),
                "dtypes": dtypes,
            }
        )
    if torch.backends.mps.is_available():
        listed.append({"device": "mps", "name": "Apple GPU", "dtypes": ["fp32", "fp16"]})
    return listed


def default_dtypes(device: torch.device, requested: str) -> tuple[str, ...]:
    """Precisions to try, in order: the requested one, or for ``auto`` the device's best.

    ``auto``: bf16 on CUDA cards that support it (fast, and the perturbation stays fp32), else
    fp32. On a CPU with bf16 instructions (AVX512-BF16 or AMX), bf16: about twice as fast as fp32
    with half the memory. On other CPUs bf16 is emulated and slow, so fp32 first and bf16 only as
    a fallback when fp32 does not fit.
    """
    if requested != "auto":
        return (requested,)
    if device.type == "cuda":
        return ("bf16",) if torch.cuda.is_bf16_supported() else ("fp32",)
    if device.type == "cpu" and cpu_has_bf16_instructions():
        return ("bf16",)
    return ("fp32", "bf16")


def cpu_has_bf16_instructions() -> bool:
    """Whether this CPU computes bf16 natively (x86 AVX512-BF16 or AMX tiles)."""
    # torch exposes these checks only as private helpers (torch.cpu._is_*_supported, torch ≥ 2.3);
    # a torch without them is treated as a CPU without bf16 instructions.
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)
