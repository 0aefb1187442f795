"""``python -m mimicshield ...`` (and ``accelerate launch -m mimicshield ...``): the CLI."""

import sys

from .cli.main import main

sys.exit(main())
