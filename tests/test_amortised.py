"""The amortised protector, its training recipe and its use from the command line.

Bounded by construction, deterministic, saved and loaded the diffusers way, tied to its
surrogate, trained by a resumable recipe.
"""

from __future__ import annotations

import json

import pytest
import torch

from mimicshield import METHODS, Budget, LatentDiffusion, ModelUnavailableError, protect
from mimicshield.amortised import protect_amortised
from mimicshield.imagefiles import read_image
from mimicshield.methods import ProtectorMismatchError
from mimicshield.models import DEFAULT_PROTECTOR, PerturbationNetwork, load_protector
from mimicshield.models.protector import SHIPPED_PROTECTORS
from mimicshield.objectives import StepNoise
from training.mini import checkpoint
from training.protector import data, train

#: float32 rounding of one addition x + δ with x in [0, 1]: at most half a unit in the last place.
ROUNDING = 2.0**-24


def saturated(network: PerturbationNetwork) -> PerturbationNetwork:
    """The same network with its last layer scaled 10⁴ times: tanh at ±1 almost everywhere."""
    with torch.no_grad():
        network.head.weight.mul_(1e4)
        network.head.bias.mul_(1e4)
    return network


@pytest.fixture
def network():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return PerturbationNetwork(block_channels=(4, 8, 8))


def extremes() -> list[torch.Tensor]:
    """All black, all white, a black-and-white checkerboard, uniform noise; odd sizes too."""
    checker = (torch.arange(15)[:, None] + torch.arange(22)[None, :]) % 2
    return [
        torch.zeros(1, 3, 16, 16),
        torch.ones(2, 3, 12, 20),
        checker.float().expand(1, 3, 15, 22).clone(),
        torch.rand(3, 3, 9, 13, generator=torch.Generator().manual_seed(0)),
    ]


@pytest.mark.parametrize("eps_255", [0, 1, 8, 16, 255])
def test_budget_holds_for_any_input_and_any_weights(network, eps_255):
    eps = eps_255 / 255
    for weights in (network, saturated(network)):
        for images in extremes():
            protected = protect_amortised(images, weights, eps=eps)
            assert protected.shape == images.shape and protected.dtype == images.dtype
            assert protected.min() >= 0 and protected.max() <= 1
            assert (protected.double() - images.double()).abs().max() <= eps + ROUNDING
    # Saturated, the perturbation spends nearly the whole budget where [0, 1] leaves room.
    middle = 0.25 + 0.5 * torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    moved = (protect_amortised(middle, network, eps=16 / 255) - middle).abs()
    assert moved.max() <= 16 / 255 + ROUNDING
    assert (moved > 0.99 * 16 / 255).float().mean() > 0.95


@pytest.mark.parametrize("centred", [True, False])
def test_centring_leaves_no_constant_colour_shift(centred):
    network = PerturbationNetwork(block_channels=(4, 8), centred=centred)
    with torch.no_grad():
        network.head.weight.zero_()
        network.head.bias.fill_(100.0)  # h the same everywhere: a pure colour shift
    delta = network(extremes()[3])
    assert torch.equal(
        delta, torch.zeros_like(delta) if centred else torch.full_like(delta, 16 / 255)
    )


def test_mask_input_and_determinism(network):
    images = extremes()[3]
    before = images.clone()
    mask = torch.zeros(1, 1, *images.shape[-2:])
    mask[..., 2:7, 3:10] = 1
    first = protect_amortised(images, saturated(network), eps=8 / 255, mask=mask)
    again = protect_amortised(images, network, eps=8 / 255, mask=mask)
    assert torch.equal(images, before)
    assert torch.equal(first, again)
    outside = mask.expand_as(images) == 0
    assert torch.equal(first[outside], images[outside])
    assert (first - images)[~outside].abs().max() > 7 / 255


def test_a_different_eps_scales_the_trained_pattern(network):
    images = extremes()[3]
    trained = protect_amortised(images, network) - images  # the network's own 16/255
    half = protect_amortised(images, network, eps=8 / 255) - images
    inside = ((images > 16 / 255) & (images < 1 - 16 / 255)).expand_as(images)  # no clipping
    assert network.trained_eps == 16 / 255
    assert torch.allclose(half[inside], trained[inside] / 2, atol=1e-6)


def test_save_and_from_pretrained_give_identical_output(network, tmp_path):
    network.register_to_config(surrogate="tiny", surrogate_digest="sha256:abc")
    network.save_pretrained(tmp_path / "protector")
    loaded = PerturbationNetwork.from_pretrained(tmp_path / "protector")
    assert loaded.config.surrogate == "tiny" and loaded.config.block_channels == [4, 8, 8]
    images = extremes()[3]
    assert torch.equal(protect_amortised(images, loaded), protect_amortised(images, network))
    by_name = load_protector(tmp_path / "protector")
    assert not by_name.training and not any(p.requires_grad for p in by_name.parameters())


def test_training_export_is_fp16_and_loads_back(network, tmp_path):
    train.export(network, tmp_path / "out")
    loaded = load_protector(tmp_path / "out")
    for name, weight in loaded.state_dict().items():
        assert weight.dtype == torch.float32
        assert torch.equal(weight, network.state_dict()[name].half().float()), name
    assert next(network.parameters()).dtype == torch.float32  # the trained copy is left as it was


def test_method_dispatches_to_one_pass_and_records_the_protector(tiny_model, tiny_protector_dir):
    method = METHODS["amortised"](budget=Budget.from_255(8, 1, 100), protector=tiny_protector_dir)
    assert method.budget == Budget(eps=8 / 255, step_size=0.0, steps=1)
    images = extremes()[3]
    calls = []
    protected = protect(images, method, tiny_model, callback=lambda *args: calls.append(args))
    assert torch.equal(protected, protect_amortised(images, method.network, eps=8 / 255))
    assert len(calls) == 1 and calls[0][:2] == (1, 1)
    record = method.as_record()
    assert record["protector"] == str(tiny_protector_dir) and record["trained_eps_255"] == 8.0
    assert record["trained_against"] == tiny_model.name and len(record["protector_sha256"]) == 64
    assert "prompt" not in record and record["steps"] == 1


def test_the_record_does_not_depend_on_the_precision_of_the_run(tiny_model_dir, tiny_protector_dir):
    """A bf16 run protects with a bf16 copy; the record (and resume fingerprint) stay the same."""
    method = METHODS["amortised"](budget=Budget.from_255(8, 1, 1), protector=tiny_protector_dir)
    before = method.as_record()
    bf16 = LatentDiffusion.from_pretrained(tiny_model_dir, device="cpu", dtype="bf16")
    protected = protect(extremes()[3], method, bf16)
    assert (protected - extremes()[3]).abs().max() <= 8 / 255 + ROUNDING
    assert method.network.dtype == torch.float32 and method.as_record() == before


def test_a_protector_refuses_a_model_it_was_not_trained_against(
    tiny_model, tiny_v_model, tiny_protector_dir
):
    method = METHODS["amortised"](protector=tiny_protector_dir)
    method.check_model(tiny_model)  # its own model: accepted
    method.check_model(LatentDiffusion.random("tiny"))  # the same configuration, not loaded
    with pytest.raises(ProtectorMismatchError) as refused:
        protect(extremes()[0], method, tiny_v_model)
    assert str(refused.value) == (
        f"this protector was trained against {tiny_model.name}, not {tiny_v_model.name}; train "
        f"one for {tiny_v_model.name} with `python -m training.protector --model "
        f"{tiny_v_model.name}` and pass its folder as the protector"
    )
    shipped = METHODS["amortised"]()
    with pytest.raises(ProtectorMismatchError, match="trained against mini, not tiny"):
        shipped.check_model(LatentDiffusion.random("tiny"))


def test_a_missing_protector_is_one_sentence(tmp_path):
    with pytest.raises(ModelUnavailableError, match=r"no protector '/nowhere/at/all' on disk"):
        load_protector("/nowhere/at/all")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelUnavailableError, match="is not a protector folder"):
        _ = METHODS["amortised"](protector=str(tmp_path / "empty")).network


def test_the_shipped_protector_names_the_miniature():
    network = load_protector(DEFAULT_PROTECTOR)
    mini = LatentDiffusion.from_pretrained("mini", device="cpu")
    assert network.config.surrogate == "mini"
    assert network.config.surrogate_digest == mini.config_digest()
    METHODS["amortised"]().check_model(mini)


def test_the_shipped_card_states_the_files_and_the_limit():
    folder = SHIPPED_PROTECTORS[DEFAULT_PROTECTOR]
    card = (folder / "README.md").read_text()
    assert "protects only against the miniature" in card
    network = load_protector(DEFAULT_PROTECTOR)
    assert f"{sum(p.numel() for p in network.parameters()):,} parameters" in card
    (weights,) = folder.glob("*.safetensors")
    assert f"{weights.stat().st_size:,} B" in card and weights.stat().st_size < 4 * 2**20
    assert network.config.surrogate_digest in card


def test_config_digest_ignores_loading_but_not_configuration(tiny_model_dir, tiny_v_model):
    fp32 = LatentDiffusion.from_pretrained(tiny_model_dir, device="cpu", dtype="fp32")
    bf16 = LatentDiffusion.from_pretrained(tiny_model_dir, device="cpu", dtype="bf16")
    assert fp32.config_digest() == bf16.config_digest() == LatentDiffusion.random().config_digest()
    assert fp32.config_digest() != tiny_v_model.config_digest()  # another prediction type


# ------------------------------------------------------------------------------ the recipe

TINY_RUN = train.Settings(
    model="tiny",
    block_channels=(4, 8),
    steps=2,
    batch=2,
    warmup=1,
    log_every=1,
    eval_every=2,
    save_every=2,
)


def synthetic_images(count: int = 8, side: int = 16) -> data.Images:
    pixels = torch.randint(
        0, 256, (count, 3, side, side), generator=torch.Generator().manual_seed(0)
    )
    pixels = pixels.to(torch.uint8)
    return data.Images(train=pixels[2:], validation=pixels[:2], source="synthetic")


def test_two_steps_export_a_protector_for_the_model(tmp_path):
    network = train.train(TINY_RUN, synthetic_images(), tmp_path / "run")
    train.export(network, tmp_path / "protector")
    loaded = load_protector(tmp_path / "protector")
    assert loaded.config.surrogate == "tiny" and loaded.config.objective == "sds-"
    METHODS["amortised"](protector=str(tmp_path / "protector")).check_model(
        LatentDiffusion.random("tiny")
    )
    state = checkpoint.load(tmp_path / "run" / "last.pt")
    assert state["step"] == 2
    settings = json.loads((tmp_path / "run" / "settings.json").read_text())
    assert settings["model"] == "tiny" and settings["data"] == "synthetic"


def test_the_command_trains_on_an_image_folder_and_writes_the_protector(image_folder, tmp_path):
    from training.protector.__main__ import main

    folder = image_folder(*(f"{index}.png" for index in range(4)), size=(20, 16))
    main(["--model", "tiny", "--images", str(folder), "--resolution", "16", "--steps", "2",
          "--batch", "2", "--channels", "4,8", "--run", str(tmp_path / "run"),
          "--output", str(tmp_path / "protector")])  # fmt: skip
    settings = json.loads((tmp_path / "run" / "settings.json").read_text())
    assert settings["data"] == str(folder) and settings["block_channels"] == [4, 8]
    assert load_protector(tmp_path / "protector").config.surrogate == "tiny"


def test_resume_equals_an_uninterrupted_run(tmp_path, interrupt_and_resume):
    settings = train.Settings(**{**TINY_RUN.__dict__, "steps": 4, "objective": "encoder"})
    images = synthetic_images()
    train.train(settings, images, tmp_path / "whole")
    interrupt_and_resume(
        lambda: train.train(settings, images, tmp_path / "resumed"),
        tmp_path / "resumed" / "last.pt",
        2,
    )
    whole = checkpoint.load(tmp_path / "whole" / "last.pt")
    resumed = checkpoint.load(tmp_path / "resumed" / "last.pt")
    assert whole["step"] == resumed["step"] == 4
    assert torch.equal(whole["generator"], resumed["generator"])
    for name, tensor in whole["network"].items():
        assert torch.equal(tensor, resumed["network"][name]), name
    for key, slot in whole["optimizer"]["state"].items():
        for name, value in slot.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(
                resumed["optimizer"]["state"][key][name])), (key, name)  # fmt: skip


def test_a_run_folder_refuses_other_settings(tmp_path):
    train.train(TINY_RUN, synthetic_images(), tmp_path / "run")
    other = train.Settings(**{**TINY_RUN.__dict__, "lr": 0.5})
    with pytest.raises(ValueError, match=r"holds a run with other settings \(lr differ"):
        train.train(other, synthetic_images(), tmp_path / "run")


def test_training_steps_raise_the_encoder_objective_on_a_fixed_batch():
    """With the batch and noise held fixed, a few optimiser steps increase ‖E(x + δ) − E(x)‖²."""
    model = LatentDiffusion.random("tiny")
    settings = train.Settings(model="tiny", objective="encoder", block_channels=(4, 8))
    network = train.build(settings, model)
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-2)
    clean = synthetic_images().train[:4].float() / 255
    step = StepNoise.draw(model, clean, torch.Generator().manual_seed(0))
    values = []
    with model.frozen():
        for _ in range(6):
            protected = (clean + network(clean)).clamp(0, 1)
            value = train.objective(model, clean, protected, settings, step)
            optimizer.zero_grad()
            (-value).backward()
            optimizer.step()
            values.append(value.item())
    assert values[-1] > values[0]


def test_the_sds_objective_hands_the_network_minus_the_encoder_vjp_of_the_residual():
    """Gradient at the protected images = −J_Eᵀ(ε̂ − ε) / B, ε̂ from one no-grad UNet pass."""
    model = LatentDiffusion.random("tiny")
    settings = train.Settings(model="tiny", objective="sds-")
    clean = synthetic_images().train[:3].float() / 255
    protected = (clean + 0.02).clamp(0, 1).requires_grad_(True)
    step = StepNoise.draw(model, clean, torch.Generator().manual_seed(1))
    with model.frozen():
        value = train.objective(model, clean, protected, settings, step)
        (gradient,) = torch.autograd.grad(value, protected)
        # Independently: the residual at the protected latent, then the encoder's VJP.
        latents = model.encode(protected, step.posterior_noise)
        with torch.no_grad():
            noisy = model.add_noise(latents, step.noise, step.timesteps)
            embeddings = model.embed([settings.prompt] * 3)
            residual = model.predict(noisy, step.timesteps, embeddings) - step.noise
        (expected,) = torch.autograd.grad(latents, protected, grad_outputs=-residual / 3)
    assert torch.allclose(gradient, expected, atol=1e-6, rtol=1e-4)


def test_training_data_is_the_training_split_only(tmp_path):
    """The crop cache's held-out rows never reach training or validation."""
    import numpy as np

    from training.mini import paths

    folders = paths.Folders(data=tmp_path)
    images = np.arange(10 * 64 * 64 * 3, dtype=np.int64).reshape(10, 64, 64, 3) % 251
    records = [
        {"key": f"k{i}", "group": "clipart", "caption": "c", "split": "test" if i % 3 else "train"}
        for i in range(10)
    ]
    np.savez(folders.images, images=images.astype(np.uint8), owner=np.arange(10, dtype=np.int32))
    folders.manifest.write_text(json.dumps(records))
    crops = data.mini_training_crops(folders)
    expected = torch.from_numpy(images.astype(np.uint8)[[0, 3, 6, 9]]).permute(0, 3, 1, 2)
    assert torch.equal(torch.cat([crops.validation, crops.train]), expected)


# ------------------------------------------------------------------------------ front ends


def test_cli_protects_with_the_amortised_method(run_cli, image_folder, tmp_path, tiny_model_dir,
                                               tiny_protector_dir):  # fmt: skip
    inputs = image_folder("a.png", "b.png")
    code = run_cli("protect", inputs, "-o", tmp_path / "out", "--method", "amortised",
                   "--protector", tiny_protector_dir, "--model", tiny_model_dir, "--eps", "8",
                   "--device", "cpu", "--dtype", "fp32")  # fmt: skip
    assert code == 0
    (record_path,) = (tmp_path / "out").glob("protect-*.json")
    record = json.loads(record_path.read_text())
    assert record["method"]["method"] == "amortised" and record["method"]["eps_255"] == 8
    for image in record["images"]:
        assert image["ok"] and image["linf_255"] <= 8
        saved = read_image(image["output"]).pixels
        original = read_image(image["input"]).pixels
        assert 0 < (saved - original).abs().max() <= 8 / 255 + ROUNDING


def test_cli_says_which_model_a_protector_needs(run_cli, image_folder, tmp_path, capsys):
    inputs = image_folder("a.png")
    code = run_cli("protect", inputs, "-o", tmp_path / "out", "--method", "amortised",
                   "--model", "tiny", "--device", "cpu")  # fmt: skip
    assert code == 2
    error = capsys.readouterr().err
    assert "this protector was trained against mini, not tiny; train one for tiny with " in error
    assert "`python -m training.protector --model tiny`" in error
    assert not list((tmp_path / "out").glob("*.png"))
    missing = tmp_path / "missing"
    code = run_cli("protect", inputs, "-o", tmp_path / "out", "--method", "amortised",
                   "--protector", missing, "--model", "tiny", "--device", "cpu")  # fmt: skip
    assert code == 1
    assert f"no protector '{missing}'" in capsys.readouterr().err
