"""Versions and device capabilities, for provenance records and bug reports."""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version

import torch

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
