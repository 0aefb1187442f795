"""Evaluation: protect × purify × mimic × measure, results table and an HTML report (DESIGN §4)."""

from __future__ import annotations

from .grid import NOISE_CONTROL, Evaluation, EvaluationPlan, plan_record
from .report import write_report
from .results import KEY_COLUMNS, ResultsStore

__all__ = [
    "KEY_COLUMNS",
    "NOISE_CONTROL",
    "Evaluation",
    "EvaluationPlan",
    "ResultsStore",
    "plan_record",
    "write_report",
]
