"""The adapter: real loading code, clear errors, state restored, conversions right."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import torch
from PIL import Image

from mimicshield import LatentDiffusion, ModelUnavailableError
from mimicshield.models import one_step_timestep, resolve_device, resolve_dtype


def test_saved_folder_loads_back_through_the_real_loader(tiny_model_dir):
    model = LatentDiffusion.from_pretrained(tiny_model_dir, device="cpu", dtype="fp32")
    reference = LatentDiffusion.random("tiny", seed=0)
    for part in ("vae", "unet", "text_encoder"):
        loaded = dict(getattr(model, part).state_dict())
        for key, value in getattr(reference, part).state_dict().items():
            assert torch.equal(loaded[key], value), f"{part}.{key} changed on the round trip"
    assert model.name == str(tiny_model_dir) and not model.random_weights


def test_loading_in_bf16_gives_bf16_weights(tiny_model_dir):
    model = LatentDiffusion.from_pretrained(tiny_model_dir, device="cpu", dtype="bf16")
    assert model.dtype == torch.bfloat16 and model.vae.dtype == torch.bfloat16
    latents = model.encode(torch.rand(1, 3, 16, 16))
    assert latents.dtype == torch.bfloat16


def test_missing_hub_model_gives_one_sentence_naming_it_and_the_fix():
    with pytest.raises(ModelUnavailableError) as caught:
        LatentDiffusion.from_pretrained("nobody-here/no-such-model", device="cpu")
    message = str(caught.value)
    assert "nobody-here/no-such-model" in message
    assert "hf download" in message and "local diffusers folder" in message
    assert message.count(". ") == 0, "one sentence"
    assert "--" not in message, "the library does not speak in command-line flags"


def test_the_hub_counts_as_unreachable_offline_or_when_it_refuses(monkeypatch):
    from huggingface_hub import constants

    from mimicshield.models.hub import hub_reachable

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert not hub_reachable()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    assert not hub_reachable()
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    assert hub_reachable(), "behind a proxy the hub client decides"


def test_first_contact_without_network_is_one_sentence_and_no_hub_warnings(tmp_path):
    """A fresh shell, no offline flag, a hub that refuses connections: only the one sentence."""
    Image.new("RGB", (16, 16)).save(tmp_path / "photo.png")
    env = {key: value for key, value in os.environ.items() if key != "HF_HUB_OFFLINE"}
    env["HF_ENDPOINT"] = f"http://127.0.0.1:{_closed_port()}"
    env["HF_HOME"] = str(tmp_path / "hf-home")  # an empty cache
    command = [sys.executable, "-m", "mimicshield", "protect", str(tmp_path / "photo.png")]
    command += ["-o", str(tmp_path / "out"), "--model", "nobody-here/no-such-model"]
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 1
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1, completed.stderr
    assert lines[0].startswith("mimicshield: error: The model 'nobody-here/no-such-model'")
    assert "--model" in lines[0] and "hf download" in lines[0]


def _closed_port() -> int:
    """A local TCP port nothing listens on (connections are refused at once)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_incomplete_folder_is_named(tmp_path):
    (tmp_path / "vae").mkdir()
    with pytest.raises(ModelUnavailableError, match="not a complete diffusers"):
        LatentDiffusion.from_pretrained(tmp_path, device="cpu")


def test_unknown_device_and_dtype_are_refused():
    with pytest.raises(ValueError, match="dtype must be one of"):
        resolve_dtype("fp8")
    if not torch.cuda.is_available():
        with pytest.raises(ModelUnavailableError, match="CUDA is not available"):
            resolve_device("cuda")
    assert resolve_device("cpu") == torch.device("cpu")


def test_frozen_restores_every_module_and_flag(tiny_model):
    tiny_model.unet.train()
    tiny_model.unet.conv_in.weight.requires_grad_(False)
    with tiny_model.frozen():
        assert not tiny_model.unet.training
        assert not any(p.requires_grad for p in tiny_model.unet.parameters())
    assert tiny_model.unet.training
    assert not tiny_model.unet.conv_in.weight.requires_grad
    assert tiny_model.unet.conv_out.weight.requires_grad
    tiny_model.unet.conv_in.weight.requires_grad_(True)
    tiny_model.unet.eval()


def test_add_noise_and_target_match_the_scheduler(tiny_v_model):
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(3, 4, 8, 8, generator=generator)
    noise = torch.randn(3, 4, 8, 8, generator=generator)
    timesteps = torch.tensor([0, 500, 999])
    scheduler = tiny_v_model.scheduler
    torch.testing.assert_close(
        tiny_v_model.add_noise(latents, noise, timesteps),
        scheduler.add_noise(latents, noise, timesteps),
    )
    torch.testing.assert_close(
        tiny_v_model.target(latents, noise, timesteps),
        scheduler.get_velocity(latents, noise, timesteps),
    )
    # ε̂ recovered from the exact v is the true ε.
    noisy = tiny_v_model.add_noise(latents, noise, timesteps)
    velocity = tiny_v_model.target(latents, noise, timesteps)
    torch.testing.assert_close(
        tiny_v_model.predicted_noise(velocity, noisy, timesteps), noise, rtol=1e-4, atol=1e-5
    )


@pytest.mark.parametrize("fixture", ["tiny_model", "tiny_v_model"])
def test_predict_start_is_the_x0_of_the_prediction_type(fixture, request):
    model = request.getfixturevalue(fixture)
    generator = torch.Generator().manual_seed(0)
    noisy, output = torch.randn(2, 3, 4, 8, 8, generator=generator)
    timesteps = torch.tensor([0, 500, 999])
    alpha_bar = model.scheduler.alphas_cumprod.double()[timesteps].view(-1, 1, 1, 1)
    alpha, sigma = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
    if model.prediction_type == "epsilon":
        expected = (noisy.double() - sigma * output.double()) / alpha
    else:  # z_t = α·x₀ + σ·ε and v = α·ε − σ·x₀ give x₀ = α·z_t − σ·v
        expected = alpha * noisy.double() - sigma * output.double()
    estimate = model.predict_start(noisy, timesteps, output)
    assert estimate.dtype == torch.float32
    torch.testing.assert_close(estimate.double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fixture", ["tiny_model", "tiny_v_model"])
def test_predict_start_of_the_exact_target_gives_back_the_latents(fixture, request):
    model = request.getfixturevalue(fixture)
    generator = torch.Generator().manual_seed(1)
    latents, noise = torch.randn(2, 3, 4, 8, 8, generator=generator)
    timesteps = torch.tensor([10, 400, 900])
    noisy = model.add_noise(latents, noise, timesteps)
    target = model.target(latents, noise, timesteps)
    torch.testing.assert_close(
        model.predict_start(noisy, timesteps, target), latents, rtol=1e-4, atol=1e-4
    )


def test_schedule_helpers(tiny_model):
    timesteps = torch.tensor([[0, 999], [299, 500]])
    assert torch.equal(
        tiny_model.alpha_bar(timesteps), tiny_model.scheduler.alphas_cumprod[timesteps]
    )
    assert tiny_model.one_step_timestep(0.3) == one_step_timestep(0.3, 1000) == 299
    assert tiny_model.ddim_timesteps(299, 10) == [299, 199, 99]
    assert tiny_model.ddim_timesteps(0, 1000) == [0]
    with pytest.raises(ValueError, match=r"num_inference_steps must lie in \[1, 1000\], got 1001"):
        tiny_model.ddim_timesteps(299, 1001)


def test_encode_decode_ranges_and_posterior_sampling(tiny_model):
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    mean = tiny_model.encode(images)
    assert mean.shape == (2, 4, 8, 8)
    noise = torch.randn(mean.shape, generator=torch.Generator().manual_seed(1))
    sample = tiny_model.encode(images, noise)
    assert not torch.equal(sample, mean)
    decoded = tiny_model.decode(mean)
    assert decoded.shape == images.shape and decoded.min() >= 0 and decoded.max() <= 1


def test_prompt_embeddings_are_computed_once(tiny_model, monkeypatch):
    tiny_model._prompt_cache.clear()
    calls = []
    original = tiny_model.text_encoder.forward
    monkeypatch.setattr(
        tiny_model.text_encoder, "forward", lambda *a, **k: calls.append(1) or original(*a, **k)
    )
    first = tiny_model.embed(["a painting", "a painting"])
    second = tiny_model.embed(["a painting"])
    assert len(calls) == 1 and torch.equal(first.hidden_states[0], second.hidden_states[0])
