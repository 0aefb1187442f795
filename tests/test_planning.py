"""The memory planner's model and choices, and --max-memory on the command line."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from mimicshield.models import Ensemble, LatentDiffusion, default_dtypes
from mimicshield.runtime.memory import (
    FIXED_BYTES,
    GIB,
    EnsembleSize,
    MemoryPlanError,
    ModelSize,
    TransformerSize,
    estimate_bytes,
    parse_memory,
    plan_memory,
    size_of,
)

SD15 = ModelSize(parameters=1_066_000_000, vae_width=128, unet_width=320, vae_scale_factor=8)


def _estimate(**changes):
    settings = dict(height=512, width=512, batch_size=1, dtype="fp32", unet_backward_draws=0)
    return estimate_bytes(SD15, **{**settings, **changes})


def test_estimate_grows_with_work_and_shrinks_with_the_levers():
    base = _estimate()
    assert _estimate(batch_size=2) > base and _estimate(height=1024, width=1024) > base
    assert _estimate(unet_backward_draws=1) > base  # AdvDM/Mist keep UNet activations too
    assert _estimate(dtype="bf16") < base
    assert _estimate(height=509, width=509) == base  # padded to the VAE's multiple of 8
    fixed = SD15.parameters * 4 + FIXED_BYTES  # weights and per-run buffers, no pixels
    assert _estimate(height=8, width=8) == pytest.approx(fixed, rel=1e-3)


def test_roomy_budget_takes_the_largest_batch_at_the_first_precision():
    plan = plan_memory(
        SD15,
        height=512,
        width=512,
        unet_backward_draws=0,
        budget_bytes=80 * GIB,
        dtypes=("bf16",),
        max_batch_size=8,
    )
    assert (plan.batch_size, plan.dtype) == (8, "bf16")
    assert plan.estimated_bytes <= plan.budget_bytes


def test_tighter_budgets_lower_the_batch_then_the_precision():
    common = dict(height=512, width=512, unet_backward_draws=1, dtypes=("fp32", "bf16"))
    one = _estimate(unet_backward_draws=1)
    two = _estimate(unet_backward_draws=1, batch_size=2)
    plan = plan_memory(SD15, budget_bytes=(one + two) // 2, max_batch_size=4, **common)
    assert (plan.batch_size, plan.dtype) == (1, "fp32")
    plan = plan_memory(SD15, budget_bytes=one - 1, max_batch_size=4, **common)
    assert plan.dtype == "bf16" and plan.estimated_bytes < one


def test_what_cannot_fit_says_what_would():
    side = dict(height=2048, width=2048)
    half = _estimate(dtype="bf16", unet_backward_draws=1, **side)
    encoder_only = _estimate(unet_backward_draws=0, **side)
    budget = max(half, encoder_only)
    assert _estimate(unet_backward_draws=1, **side) > budget  # fp32 does not fit
    with pytest.raises(MemoryPlanError) as caught:
        plan_memory(
            SD15,
            height=2048,
            width=2048,
            unet_backward_draws=1,
            budget_bytes=budget,
            dtypes=("fp32",),
            method_name="advdm",
        )
    message = str(caught.value)
    assert "advdm on 2048×2048" in message and f"{budget / GIB:.1f} GiB" in message
    assert "bf16 precision" in message and "encoder-only method" in message
    assert "images of at most" in message and "a memory budget of at least" in message
    largest = int(message.split("images of at most ")[1].split("×")[0])
    assert largest % 8 == 0 and 0 < largest < 2048


def test_each_draw_through_the_unet_keeps_its_own_activations():
    encoder_only, one, two = (_estimate(unet_backward_draws=draws) for draws in (0, 1, 2))
    assert two - one == pytest.approx(one - encoder_only, rel=1e-6)
    with pytest.raises(MemoryPlanError, match=r"one noise sample per step \(≈"):
        plan_memory(
            SD15,
            height=512,
            width=512,
            unet_backward_draws=2,
            budget_bytes=one,
            dtypes=("fp32",),
            method_name="advdm",
        )


def test_memory_sizes_parse_in_binary_units():
    assert parse_memory("8GiB") == 8 * GIB
    assert parse_memory("512MiB") == 512 * 2**20
    assert parse_memory("1.5G") == int(1.5 * GIB)
    assert parse_memory("12") == 12 * GIB
    with pytest.raises(ValueError, match="8GiB or 512MiB"):
        parse_memory("lots")


def test_automatic_precision_per_device(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert default_dtypes(cpu, "auto") == ("fp32", "bf16")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    assert default_dtypes(cpu, "auto") == ("bf16",)
    assert default_dtypes(cpu, "fp16") == ("fp16",) and default_dtypes(cpu, "fp32") == ("fp32",)
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")
    assert default_dtypes(cpu, "auto") == ("fp32", "bf16"), "a torch without the checks: fp32"


def test_model_size_of_a_loaded_model(tiny_model):
    size = ModelSize.of(tiny_model)
    assert (size.vae_width, size.unet_width, size.vae_scale_factor) == (32, 32, 2)
    assert size.parameters == sum(
        p.numel()
        for net in (tiny_model.vae, tiny_model.unet, tiny_model.text_encoder)
        for p in net.parameters()
    )


@pytest.fixture(scope="module")
def family_sizes():
    """{architecture: ModelSize} of the tiny model of every family."""
    names = ("tiny", "tiny-sdxl", "tiny-sd3", "tiny-flux")
    return {name: ModelSize.of(LatentDiffusion.random(name)) for name in names}


def _need(size, side, draws=0, **changes):
    settings = dict(batch_size=1, dtype="fp32", unet_backward_draws=draws)
    return estimate_bytes(size, height=side, width=side, **{**settings, **changes})


def test_every_family_is_sized_and_grows_with_the_image(family_sizes):
    for name, size in family_sizes.items():
        for draws in (0, 1):
            needs = [_need(size, side, draws) for side in (32, 64, 128)]
            assert needs[0] > size.parameters * 4, name  # weights plus activations
            assert needs[0] < needs[1] < needs[2], name
        # The denoiser's backward (AdvDM, Mist) costs more than its forward under no_grad (SDS).
        assert _need(size, 64, draws=1) > _need(size, 64, draws=0), name
        assert _need(size, 64, dtype="bf16") < _need(size, 64), name


def test_transformers_are_sized_from_their_config(family_sizes):
    sd3, flux = family_sizes["tiny-sd3"], family_sizes["tiny-flux"]
    assert family_sizes["tiny"].transformer is None and family_sizes["tiny"].unet_width == 32
    # TINY_SD3: 4 heads of 8, 2 joint blocks, CLIP's 77 tokens then T5's 256; TINY_FLUX: 2
    # heads of 16, 1 double + 1 single block, T5's 512 tokens.
    assert sd3.transformer == TransformerSize(width=32, layers=2, patch_size=2, text_tokens=333)
    assert flux.transformer == TransformerSize(width=32, layers=2, patch_size=2, text_tokens=512)
    assert sd3.size_multiple == flux.size_multiple == 4 and sd3.unet_width is None
    # Only a backward through the transformer depends on its depth.
    deeper = replace(sd3, transformer=replace(sd3.transformer, layers=20))
    assert _need(deeper, 64, draws=0) == _need(sd3, 64, draws=0)
    assert _need(deeper, 64, draws=1) > _need(sd3, 64, draws=1)
    with pytest.raises(ValueError, match="exactly one of unet_width and transformer"):
        ModelSize(parameters=1, vae_width=128, vae_scale_factor=8)


def test_an_ensemble_holds_every_weight_and_the_largest_activations(family_sizes):
    members = (family_sizes["tiny"], family_sizes["tiny-flux"])
    ensemble = EnsembleSize(members)
    assert ensemble.parameters == sum(member.parameters for member in members)
    assert ensemble.size_multiple == 4
    for draws in (0, 1):
        for side in (32, 64):
            alone = [_need(member, side, draws) for member in members]
            together = _need(ensemble, side, draws)
            assert max(alone) <= together < sum(alone)
            # Every weight, one member's activations: the largest member's.
            weights = [member.parameters * 4 for member in members]
            assert together == max(
                need - weight + sum(weights) for need, weight in zip(alone, weights, strict=True)
            )


def test_size_of_an_ensemble_names_each_member(tiny_model):
    sd3 = LatentDiffusion.random("tiny-sd3")
    size = size_of(Ensemble.of([tiny_model, sd3]))
    assert size == EnsembleSize((ModelSize.of(tiny_model), ModelSize.of(sd3)))
    assert size_of(tiny_model) == ModelSize.of(tiny_model)


@pytest.fixture
def folder(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    pixels = np.random.default_rng(0).integers(0, 256, (16, 20, 3), dtype=np.uint8)
    for name in ("a.png", "b.png", "c.png"):
        Image.fromarray(pixels).save(inputs / name)
    return inputs


@pytest.fixture
def protect(run_cli, protect_args, tiny_model_dir):
    """protect(folder, out, *options) → exit code of a quick run on the tiny model."""
    return lambda folder, out, *options: run_cli(
        *protect_args(folder, "-o", out, *options, model_dir=tiny_model_dir)
    )


def test_cli_refuses_a_budget_that_cannot_fit_and_names_a_way_out(
    folder, tmp_path, tiny_model_dir, capsys, protect
):
    assert protect(folder, tmp_path / "o", "--max-memory", "1MiB") == 2
    assert "Would fit" in capsys.readouterr().err
    assert not any((tmp_path / "o").glob("*.png"))


def test_cli_auto_batch_and_plan_recorded(folder, tmp_path, tiny_model_dir, protect):
    out = tmp_path / "o"
    assert protect(folder, out, "--batch-size", "auto", "--max-memory", "4GiB") == 0
    (record_path,) = out.glob("protect-*.json")
    record = json.loads(record_path.read_text())
    assert record["memory_plan"]["batch_size"] == record["batch_size"] >= 3
    automatic = default_dtypes(torch.device("cpu"), "auto")[0]  # bf16 on CPUs that compute it
    assert record["memory_plan"]["dtype"] == automatic
    assert record["model"]["dtype"] == {"fp32": "float32", "bf16": "bfloat16"}[automatic]
