"""Command line: ``python -m training.mini_flow STAGE`` (run from the repository root).

``all`` runs every stage in order; each stage skips work that is already done and training
resumes from its last checkpoint, so the same command continues an interrupted run.
"""

from training.mini.__main__ import run_stages

from .recipe import STAGES, run


def main() -> None:
    """Run the stage named on the command line, or every stage in order for ``all``."""
    run_stages("python -m training.mini_flow", __doc__, STAGES, run)


if __name__ == "__main__":
    main()
