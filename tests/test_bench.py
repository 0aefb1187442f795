"""The benchmark's rows and table, the bench command, and the speed switches' effect on results."""

from __future__ import annotations

import json

import pytest
import torch

from mimicshield import METHODS, Budget, LatentDiffusion, protect
from mimicshield.cli.main import main
from mimicshield.runtime.benchmark import BenchConfig, format_table, run_benchmark
from mimicshield.runtime.speed import SpeedOptions, configure

ROW_FIELDS = {
    "method",
    "model",
    "resolution",
    "batch_size",
    "dtype",
    "device",
    "device_name",
    "step_seconds",
    "step_seconds_timed",
    "warmup_step_seconds",
    "seconds_per_image_100_steps",
    "peak_memory_bytes",
    "memory_kind",
    "weights_bytes",
    "flops_per_step",
    "achieved_flops_per_second",
    "denoiser_backward",
    "parameters",
    "family",
    "speed",
}


def test_rows_have_every_field_and_flops_follow_the_gradient_path():
    config = BenchConfig(
        model="tiny",
        methods=("sds-", "advdm", "photoguard"),
        resolutions=(32,),
        batch_sizes=(1, 2),
        device="cpu",
        steps_timed=1,
    )
    rows = run_benchmark(config)
    assert len(rows) == 6
    for row in rows:
        assert ROW_FIELDS <= row.keys()
        assert len(row["step_seconds_timed"]) == 1 and len(row["warmup_step_seconds"]) == 2
        assert row["peak_memory_bytes"] > 0 and row["memory_kind"].startswith("cpu_peak_rss")
        assert row["flops_per_step"] > 0 and row["achieved_flops_per_second"] > 0
    flops = {(row["method"], row["batch_size"]): row["flops_per_step"] for row in rows}
    # AdvDM adds a UNet backward to SDS's encoder pass and UNet forward; PhotoGuard has no UNet.
    assert flops["advdm", 1] > flops["sds-", 1] > flops["photoguard", 1]
    assert flops["sds-", 2] == pytest.approx(2 * flops["sds-", 1], rel=0.01)
    assert {row["denoiser_backward"] for row in rows if row["method"] == "advdm"} == {True}
    table = format_table(rows)
    assert table.count("ratios to sds-") == 2 and "photoguard" in table


def test_bench_command_writes_json_rows_and_prints_ratios(tmp_path, capsys):
    output = tmp_path / "bench.json"
    code = main(
        [
            "bench",
            "--model",
            "tiny",
            "--methods",
            "sds-,mist",
            "--resolution",
            "16",
            "--device",
            "cpu",
            "--steps-timed",
            "1",
            "--output",
            str(output),
        ]
    )
    assert code == 0
    report = json.loads(output.read_text())
    assert [row["method"] for row in report["rows"]] == ["sds-", "mist"]
    assert report["versions"]["torch"] and "FLOPs" in report["units"]
    out = capsys.readouterr().out
    assert "ratios to sds-" in out and "1.00" in out


@pytest.mark.parametrize("model", ["tiny-sd3", "tiny-flux"])
def test_bench_measures_transformer_families_with_channels_last(model, tmp_path):
    output = tmp_path / "bench.json"
    arguments = ["--model", model, "--methods", "sds-,advdm", "--resolution", "32"]
    quick = ["--device", "cpu", "--steps-timed", "1", "--channels-last", "--output", output]
    assert main(["bench", *arguments, *map(str, quick)]) == 0
    rows = json.loads(output.read_text())["rows"]
    networks = LatentDiffusion.random(model).networks
    for row in rows:
        assert row["family"] == model.removeprefix("tiny-") and row["speed"]["channels_last"]
        assert row["parameters"] == sum(p.numel() for net in networks for p in net.parameters())
        assert row["weights_bytes"] == 4 * row["parameters"]
    sds, advdm = rows
    assert advdm["denoiser_backward"] and not sds["denoiser_backward"]
    assert advdm["flops_per_step"] > sds["flops_per_step"] > 0


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--methods", "sds-,glaze", "unknown methods"),
        ("--methods", "amortised", "amortised has no PGD steps: bench/amortised_mini.py times it"),
        ("--dtype", "fp8", "--dtype must be"),
        ("--resolution", "big", "--resolution takes whole numbers"),
    ],
)
def test_bench_command_rejects_bad_values(option, value, message, capsys):
    assert main(["bench", "--model", "tiny", option, value]) == 2
    assert message in capsys.readouterr().err


def _protect(model, images, method="advdm"):
    chosen = METHODS[method](budget=Budget.from_255(8, 1, 3))
    return protect(images, chosen, model, generator=torch.Generator().manual_seed(0))


def test_bf16_networks_keep_an_fp32_perturbation(tiny_model_dir, images):
    model = LatentDiffusion.from_pretrained(tiny_model_dir, device="cpu", dtype="bf16")
    protected = _protect(model, images)
    assert protected.dtype == torch.float32
    # A bf16 image would sit on bf16's grid (1/128 near 1); the fp32 perturbation does not.
    assert (protected != protected.bfloat16().float()).any()
    assert (protected - images).abs().max() <= 8 / 255 + 1e-6


def test_checkpointing_and_channels_last_do_not_change_the_result(tiny_model_dir, images):
    plain = _protect(LatentDiffusion.from_pretrained(tiny_model_dir, device="cpu"), images)
    switched = configure(
        LatentDiffusion.from_pretrained(tiny_model_dir, device="cpu"),
        SpeedOptions(encoder_checkpointing=True, channels_last=True),
    )
    assert switched.vae.encoder.gradient_checkpointing
    assert torch.allclose(_protect(switched, images), plain, atol=1e-6)


def test_attention_on_the_cpu_counts_its_flops():
    """Torch's counter has no formula for the CPU's fused attention; the benchmark supplies one."""
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

    from mimicshield.runtime.benchmark import CPU_ATTENTION_FLOPS

    query, key, value = (torch.randn(1, 2, 64, 8, requires_grad=True) for _ in range(3))
    counts = []
    for mapping in ({}, CPU_ATTENTION_FLOPS):
        counter = FlopCounterMode(display=False, custom_mapping=mapping)
        with counter:
            torch.nn.functional.scaled_dot_product_attention(query, key, value).sum().backward()
        counts.append(counter.get_total_flops())
    forward = sdpa_flop_count(query.shape, key.shape, value.shape)
    assert counts[0] == 0  # what torch alone counts: if this fails, the mapping is obsolete
    assert counts[1] > forward > 0  # forward and backward counted
