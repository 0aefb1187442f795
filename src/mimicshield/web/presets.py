"""Strength presets: the words an artist chooses from, and the budget each one means."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Preset:
    """A named budget. Distances in 0–255 units of the 8-bit image (DESIGN §2).

    Attributes:
        eps_255: L∞ budget: no channel of any pixel moves by more than this many levels.
        steps: PGD steps.
        step_size_255: PGD step.
        hint: what the choice trades, in a few words.
    """

    eps_255: float
    steps: int
    step_size_255: float = 1
    hint: str = ""

    def label(self, name: str) -> str:
        """``name`` with its budget, as the page lists it: "standard — ε 16/255, 100 steps"."""
        return f"{name} — ε {self.eps_255:g}/255, {self.steps} steps ({self.hint})"


#: In the order the page lists them. "standard" is the paper's reference budget.
PRESETS: dict[str, Preset] = {
    "light": Preset(eps_255=8, steps=50, hint="hardly visible, weaker"),
    "standard": Preset(eps_255=16, steps=100, hint="the paper's setting"),
    "strong": Preset(eps_255=24, steps=150, hint="more visible, stronger"),
}
DEFAULT_PRESET = "standard"
