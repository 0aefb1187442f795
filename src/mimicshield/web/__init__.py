"""The web page: ``mimicshield serve`` (needs the optional extra ``mimicshield[web]``).

- ``presets``: the plain-language strength choices and their budgets in 0–255 units;
- ``jobs``: uploads, per-session temporary folders, cancellation and the download zip;
- ``views``: what the page shows beside the files (amplified perturbation, mimicry preview);
- ``app``: the Gradio page and the server, built only when ``serve`` is called.

Importing this package imports neither Gradio nor a model: only ``app`` imports Gradio, and
nothing here imports ``app``.
"""
