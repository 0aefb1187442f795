"""What one protection step costs in each model family, at the family's native resolution.

Cost does not depend on weight values, so every figure comes from the real architectures
(``random_weights``: SD 1.5, SDXL, SD3/3.5, FLUX.1-dev) with random weights, at batch 1.

Always, allocating nothing: each full-size model is built on the ``meta`` device; its parameters
are counted per part, and ``FlopCounterMode`` counts the FLOPs (one multiply-add = 2; matrix
products, convolutions and attention, the latter as the fused kernels run it: see
``fused_attention``) of the four pieces a step is made of:

- encoder forward, and encoder forward + backward to the input image (the VAE encoder, the
  reparameterised latent sample, (z − shift) · scale);
- denoiser forward, and denoiser forward + backward to its input latents only (weights frozen),
  with the family's conditioning: SD 1.5: 77 CLIP tokens; SDXL: 77 tokens of both CLIPs (2048
  wide), the pooled vector and the six size/crop numbers; SD3/3.5: the joint sequence of 77 CLIP
  + 256 T5 tokens (diffusers keeps all 333 without T5 too: zeros stand in for T5's) and both
  pooled vectors; FLUX.1: the packed latents (4096 tokens of 2×2 patches at 1024²), 512 T5
  tokens, CLIP's pooled vector, the guidance scale and the rotary positions.

The same pass sums the activations autograd saves for the backward (bf16; weights excepted):
what a step holds at its peak besides the weights.

A step of each method is a sum of pieces: SDS (SDS+, SDS−) = encoder fwd+bwd + denoiser fwd;
AdvDM (and Mist) = encoder fwd+bwd + denoiser fwd+bwd; PhotoGuard = encoder fwd+bwd. The text
encoders run once per image, not per step: their weights count (they must be held, or swapped
out after encoding), their FLOPs do not.

With ``--time``, the VAE and the denoiser are built with random weights on ``--device`` in
``--dtype`` and each of ``--steps`` is timed (``--repeats`` runs after one warm-up; median), with
its peak memory (CUDA: max_memory_allocated; CPU: the process's VmHWM, reset before each):
``encoder`` (fwd+bwd), ``denoiser`` (fwd without grad), ``sds`` and ``advdm`` (whole steps). On
the CPU, a family whose weights would take more than half the available RAM is skipped.

    python bench/families.py                                     # counts only, ≈ 1 min
    OMP_NUM_THREADS=1 python bench/families.py --time --device cpu --families sd15,sdxl,sd35-medium
    python bench/families.py --time --device cuda                # see bench/gpu_families.sh
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from mimicshield.models import random_weights, versions
from mimicshield.runtime.benchmark import device_name

RESULTS = Path(__file__).resolve().parent / "results"
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
DENOISERS = {"sd": "unet", "sdxl": "unet", "sd3": "transformer", "flux": "transformer"}
SIGMA = 0.5  # the noise level of every step here: any level costs the same


@dataclass(frozen=True)
class Family:
    """A full-size architecture at its native resolution.

    Attributes:
        name: its name in tables and on the command line.
        kind: its ``random_weights.PART_CLASSES`` family ("sd", "sdxl", "sd3", "flux").
        config: its ``random_weights`` configuration.
        resolution: the native image side, pixels.
        text_tokens: the length of the text sequence its denoiser reads.
        source: the checkpoint whose architecture it is.
    """

    name: str
    kind: str
    config: dict
    resolution: int
    text_tokens: int
    source: str

    @property
    def latent_side(self) -> int:
        """The latent's side: the VAE halves the image at each block after the first."""
        return self.resolution >> (len(self.config["vae"]["block_out_channels"]) - 1)


FAMILIES = {
    family.name: family
    for family in (
        Family(
            name="sd15",
            kind="sd",
            config=random_weights.SD15,
            resolution=512,
            text_tokens=77,
            source="stable-diffusion-v1-5/stable-diffusion-v1-5",
        ),
        Family(
            name="sdxl",
            kind="sdxl",
            config=random_weights.SDXL,
            resolution=1024,
            text_tokens=77,
            source="stabilityai/stable-diffusion-xl-base-1.0",
        ),
        Family(
            name="sd3-medium",
            kind="sd3",
            config=random_weights.SD3_MEDIUM,
            resolution=1024,
            text_tokens=77 + 256,
            source="stabilityai/stable-diffusion-3-medium-diffusers",
        ),
        Family(
            name="sd35-medium",
            kind="sd3",
            config=random_weights.SD35_MEDIUM,
            resolution=1024,
            text_tokens=77 + 256,
            source="stabilityai/stable-diffusion-3.5-medium",
        ),
        Family(
            name="sd35-large",
            kind="sd3",
            config=random_weights.SD35_LARGE,
            resolution=1024,
            text_tokens=77 + 256,
            source="stabilityai/stable-diffusion-3.5-large",
        ),
        Family(
            name="flux-dev",
            kind="flux",
            config=random_weights.FLUX_DEV,
            resolution=1024,
            text_tokens=512,
            source="black-forest-labs/FLUX.1-dev",
        ),
    )
}
#: method → the pieces one of its steps runs
METHOD_PIECES = {
    "sds": ("encoder_forward_backward", "denoiser_forward"),
    "advdm": ("encoder_forward_backward", "denoiser_forward_backward"),
    "photoguard": ("encoder_forward_backward",),
}
#: what --time can time → the parts it needs, in the order they are timed (the encoder alone
#: first, before the denoiser's weights take their memory)
TIMED = {
    "encoder": ("vae",),
    "denoiser": ("denoiser",),
    "sds": ("vae", "denoiser"),
    "advdm": ("vae", "denoiser"),
}


def main() -> None:
    """Count every family on the meta device; with --time, also time it; print, write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", default=",".join(FAMILIES), help="comma list")
    parser.add_argument("--time", action="store_true", help="also time the pieces in --steps")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    parser.add_argument(
        "--steps",
        default=None,
        help=f"comma list of {', '.join(TIMED)} (default: encoder,denoiser on CPU, all on CUDA)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed runs after one warm-up")
    parser.add_argument("--output", type=Path, default=None, help="JSON (default: results/)")
    args = parser.parse_args()
    if unknown := set(args.families.split(",")) - set(FAMILIES):
        parser.error(f"unknown --families {sorted(unknown)}; choose from {', '.join(FAMILIES)}")
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    default_steps = "encoder,denoiser" if device.type == "cpu" else ",".join(TIMED)
    steps = (args.steps or default_steps).split(",")
    if unknown := set(steps) - set(TIMED):
        parser.error(f"unknown --steps {sorted(unknown)}; choose from {', '.join(TIMED)}")

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    torch.set_flush_denormal(True)  # random weights must not run slow subnormal arithmetic
    rows = []
    for name in args.families.split(","):
        row = count(FAMILIES[name])
        if args.time:
            row["timing"] = time_family(FAMILIES[name], device, dtype, steps, args.repeats)
        rows.append(row)
        print(json.dumps(row), flush=True)

    now = datetime.now(timezone.utc)
    kind = f"{device.type}-{args.dtype}" if args.time else "meta"
    output = args.output or RESULTS / f"families-{kind}-{now:%Y%m%dT%H%M%SZ}.json"
    record = {
        "created": now.isoformat(timespec="seconds"),
        "command": ["python", *sys.argv],
        "versions": versions(),
        "device": device_name(device) if args.time else "meta",
        "threads": torch.get_num_threads(),
        "units": "parameters, bytes, FLOPs (one multiply-add = 2), seconds",
        "rows": rows,
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(record, indent=2) + "\n")
    print(table(rows))
    print(f"\nwritten to {output}")


# ---- the pieces of a step ------------------------------------------------------------------


def encode(vae: torch.nn.Module, image: torch.Tensor) -> torch.Tensor:
    """(1, 3, H, W) image in [-1, 1] → (1, C, H/8, W/8) scaled latent sample (8: full size)."""
    latents = vae.encode(image).latent_dist.sample()
    shift = vae.config.get("shift_factor") or 0.0
    return (latents - shift) * vae.config.scaling_factor


def conditioning(family: Family, device: torch.device, dtype: torch.dtype) -> dict:
    """Random text conditioning of the shapes the family's pipeline gives its denoiser."""
    config, tokens = family.config, family.text_tokens

    def random(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, device=device, dtype=dtype)

    if family.kind == "sd":
        return {"encoder_hidden_states": random(1, tokens, config["unet"]["cross_attention_dim"])}
    if family.kind == "sdxl":
        side = family.resolution  # original size, crop corner, target size
        sizes = torch.tensor([[side, side, 0, 0, side, side]], device=device, dtype=dtype)
        return {
            "encoder_hidden_states": random(1, tokens, config["unet"]["cross_attention_dim"]),
            "added_cond_kwargs": {
                "text_embeds": random(1, config["text_encoder_2"]["projection_dim"]),
                "time_ids": sizes,
            },
        }
    transformer = config["transformer"]
    text = {
        "encoder_hidden_states": random(1, tokens, transformer["joint_attention_dim"]),
        "pooled_projections": random(1, transformer["pooled_projection_dim"]),
    }
    if family.kind == "sd3":
        return text
    side = family.latent_side // 2  # 2×2 patches
    rows, columns = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    image_ids = torch.stack([torch.zeros_like(rows), rows, columns], dim=-1).reshape(-1, 3)
    return text | {
        "guidance": torch.full((1,), 3.5, device=device, dtype=dtype),
        "img_ids": image_ids.to(device=device, dtype=dtype),
        "txt_ids": torch.zeros(tokens, 3, device=device, dtype=dtype),
    }


def denoise(
    family: Family, denoiser: torch.nn.Module, noisy: torch.Tensor, condition: dict
) -> torch.Tensor:
    """The denoiser's prediction for (1, C, h, w) noisy latents at noise level SIGMA."""
    if family.kind in ("sd", "sdxl"):
        timestep = torch.full((1,), 500, device=noisy.device)
        return denoiser(noisy, timestep, **condition).sample
    if family.kind == "sd3":
        timestep = torch.full((1,), 1000 * SIGMA, device=noisy.device, dtype=noisy.dtype)
        return denoiser(hidden_states=noisy, timestep=timestep, **condition).sample
    # FLUX.1 reads 2×2 latent patches as tokens of 4·C channels, and σ in [0, 1] as its time.
    batch, channels, height, width = noisy.shape
    packed = noisy.reshape(batch, channels, height // 2, 2, width // 2, 2)
    packed = packed.permute(0, 2, 4, 1, 3, 5).reshape(batch, -1, channels * 4)
    timestep = torch.full((1,), SIGMA, device=noisy.device, dtype=noisy.dtype)
    return denoiser(hidden_states=packed, timestep=timestep, **condition).sample


@dataclass(frozen=True)
class Step:
    """One family's VAE and denoiser with fixed random inputs: each method runs one piece.

    Attributes:
        family: whose parts these are.
        vae, denoiser: the frozen parts (None where a piece does not need one).
        image: (1, 3, R, R) in [-1, 1], R the native resolution.
        latents: (1, C, r, r) clean latents for the denoiser-only pieces (r: latent_side).
        condition: ``conditioning(family)``.
    """

    family: Family
    vae: torch.nn.Module | None
    denoiser: torch.nn.Module | None
    image: torch.Tensor
    latents: torch.Tensor
    condition: dict

    @classmethod
    def random(cls, family: Family, parts: dict, device: torch.device, dtype: torch.dtype):
        """Random inputs on ``device`` for ``parts`` ({"vae": ..., "denoiser": ...})."""
        side, latent_side = family.resolution, family.latent_side
        channels = family.config["vae"]["latent_channels"]
        return cls(
            family=family,
            vae=parts.get("vae"),
            denoiser=parts.get("denoiser"),
            image=torch.rand(1, 3, side, side, device=device, dtype=dtype) * 2 - 1,
            latents=torch.randn(1, channels, latent_side, latent_side, device=device, dtype=dtype),
            condition=conditioning(family, device, dtype),
        )

    def encoder_forward(self) -> None:
        """The encoder alone, without grad."""
        with torch.no_grad():
            encode(self.vae, self.image)

    def encoder_forward_backward(self) -> None:
        """The encoder and its vector-Jacobian product to the image (PhotoGuard, SDS's half)."""
        image = self.image.clone().requires_grad_()
        latents = encode(self.vae, image)
        (latents * torch.randn_like(latents)).sum().backward()

    def denoiser_forward(self) -> None:
        """The denoiser alone, without grad (SDS's other half)."""
        with torch.no_grad():
            denoise(self.family, self.denoiser, self._noisy(self.latents), self.condition)

    def denoiser_forward_backward(self) -> None:
        """The denoiser and its backward to the latents only (AdvDM's extra cost)."""
        latents = self.latents.clone().requires_grad_()
        prediction = denoise(self.family, self.denoiser, self._noisy(latents), self.condition)
        prediction.float().square().mean().backward()

    def sds(self) -> None:
        """A whole SDS step: encoder fwd+bwd, denoiser fwd (its residual taken as the grad)."""
        image = self.image.clone().requires_grad_()
        latents = encode(self.vae, image)
        with torch.no_grad():
            prediction = denoise(self.family, self.denoiser, self._noisy(latents), self.condition)
        # FLUX's prediction is packed: only its size matters to the cost of the product.
        (prediction.reshape(latents.shape) * latents).sum().backward()

    def advdm(self) -> None:
        """A whole AdvDM step: the denoising loss's gradient through denoiser and encoder."""
        image = self.image.clone().requires_grad_()
        latents = encode(self.vae, image)
        prediction = denoise(self.family, self.denoiser, self._noisy(latents), self.condition)
        prediction.float().square().mean().backward()

    def _noisy(self, latents: torch.Tensor) -> torch.Tensor:
        return (1 - SIGMA) * latents + SIGMA * torch.randn_like(latents)


# ---- counting on the meta device -----------------------------------------------------------


def count(family: Family) -> dict:
    """Parameters and bf16 bytes per part; FLOPs and saved activations per piece and step."""
    with torch.device("meta"):
        parts = random_weights.random_parts(family.kind, family.config)
    parameters = {
        name: sum(p.numel() for p in part.parameters())
        for name, part in parts.items()
        if isinstance(part, torch.nn.Module)
    }
    frozen = {
        "vae": parts["vae"].to(torch.bfloat16).requires_grad_(False),
        "denoiser": parts[DENOISERS[family.kind]].to(torch.bfloat16).requires_grad_(False),
    }
    step = Step.random(family, frozen, torch.device("meta"), torch.bfloat16)
    weights = [p for part in frozen.values() for p in part.parameters()]
    pieces = {name for names in METHOD_PIECES.values() for name in names} | {"encoder_forward"}
    flops, saved = {}, {}
    with fused_attention():
        for piece in sorted(pieces):
            flops[piece], saved[piece] = flops_and_saved_bytes(getattr(step, piece), weights)
    return {
        "family": family.name,
        "source": family.source,
        "resolution": family.resolution,
        "text_tokens": family.text_tokens,
        "parameters": parameters,
        "parameters_total": sum(parameters.values()),
        "bf16_bytes": {name: 2 * number for name, number in parameters.items()},
        "bf16_bytes_total": 2 * sum(parameters.values()),
        "flops": flops,
        "flops_per_step": _per_step(flops),
        "saved_activation_bytes_bf16": saved,
        "saved_activation_bytes_bf16_per_step": _per_step(saved),
    }


def flops_and_saved_bytes(
    function: Callable[[], None], weights: list[torch.Tensor]
) -> tuple[int, int]:
    """FLOPs of one call, and the bytes of the activations it keeps for its backward.

    The activations are the tensors autograd saves, the weights excepted: what a backward holds
    at its peak, beside the weights and a forward's transient buffers.
    """
    weight_storages = {w.untyped_storage()._cdata for w in weights}
    saved = {}

    def keep(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage._cdata not in weight_storages:
            saved[storage._cdata] = storage.nbytes()  # views of one storage count once
        return tensor

    with (
        FlopCounterMode(display=False) as counter,
        torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor),
    ):
        function()
    return counter.get_total_flops(), sum(saved.values())


@contextlib.contextmanager
def fused_attention() -> Iterator[None]:
    """Run ``scaled_dot_product_attention`` as the fused memory-efficient kernel meanwhile.

    On the meta device SDPA takes its math form: explicit batched products whose (N × N)
    attention matrices are saved for the backward, which no real run holds (CUDA's flash and
    memory-efficient kernels and the CPU's flash kernel keep the output and the row log-sum-exp,
    and recompute the rest in the backward). aten's memory-efficient kernel has a meta form and
    FLOP formulas for its forward and backward (the backward's recomputation included), so
    counting through it counts what the fused kernels do.
    """
    functional = torch.nn.functional
    math_attention = functional.scaled_dot_product_attention

    def efficient(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, **options):
        if attn_mask is not None or options.get("enable_gqa"):
            return math_attention(query, key, value, attn_mask, dropout_p, is_causal, **options)
        grad = torch.is_grad_enabled() and any(x.requires_grad for x in (query, key, value))
        return torch.ops.aten._scaled_dot_product_efficient_attention(
            query, key, value, None, grad, dropout_p, is_causal, scale=options.get("scale")
        )[0]

    functional.scaled_dot_product_attention = efficient
    try:
        yield
    finally:
        functional.scaled_dot_product_attention = math_attention


def _per_step(per_piece: dict[str, int]) -> dict[str, int]:
    """Method → the sum over the pieces of one of its steps."""
    return {
        method: sum(per_piece[piece] for piece in pieces)
        for method, pieces in METHOD_PIECES.items()
    }


# ---- timing --------------------------------------------------------------------------------


def time_family(
    family: Family, device: torch.device, dtype: torch.dtype, steps: list[str], repeats: int
) -> dict:
    """Seconds and peak memory of each of ``steps`` (names of TIMED)."""
    needed = sorted({part for step in steps for part in TIMED[step]})
    weights = _parameter_count(family, needed) * torch.finfo(dtype).bits // 8
    if device.type == "cpu" and weights > _available_ram() / 2:
        return {"skipped": f"weights {weights / 2**30:.1f} GiB > half the available RAM"}
    result: dict = {
        "dtype": str(dtype).removeprefix("torch."),
        "device": device.type,
        "device_name": device_name(device),
    }
    parts: dict = {}
    for step in [step for step in TIMED if step in steps]:
        if missing := [part for part in TIMED[step] if part not in parts]:
            started = time.perf_counter()
            parts |= build(family, missing, device, dtype)
            result[f"build_seconds_{'_'.join(missing)}"] = time.perf_counter() - started
        runner = Step.random(family, parts, device, dtype)
        piece = {"encoder": "encoder_forward_backward", "denoiser": "denoiser_forward"}
        result[step] = time_call(getattr(runner, piece.get(step, step)), device, repeats)
    return result


def build(family: Family, names: list[str], device: torch.device, dtype: torch.dtype) -> dict:
    """{"vae", "denoiser"} parts with random weights on ``device`` in ``dtype``, frozen.

    Built in ``dtype`` directly, so a model never takes more than its final size.
    """
    part_names = [DENOISERS[family.kind] if name == "denoiser" else name for name in names]
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            parts = random_weights.random_parts(family.kind, family.config, parts=part_names)
    finally:
        torch.set_default_dtype(previous)
    # .to(dtype) also casts the buffers a constructor made in float32 (SD3's position table).
    return {
        name: parts[part_name].to(dtype).requires_grad_(False)
        for name, part_name in zip(names, part_names, strict=True)
    }


def time_call(function: Callable[[], None], device: torch.device, repeats: int) -> dict:
    """One warm-up, then ``repeats`` timed calls: wall and CPU seconds, peak memory, load."""
    load_before = os.getloadavg()[0]
    _reset_peak_memory(device)
    function()
    _synchronize(device)
    seconds, cpu_seconds = [], []
    for _ in range(repeats):
        started, cpu_started = time.perf_counter(), time.process_time()
        function()
        _synchronize(device)
        seconds.append(time.perf_counter() - started)
        cpu_seconds.append(time.process_time() - cpu_started)
    return {
        "seconds": statistics.median(seconds),
        "seconds_each": seconds,
        # The process's CPU time: on a CPU shared with other work, nearer to what the step
        # costs than the wall-clock seconds (one thread: at most the wall time).
        "cpu_seconds": statistics.median(cpu_seconds),
        "cpu_seconds_each": cpu_seconds,
        "peak_memory_bytes": _peak_memory(device),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg()[0],
    }


def _parameter_count(family: Family, names: list[str]) -> int:
    part_names = [DENOISERS[family.kind] if name == "denoiser" else name for name in names]
    with torch.device("meta"):
        parts = random_weights.random_parts(family.kind, family.config, parts=part_names)
    return sum(p.numel() for part in parts.values() for p in part.parameters())


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: VmHWM := the current RSS


def _peak_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return _proc_kib("/proc/self/status", "VmHWM") * 1024


def _available_ram() -> int:
    return _proc_kib("/proc/meminfo", "MemAvailable") * 1024


def _proc_kib(path: str, key: str) -> int:
    for line in Path(path).read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    raise RuntimeError(f"no {key} in {path}")


# ---- the table -----------------------------------------------------------------------------


def table(rows: list[dict]) -> str:
    """A markdown table: sizes, TFLOP per method step, and seconds where timed.

    Where only the pieces were timed (the CPU default), an SDS step's seconds are their sum (Σ);
    on the CPU each cell is "wall / process CPU seconds".
    """
    columns = ["family", "res", "params B", "denoiser B", "weights GiB bf16"]
    columns += ["TFLOP SDS", "TFLOP AdvDM", "TFLOP PhotoGuard", "act. GiB SDS", "act. GiB AdvDM"]
    timed = any("timing" in row for row in rows)
    if timed:
        columns += ["s enc fwd+bwd", "s denoiser fwd", "s SDS", "s AdvDM", "peak GiB"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        denoiser = row["parameters"][DENOISERS[FAMILIES[row["family"]].kind]]
        cells = [
            row["family"],
            f"{row['resolution']}²",
            f"{row['parameters_total'] / 1e9:.2f}",
            f"{denoiser / 1e9:.2f}",
            f"{row['bf16_bytes_total'] / 2**30:.1f}",
        ]
        cells += [f"{row['flops_per_step'][method] / 1e12:.1f}" for method in METHOD_PIECES]
        saved = row["saved_activation_bytes_bf16_per_step"]
        cells += [f"{saved[method] / 2**30:.1f}" for method in ("sds", "advdm")]
        if timed:
            cells += _timing_cells(row.get("timing", {}))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _timing_cells(timing: dict) -> list[str]:
    """Seconds of each timed step; on the CPU "wall / process CPU" seconds."""
    if "skipped" in timing:
        return [f"skipped ({timing['skipped']})", "—", "—", "—", "—"]
    keys = ("seconds", "cpu_seconds") if timing["device"] == "cpu" else ("seconds",)

    def cell(*steps: str) -> str:
        if not all(step in timing for step in steps):
            return "—"
        sums = [sum(timing[step][key] for step in steps) for key in keys]
        return ("Σ " if len(steps) > 1 else "") + " / ".join(f"{value:.1f}" for value in sums)

    sds = cell("sds") if "sds" in timing else cell("encoder", "denoiser")
    peak = max(timing[step]["peak_memory_bytes"] for step in TIMED if step in timing)
    return [cell("encoder"), cell("denoiser"), sds, cell("advdm"), f"{peak / 2**30:.1f}"]


if __name__ == "__main__":
    main()
