"""Collection rules for the whole repository (tests/ and the doctests under src/).

The web page's module imports Gradio, an optional extra (``mimicshield[web]``): without it the
module's doctests are not collected, and tests/test_web.py skips its browser checks by itself.
"""

import importlib.util

collect_ignore = [] if importlib.util.find_spec("gradio") else ["src/mimicshield/web/app.py"]
