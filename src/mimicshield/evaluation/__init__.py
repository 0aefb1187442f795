"""Evaluation: protect × purify × mimic × measure, results table and an HTML report (DESIGN §4)."""

from __future__ import annotations

from .grid import NOISE_CONTROL, Evaluation, EvaluationPlan, plan_record
from .human_answers import HumanResults, answer_files, read_answers
from .human_answers import fold as fold_answers
from .human_study import StudyError, StudyOptions, read_study, write_study
from .report import write_report
from .results import KEY_COLUMNS, ResultsStore

__all__ = [
    "KEY_COLUMNS",
    "NOISE_CONTROL",
    "Evaluation",
    "EvaluationPlan",
    "HumanResults",
    "ResultsStore",
    "StudyError",
    "StudyOptions",
    "answer_files",
    "fold_answers",
    "plan_record",
    "read_answers",
    "read_study",
    "write_report",
    "write_study",
]
