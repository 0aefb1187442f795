"""Evaluation: protect × purify × mimic × measure, results table and an HTML report (DESIGN §4)."""

from __future__ import annotations

from .grid import NOISE_CONTROL, Evaluation, EvaluationPlan, plan_record
from .report import write_report
from .results import KEY_COLUMNS, ResultsStore
from .scenarios import SCENARIOS, InpaintScenario, SDEditScenario, TextualInversionScenario

__all__ = [
    "KEY_COLUMNS",
    "NOISE_CONTROL",
    "SCENARIOS",
    "Evaluation",
    "EvaluationPlan",
    "InpaintScenario",
    "ResultsStore",
    "SDEditScenario",
    "TextualInversionScenario",
    "plan_record",
    "write_report",
]
