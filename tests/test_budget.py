import pytest
import torch

from mimicshield import Budget, BudgetError
from mimicshield.budget import linf_255, quantise_within_budget


def test_from_255_converts_units():
    budget = Budget.from_255(eps=16, step_size=1, steps=100)
    assert budget.eps == pytest.approx(16 / 255)
    assert budget.step_size == pytest.approx(1 / 255)
    assert budget.as_record() == {"eps_255": 16.0, "step_size_255": 1.0, "steps": 100}


@pytest.mark.parametrize(
    "kwargs, named",
    [
        ({"eps": -1}, "eps"),
        ({"eps": 256}, "eps"),
        ({"step_size": -0.5}, "step size"),
        ({"steps": -1}, "steps"),
    ],
)
def test_out_of_range_values_are_refused_with_their_name(kwargs, named):
    with pytest.raises(BudgetError, match=named):
        Budget.from_255(**kwargs)


def test_non_integer_steps_are_refused():
    with pytest.raises(BudgetError, match="steps"):
        Budget(steps=2.5)


def test_project_clips_into_the_ball():
    budget = Budget.from_255(eps=8)
    delta = torch.tensor([-1.0, -0.01, 0.0, 0.02, 1.0])
    projected = budget.project(delta)
    assert projected.abs().max() <= budget.eps
    assert projected[2] == 0 and projected[1] == -0.01


def test_quantise_keeps_the_budget_exactly_on_8_bit_originals():
    generator = torch.Generator().manual_seed(0)
    original = torch.randint(0, 256, (3, 32, 32), generator=generator).float() / 255
    eps = 4 / 255
    # A perturbation sitting just beyond the ball's edge: plain rounding would overshoot.
    signs = torch.sign(torch.randn(3, 32, 32, generator=generator))
    protected = (original + (eps + 0.49 / 255) * signs).clamp(0, 1)
    levels = quantise_within_budget(protected, original, eps)
    assert levels.dtype == torch.uint8
    assert linf_255(levels.float() / 255, original) <= 4
    assert (levels.float() - protected * 255).abs().max() <= 1.0


def test_quantise_with_zero_budget_returns_the_original_levels():
    original = torch.randint(0, 256, (3, 8, 8)).float() / 255
    levels = quantise_within_budget(original + 0.3 / 255, original, 0.0)
    assert torch.equal(levels.float() / 255, original)


def test_quantise_of_a_finer_than_8_bit_original_takes_the_nearest_level():
    original = torch.full((1, 2, 2), 100.4 / 255)
    levels = quantise_within_budget(original, original, 0.1 / 255)
    assert torch.equal(levels, torch.full((1, 2, 2), 100, dtype=torch.uint8))


def test_quantise_to_16_bit_levels_keeps_the_same_255_unit_budget():
    generator = torch.Generator().manual_seed(0)
    original = torch.randint(0, 65536, (3, 16, 16), generator=generator).double() / 65535
    eps = 4 / 255  # 1028 of 65535 levels
    signs = torch.sign(torch.randn(3, 16, 16, generator=generator, dtype=torch.float64))
    protected = (original + (eps + 0.4 / 65535) * signs).clamp(0, 1).float()
    levels = quantise_within_budget(protected, original.float(), eps, levels=65535)
    assert levels.dtype == torch.int32 and int(levels.min()) >= 0 and int(levels.max()) <= 65535
    assert linf_255(levels.double() / 65535, original) <= 4
    assert (levels.double() - protected.double() * 65535).abs().max() <= 1.0
    with pytest.raises(ValueError, match="levels must be one of"):
        quantise_within_budget(protected, original, eps, levels=1023)
