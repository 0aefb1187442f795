"""Command line: ``python -m training.mini_flow STAGE`` (run from the repository root).

``all`` runs every stage in order; each stage skips work that is already done and training
resumes from its last checkpoint, so the same command continues an interrupted run.
"""

import argparse
import logging

import torch

from .recipe import STAGES, run


def main() -> None:
    """Run the stage named on the command line, or every stage in order for ``all``."""
    parser = argparse.ArgumentParser(prog="python -m training.mini_flow", description=__doc__)
    parser.add_argument("stage", choices=("all", *STAGES))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    # The machine has two cores shared with other work; one thread keeps training from starving it.
    torch.set_num_threads(1)
    for stage in STAGES if args.stage == "all" else (args.stage,):
        logging.info("stage %s", stage)
        run(stage)


if __name__ == "__main__":
    main()
