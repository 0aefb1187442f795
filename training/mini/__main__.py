"""Command line: ``python -m training.mini STAGE`` (run from the repository root).

``all`` runs every stage in order; each stage skips work that is already done and training
resumes from its last checkpoint, so the same command continues an interrupted run.
"""

import argparse
import logging
from collections.abc import Callable

import torch

from .recipe import STAGES, run


def run_stages(prog: str, description: str, stages: dict, run_stage: Callable[[str], None]) -> None:
    """Parse ``STAGE`` (a key of ``stages``, or ``all``) and run it, or every stage in order.

    Shared by the recipes that have this command line (``training.mini``, ``training.mini_flow``).
    """
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("stage", choices=("all", *stages))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    # The machine has two cores shared with other work; one thread keeps training from starving it.
    torch.set_num_threads(1)
    for stage in stages if args.stage == "all" else (args.stage,):
        logging.info("stage %s", stage)
        run_stage(stage)


def main() -> None:
    """Run the stage named on the command line, or every stage in order for ``all``."""
    run_stages("python -m training.mini", __doc__, STAGES, run)


if __name__ == "__main__":
    main()
