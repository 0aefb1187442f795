"""Warm starts and coarse-to-fine: protect's start image and Staged runs of methods."""

from __future__ import annotations

import pytest
import torch

from mimicshield import METHODS, Budget, Stage, Staged, protect, protect_at_resolution

EPS = 8 / 255


def _method(name, steps=2, step_255=2.0, eps_255=8):
    return METHODS[name](budget=Budget.from_255(eps_255, step_255, steps))


WARM = Staged((Stage(_method("pca-")), Stage(_method("sds-"))))
COARSE = Staged((Stage(_method("sds-"), scale=0.5), Stage(_method("sds-"))))
WAYS = {"warm start": WARM, "coarse to fine": COARSE, "working resolution": Staged(
    (Stage(_method("photoguard"), scale=0.5),)
)}  # fmt: skip


def _protect(protection, model, images, seed=0, **kwargs):
    return protect(
        images, protection, model, generator=torch.Generator().manual_seed(seed), **kwargs
    )


@pytest.mark.parametrize("way", WAYS)
def test_budget_input_and_seed(way, tiny_model, images):
    before = images.clone()
    first = _protect(WAYS[way], tiny_model, images, seed=3)
    assert torch.equal(images, before)
    assert torch.equal(first, _protect(WAYS[way], tiny_model, images, seed=3))
    assert first.shape == images.shape and first.dtype == images.dtype
    assert 0 <= first.min() and first.max() <= 1
    assert (first - images).abs().max() <= EPS + 1e-6
    assert not torch.equal(first, images)


@pytest.mark.parametrize("way", WAYS)
def test_mask_is_respected(way, tiny_model, images):
    mask = torch.zeros(1, 1, *images.shape[-2:])
    mask[..., 4:12, 5:15] = 1
    protected = _protect(WAYS[way], tiny_model, images, mask=mask)
    outside = mask.expand_as(images) == 0
    assert torch.equal(protected[outside], images[outside])
    assert not torch.equal(protected[~outside], images[~outside])


def test_a_warm_start_continues_from_where_the_first_method_ended(tiny_model, images):
    """Staged(A, B) is B started from A's result, with the one generator running through both."""
    generator = torch.Generator().manual_seed(5)
    warmed = protect(images, WARM.stages[0].method, tiny_model, generator=generator)
    by_hand = protect(images, WARM.stages[1].method, tiny_model, start=warmed, generator=generator)
    assert torch.equal(_protect(WARM, tiny_model, images, seed=5), by_hand)
    assert not torch.equal(by_hand, _protect(WARM.stages[1].method, tiny_model, images, seed=5))


def test_a_later_stage_does_not_restart_at_random(tiny_model, images):
    """PhotoGuard starts at random alone; after another stage it continues from its result."""
    staged = Staged((Stage(_method("sds-", steps=1)), Stage(_method("photoguard"))))
    generator = torch.Generator().manual_seed(2)
    first = protect(images, staged.stages[0].method, tiny_model, generator=generator)
    state = generator.get_state()
    continued = protect(
        images, staged.stages[1].method, tiny_model, start=first, generator=generator
    )
    generator.set_state(state)
    restarted = protect(images, staged.stages[1].method, tiny_model, generator=generator)
    result = _protect(staged, tiny_model, images, seed=2)
    assert torch.equal(result, continued) and not torch.equal(result, restarted)


def test_a_single_half_size_stage_is_working_resolution(tiny_model, images):
    """Square images: scale 0.5 and a short side of half the side optimise the same image."""
    square = images[..., :16, :16]
    staged = Staged((Stage(_method("sds-"), scale=0.5),))
    working = protect_at_resolution(square, _method("sds-"), tiny_model, short_side=8,
                                    generator=torch.Generator().manual_seed(1))  # fmt: skip
    assert torch.equal(_protect(staged, tiny_model, square, seed=1), working)


def test_a_single_full_size_stage_is_the_method(tiny_model, images):
    method = _method("sds-", steps=3)
    staged = Staged((Stage(method),))
    assert torch.equal(_protect(staged, tiny_model, images), _protect(method, tiny_model, images))


def test_start_is_projected_and_zero_steps_keep_it(tiny_model, images):
    far = (images + 0.5).clamp(0, 1)  # far outside the ε-ball
    kept = _protect(_method("sds-", steps=0), tiny_model, images, start=far)
    torch.testing.assert_close(kept, images + (far - images).clamp(-EPS, EPS))
    nothing = _protect(_method("sds-", steps=3, eps_255=0), tiny_model, images, start=far)
    assert torch.equal(nothing, images)


def test_callback_counts_the_steps_of_all_stages(tiny_model, images):
    seen = []
    protect(
        images, COARSE, tiny_model, callback=lambda step, steps, value: seen.append((step, steps))
    )
    assert seen == [(step, 4) for step in range(1, 5)]


def test_budget_name_record_and_unet_passes():
    staged = Staged((Stage(_method("pca-", steps=3), 0.5), Stage(_method("advdm", steps=2))))
    assert staged.name == "pca-@0.5 then advdm"
    assert staged.budget == Budget(eps=EPS, step_size=2 / 255, steps=5)
    assert staged.unet_backward_draws == 1 and WARM.unet_backward_draws == 0
    record = staged.as_record()
    assert record["method"] == "staged" and record["steps"] == 5
    assert [(s["method"], s["scale"], s["steps"]) for s in record["stages"]] == [
        ("pca-", 0.5, 3),
        ("advdm", 1.0, 2),
    ]


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: Staged(()), "non-empty tuple"),
        (lambda: Staged((Stage(_method("sds-")), Stage(_method("sds-", eps_255=16)))), "same ε"),
        (lambda: Stage(_method("sds-"), scale=0), r"scale must lie in \(0, 1\]"),
        (lambda: Stage(_method("sds-"), scale=1.5), r"scale must lie in \(0, 1\]"),
        (lambda: Stage("sds-"), "configured method"),
    ],
)
def test_bad_stages_are_refused_by_name(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_a_start_of_another_shape_is_refused(tiny_model, images):
    with pytest.raises(ValueError, match="start must have the images' shape"):
        _protect(_method("sds-"), tiny_model, images, start=images[:1])
