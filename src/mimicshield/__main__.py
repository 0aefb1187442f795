"""``python -m mimicshield ...`` (and ``accelerate launch -m mimicshield ...``): the CLI."""

import sys

from .cli.main import main

if __name__ == "__main__":  # also under `accelerate launch -m`; not when merely imported
    sys.exit(main())
