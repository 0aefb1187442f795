r"""Training recipe for amortised protectors, shipped as ``mimicshield/weights/protector-mini``.

A protector is a small ``PerturbationNetwork`` trained against one surrogate model to output,
in one forward pass, a perturbation that raises the same protection objective PGD raises per
image (``train.py``). Against the miniature it trains on a CPU in about half an hour; against a
real Stable Diffusion the same command runs on GPUs under ``accelerate launch``:

    python -m training.protector --model mini --output src/mimicshield/weights/protector-mini
    accelerate launch -m training.protector --model /path/to/sd15 --images /path/to/photos \\
        --resolution 512 --batch 8 --mixed-precision bf16 --run training/runs/protector-sd15

Modules: ``data`` (the images: the miniature's training crops or a folder), ``train`` (the
objective, the resumable loop, the export). The run folder holds ``settings.json`` and the
checkpoint ``last.pt``; re-running the same command resumes bit for bit.
"""
