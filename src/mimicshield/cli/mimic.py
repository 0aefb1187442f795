"""``mimicshield mimic {sdedit,inpaint,textual-inversion} INPUT... --output DIR``: simulate mimicry.

Runs one mimicry scenario on image files and writes the results as PNG files beside nothing the
user gave (the output folder may not hold inputs). A file that cannot be read or processed is
reported and the others go on; the exit code is 1 if any failed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm import tqdm

from .. import LatentDiffusion, ModelUnavailableError
from ..batch import InputError, collect_inputs, plan_outputs
from ..io import ImageFileError, LoadedImage, read_image, read_mask, write_image
from .options import EXIT_FAILED, EXIT_OK, EXIT_USAGE, add_model_options, fail, model_notes

#: Names of the generated masks (``mimicry.MASKS``; listed here so --help needs no pipelines).
MASK_NAMES = ("border", "center", "strokes")
#: Per-file work: image (1, 3, H, W), seed, model → {output name suffix: (1, 3, H, W) result}.
FileWork = Callable[[torch.Tensor, int, LatentDiffusion], dict[str, torch.Tensor]]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "mimic",
        help="simulate mimicry (SDEdit, inpainting, textual inversion) on images",
        description="Run a mimicry scenario on images, protected or not, to see what an imitator "
        "would get. Outputs are PNG files in --output; inputs are never written to.",
    )
    scenarios = parser.add_subparsers(dest="scenario", required=True, metavar="SCENARIO")
    _register_sdedit(scenarios)
    _register_inpaint(scenarios)
    _register_textual_inversion(scenarios)


def _common_options(parser: argparse.ArgumentParser, *, prompt: str, steps: int, guidance: float):
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders")
    parser.add_argument("-o", "--output", required=True, type=Path, help="folder for the results")
    parser.add_argument("--prompt", default=prompt, help=f"text condition (default: {prompt!r})")
    parser.add_argument(
        "--steps", type=int, default=steps, help=f"DDIM steps of the sampler (default: {steps})"
    )
    parser.add_argument(
        "--guidance",
        type=float,
        default=guidance,
        help=f"classifier-free guidance scale; 1 means none (default: {guidance:g})",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    add_model_options(parser)


def _register_sdedit(scenarios: argparse._SubParsersAction) -> None:
    parser = scenarios.add_parser(
        "sdedit",
        help="noise part of the way and denoise (img2img)",
        description="SDEdit: noise each image's latent to a fraction (strength) of the DDIM "
        "schedule and denoise it. Writes STEM-sdedit-STRENGTH.png (or STEM-onestep-STRENGTH.png).",
    )
    _common_options(parser, prompt="a photo", steps=100, guidance=1.0)
    parser.add_argument(
        "--strength",
        type=_strengths,
        default=(0.3,),
        help="strength in (0, 1], or several separated by commas; the reference grid is "
        "0.01,0.05,0.1,0.2,0.3,0.5 (default: 0.3)",
    )
    parser.add_argument(
        "--one-step",
        action="store_true",
        help="one-step x̂₀ reconstruction at t = strength·T instead of multi-step DDIM",
    )
    parser.set_defaults(run=_run_sdedit)


def _register_inpaint(scenarios: argparse._SubParsersAction) -> None:
    parser = scenarios.add_parser(
        "inpaint",
        help="repaint a masked region, keep the rest",
        description="Inpainting: with an SD inpainting model as --model (9-channel UNet) or, for a "
        "base model, by latent blending. Pixels outside the mask are kept exactly. Writes "
        "STEM-inpaint.png.",
    )
    _common_options(parser, prompt="a photo", steps=100, guidance=7.5)
    parser.add_argument(
        "--mask",
        default="border",
        help="mask image (white = repaint, same size as the images) or a generated mask: "
        f"{', '.join(MASK_NAMES)} (default: border, which keeps the middle and repaints around it)",
    )
    parser.set_defaults(run=_run_inpaint)


def _register_textual_inversion(scenarios: argparse._SubParsersAction) -> None:
    parser = scenarios.add_parser(
        "textual-inversion",
        help="learn a word for the images, then generate with it",
        description="Textual inversion: learn one token embedding from all readable INPUT images "
        "(one size), then generate --num-images images with --prompt. Writes "
        "textual-inversion-NNN.png and learned-embedding.safetensors.",
    )
    _common_options(parser, prompt="a painting in the style of {}", steps=50, guidance=7.5)
    parser.add_argument(
        "--train-steps", type=int, default=3000, help="optimisation steps (default: 3000)"
    )
    parser.add_argument(
        "--learning-rate", type=float, default=5e-3, help="AdamW learning rate (default: 0.005)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=1, help="images per training step (default: 1)"
    )
    parser.add_argument(
        "--initializer",
        default="painting",
        help="word the embedding starts from (default: painting)",
    )
    parser.add_argument(
        "--placeholder",
        default="<mimicshield-concept>",
        help="the new token, written as {} in --prompt (default: <mimicshield-concept>)",
    )
    parser.add_argument(
        "--templates",
        default="style",
        choices=("style", "object"),
        help="training prompts: 'a painting in the style of {}'… or 'a photo of a {}'… "
        "(default: style)",
    )
    parser.add_argument("--num-images", type=int, default=4, help="images to generate (default: 4)")
    parser.set_defaults(run=_run_textual_inversion)


# ------------------------------------------------------------------------------------ scenarios


def _run_sdedit(args: argparse.Namespace) -> int:
    # The pipelines are imported only when a scenario runs: `mimicshield --help` stays fast.
    from ..mimicry import one_step_reconstruction, sdedit

    if args.steps < 1:
        return fail(f"--steps must be at least 1, got {args.steps}", EXIT_USAGE)

    def work(image: torch.Tensor, seed: int, model: LatentDiffusion) -> dict[str, torch.Tensor]:
        results = {}
        for strength in args.strength:
            # A fresh generator per strength: each result is what a run of that strength alone
            # would give.
            generator = torch.Generator().manual_seed(seed)
            if args.one_step:
                edited = one_step_reconstruction(
                    model, image, prompt=args.prompt, strength=strength, generator=generator
                )
                results[f"onestep-{strength:g}"] = edited
            else:
                edited = sdedit(
                    model,
                    image,
                    prompt=args.prompt,
                    strength=strength,
                    num_inference_steps=args.steps,
                    guidance_scale=args.guidance,
                    generator=generator,
                )
                results[f"sdedit-{strength:g}"] = edited
        return results

    return _run_per_file(args, work)


def _run_inpaint(args: argparse.Namespace) -> int:
    from ..mimicry import MASKS, inpaint

    if args.steps < 1:
        return fail(f"--steps must be at least 1, got {args.steps}", EXIT_USAGE)
    file_mask = None
    if args.mask not in MASKS:
        try:
            file_mask = read_mask(args.mask)
        except ImageFileError as error:
            return fail(
                f"--mask must be one of {', '.join(MASKS)} or a readable image: {error}",
                EXIT_USAGE,
            )

    def work(image: torch.Tensor, seed: int, model: LatentDiffusion) -> dict[str, torch.Tensor]:
        generator = torch.Generator().manual_seed(seed)
        height, width = image.shape[-2:]
        # A mask of the wrong size raises ValueError naming both sizes: reported for this file.
        mask = (
            file_mask
            if file_mask is not None
            else MASKS[args.mask](height, width, generator=generator)
        )
        repainted = inpaint(
            model,
            image,
            mask,
            prompt=args.prompt,
            num_inference_steps=args.steps,
            guidance_scale=args.guidance,
            generator=generator,
        )
        return {"inpaint": repainted}

    return _run_per_file(args, work)


def _run_textual_inversion(args: argparse.Namespace) -> int:
    from ..mimicry import (
        OBJECT_TEMPLATES,
        STYLE_TEMPLATES,
        TextualInversionConfig,
        generate,
        learn_token,
    )

    # 1. Everything that can be checked without a model.
    templates = {"style": STYLE_TEMPLATES, "object": OBJECT_TEMPLATES}[args.templates]
    try:
        config = TextualInversionConfig(
            placeholder=args.placeholder,
            initializer=args.initializer,
            steps=args.train_steps,
            learning_rate=args.learning_rate,
            batch_size=args.batch_size,
            templates=templates,
        )
        if "{}" not in args.prompt:
            raise ValueError(
                f"--prompt must contain {{}} for the learned token, got {args.prompt!r}"
            )
        for value, name in ((args.steps, "--steps"), (args.num_images, "--num-images")):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        inputs = collect_inputs(args.inputs)
        plan_outputs(inputs, args.output, "png")
    except (InputError, ValueError) as error:
        return fail(str(error), EXIT_USAGE)

    # 2. The training set: every readable image, all of one size.
    loaded, failed = _read_all(inputs)
    if not loaded:
        return fail("no readable input image to learn from", EXIT_FAILED)
    sizes = {item.size for item in loaded}
    if len(sizes) > 1:
        listing = "; ".join(
            f"{w}×{h}: {', '.join(i.path.name for i in loaded if i.size == (h, w))}"
            for h, w in sorted(sizes)
        )
        return fail(f"textual inversion needs images of one size, got {listing}", EXIT_USAGE)
    images = torch.stack([item.pixels for item in loaded])

    # 3. The model, learning with a progress bar, then generation.
    model = _load_model(args)
    if model is None:
        return EXIT_FAILED
    generator = torch.Generator().manual_seed(args.seed)
    with tqdm(total=config.steps, unit="step", desc="textual inversion") as bar:

        def on_step(step: int, steps: int, loss: float) -> None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}")

        token = learn_token(model, images, config, generator=generator, callback=on_step)
    generated = generate(
        model,
        token,
        prompt=args.prompt,
        num_images=args.num_images,
        height=images.shape[-2],
        width=images.shape[-1],
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
        generator=generator,
    ).cpu()

    # 4. Write the images and the embedding.
    args.output.mkdir(parents=True, exist_ok=True)
    token.save(args.output / "learned-embedding.safetensors")
    for index, pixels in enumerate(generated):
        path = args.output / f"textual-inversion-{index:03d}.png"
        # Generated images carry no metadata of any input; the source only names the first.
        plain = LoadedImage(loaded[0].path, pixels, None, None, None, "RGB")
        try:
            write_image(path, _levels(pixels), plain)
        except ImageFileError as error:
            failed.append(str(error))
            print(f"error: {error}", file=sys.stderr)
            continue
        print(f"  {path}")
    print(
        f"learned {config.placeholder!r} from {len(loaded)} images in {config.steps} steps "
        f"(final loss {token.losses[-1]:.4f}); wrote {args.num_images} images to {args.output}"
    )
    return EXIT_FAILED if failed else EXIT_OK


# ------------------------------------------------------------------------------------- helpers


def _run_per_file(args: argparse.Namespace, work: FileWork) -> int:
    """Read each input, run ``work`` on it, write one PNG per result; report, don't stop."""
    try:
        inputs = collect_inputs(args.inputs)
        outputs = plan_outputs(inputs, args.output, "png")
    except InputError as error:
        return fail(str(error), EXIT_USAGE)
    model = _load_model(args)
    if model is None:
        return EXIT_FAILED
    args.output.mkdir(parents=True, exist_ok=True)

    failures = 0
    for path in inputs:
        try:
            item = read_image(path)
            results = work(item.pixels.unsqueeze(0), args.seed, model)
            for suffix, pixels in results.items():
                target = outputs[path].with_name(f"{outputs[path].stem}-{suffix}.png")
                write_image(target, _levels(pixels[0].cpu()), item)
                print(f"  {target}")
        except ImageFileError as error:  # its message names the file
            failures += 1
            print(f"error: {error}", file=sys.stderr)
        except ValueError as error:  # the library's input checks (e.g. mask size)
            failures += 1
            print(f"error: {path}: {error}", file=sys.stderr)
    print(f"processed {len(inputs) - failures} of {len(inputs)} images into {args.output}")
    return EXIT_FAILED if failures else EXIT_OK


def _strengths(text: str) -> tuple[float, ...]:
    """'0.1,0.3' → (0.1, 0.3), each in (0, 1] (argparse reports the ValueError as a usage error)."""
    values = tuple(float(part) for part in text.split(","))
    for value in values:
        if not 0 < value <= 1:
            raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value:g}")
    return values


def _read_all(inputs: list[Path]) -> tuple[list[LoadedImage], list[str]]:
    loaded, failed = [], []
    for path in inputs:
        try:
            loaded.append(read_image(path))
        except ImageFileError as error:
            failed.append(str(error))
            print(f"error: {error}", file=sys.stderr)
    return loaded, failed


def _load_model(args: argparse.Namespace) -> LatentDiffusion | None:
    try:
        model = LatentDiffusion.from_pretrained(args.model, device=args.device, dtype=args.dtype)
    except ModelUnavailableError as error:
        fail(str(error), EXIT_FAILED)
        return None
    for note in model_notes(model):
        print(f"note: {note}", file=sys.stderr)
    return model


def _levels(pixels: torch.Tensor) -> torch.Tensor:
    """(3, H, W) in [0, 1] → 8-bit levels (3, H, W) uint8, rounded to nearest."""
    return (pixels.float() * 255).round().clamp(0, 255).to(torch.uint8)
