"""PGD's update rules and step-size schedules, against independent computations."""

from __future__ import annotations

import pytest
import torch

from mimicshield import METHODS, Budget, protect
from mimicshield.pgd import pgd
from mimicshield.updates import (
    STEP_SCHEDULES,
    UPDATE_RULES,
    AdamUpdate,
    ConstantStep,
    CosineDecay,
    LinearDecay,
    MomentumUpdate,
    SignUpdate,
)


def _gradients(count=6, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 3, 5, 4, generator=generator) * 10**k for k in range(-3, count - 3)]


def test_momentum_is_mi_fgsm_with_the_l1_norm_of_the_paper():
    """Dong et al. Eq. 6: g ← μ·g + ∇/‖∇‖₁ with the per-image L1 *sum*; direction sign(g)."""
    rule, state, accumulated = MomentumUpdate(decay=0.8), None, torch.zeros(2, 3, 5, 4)
    for step, gradient in enumerate(_gradients(), start=1):
        direction, state = rule.step(gradient, state, step)
        l1 = gradient.abs().sum(dim=(1, 2, 3), keepdim=True)
        accumulated = 0.8 * accumulated + gradient / l1
        assert torch.equal(direction, accumulated.sign())


def test_momentum_without_memory_is_the_sign_step():
    rule = MomentumUpdate(decay=0.0)
    for step, gradient in enumerate(_gradients(), start=1):
        assert torch.equal(rule.step(gradient, None, step)[0], gradient.sign())


def test_adam_direction_is_torch_adams_step_on_the_normalised_gradient():
    """Independent: torch.optim.Adam with lr 1 moves a parameter by −m̂/(√v̂ + ε)."""
    rule, state = AdamUpdate(beta1=0.8, beta2=0.95, epsilon=1e-6), None
    parameter = torch.zeros(2, 3, 5, 4, requires_grad=True)
    optimiser = torch.optim.Adam([parameter], lr=1.0, betas=(0.8, 0.95), eps=1e-6)
    for step, gradient in enumerate(_gradients(), start=1):
        direction, state = rule.step(gradient, state, step)
        normalised = gradient / gradient.abs().mean(dim=(1, 2, 3), keepdim=True)
        before = parameter.detach().clone()
        parameter.grad = -normalised  # Adam descends; our direction ascends
        optimiser.step()
        torch.testing.assert_close(direction, parameter.detach() - before)


def test_adam_ignores_the_loss_scale_and_starts_as_the_sign():
    rule = AdamUpdate()
    gradient = _gradients()[0]
    first, _ = rule.step(gradient, None, 1)
    scaled, _ = rule.step(gradient * 1e6, None, 1)
    torch.testing.assert_close(first, scaled)
    torch.testing.assert_close(first, gradient.sign(), atol=1e-4, rtol=0)


@pytest.mark.parametrize("schedule", [LinearDecay(0.25), CosineDecay(0.25)])
def test_decays_run_from_the_full_step_to_the_final_fraction(schedule):
    factors = [schedule.factor(step, 9) for step in range(1, 10)]
    assert factors[0] == 1.0 and factors[-1] == pytest.approx(0.25)
    assert all(a > b for a, b in zip(factors, factors[1:], strict=False))
    assert schedule.factor(1, 1) == 1.0  # a one-step run takes the full step
    assert ConstantStep().factor(5, 9) == 1.0


def test_linear_and_cosine_decay_have_their_shapes():
    linear, cosine = LinearDecay(0.0), CosineDecay(0.0)
    assert linear.factor(3, 5) == pytest.approx(0.5) and cosine.factor(3, 5) == pytest.approx(0.5)
    assert linear.factor(2, 5) == pytest.approx(0.75)
    assert cosine.factor(2, 5) == pytest.approx(0.5 * (1 + 2**-0.5))  # cos(π/4)


@pytest.mark.parametrize("update", [SignUpdate(), MomentumUpdate(), AdamUpdate()])
@pytest.mark.parametrize("schedule", [ConstantStep(), LinearDecay(0.2), CosineDecay(0.5)])
def test_a_steady_push_moves_by_the_sum_of_the_step_sizes(update, schedule):
    """Brightening a mid-gray image: every rule goes up by Σ α·factor until the ball's edge."""
    images = torch.full((1, 3, 4, 4), 0.5)
    budget = Budget.from_255(eps=50, step_size=4, steps=6)
    moved = pgd(lambda x: x.mean(), images, budget, update=update, schedule=schedule)
    expected = sum(4 / 255 * schedule.factor(step, 6) for step in range(1, 7))
    torch.testing.assert_close(moved - images, torch.full_like(images, expected), atol=1e-5, rtol=0)


@pytest.mark.parametrize("update", [MomentumUpdate(), AdamUpdate()])
def test_other_rules_keep_the_budget_mask_and_input(update, tiny_model, images):
    method = METHODS["sds-"](
        budget=Budget.from_255(8, 3, 4), update=update, step_schedule=CosineDecay(0.2)
    )
    mask = torch.zeros(1, 1, *images.shape[-2:])
    mask[..., 2:10, 3:12] = 1
    before = images.clone()
    first = protect(
        images, method, tiny_model, mask=mask, generator=torch.Generator().manual_seed(1)
    )
    second = protect(
        images, method, tiny_model, mask=mask, generator=torch.Generator().manual_seed(1)
    )
    assert torch.equal(images, before) and torch.equal(first, second)
    assert (first - images).abs().max() <= 8 / 255 + 1e-6
    outside = mask.expand_as(images) == 0
    assert torch.equal(first[outside], images[outside])
    sign = protect(images, METHODS["sds-"](budget=Budget.from_255(8, 3, 4)), tiny_model,
                   mask=mask, generator=torch.Generator().manual_seed(1))  # fmt: skip
    assert not torch.equal(first, sign)


def test_the_record_names_the_rule_and_schedule():
    record = METHODS["sds-"](update=MomentumUpdate(0.5), step_schedule=LinearDecay(0.1)).as_record()
    assert record["update"] == {"rule": "momentum", "decay": 0.5}
    assert record["step_schedule"] == {"schedule": "linear", "final": 0.1}
    default = METHODS["sds-"]().as_record()
    assert default["update"] == {"rule": "sign"}
    assert default["step_schedule"] == {"schedule": "constant"}
    assert set(UPDATE_RULES) == {"sign", "momentum", "adam"}
    assert set(STEP_SCHEDULES) == {"constant", "linear", "cosine"}


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: MomentumUpdate(decay=1.5), "momentum decay must lie in"),
        (lambda: AdamUpdate(beta1=1.0), "beta1 must lie in"),
        (lambda: AdamUpdate(epsilon=0), "epsilon must be > 0"),
        (lambda: LinearDecay(final=-0.1), "final step's fraction"),
        (lambda: CosineDecay(final=2), "final step's fraction"),
    ],
)
def test_bad_settings_are_refused_by_name(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_start_and_random_start_together_are_refused():
    images = torch.full((1, 3, 4, 4), 0.5)
    with pytest.raises(ValueError, match="not both"):
        pgd(lambda x: x.mean(), images, Budget(), random_start=True, start=images * 0)
