"""``mimicshield mimic SCENARIO INPUT... --output DIR``: simulate mimicry on image files.

SCENARIO: sdedit, inpaint, textual-inversion, lora or dreambooth.

Runs the library's mimicry scenarios (the same objects ``mimicshield evaluate`` runs) on image
files and writes the results as PNG files into the output folder, which may not hold inputs. A
file that cannot be read or processed is reported and the others go on; the exit code is 1 if any
failed.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from ..imagefiles import ImageFileError, LoadedImage, read_image, read_mask, write_png
from ..mimicry import (
    DREAMBOOTH_PRESETS,
    LORA_PRESETS,
    LORA_WEIGHTS_FILE,
    MASKS,
    OBJECT_TEMPLATES,
    STYLE_TEMPLATES,
    TEXTUAL_INVERSION_PRESETS,
    InpaintScenario,
    Scenario,
    SDEditScenario,
    dreambooth,
    lora,
    textual_inversion,
    token_encoders,
)
from ..runtime import collect_inputs, plan_outputs
from .options import EXIT_FAILED, EXIT_OK, CommandError, add_model_options, load_model, number_list


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``mimic`` subcommand and its options to the ``mimicshield`` parser."""
    parser = subparsers.add_parser(
        "mimic",
        help="simulate mimicry (SDEdit, inpainting, textual inversion, LoRA, DreamBooth) on images",
        description="Run a mimicry scenario on images, protected or not, to see what an imitator "
        "would get. Outputs are PNG files in --output; inputs are never written to.",
    )
    scenarios = parser.add_subparsers(dest="scenario", required=True, metavar="SCENARIO")
    _register_sdedit(scenarios)
    _register_inpaint(scenarios)
    _register_textual_inversion(scenarios)
    _register_lora(scenarios)
    _register_dreambooth(scenarios)


def _common_options(
    parser: argparse.ArgumentParser, *, prompt: str | None, steps: int, guidance: float
):
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders")
    parser.add_argument("-o", "--output", required=True, type=Path, help="folder for the results")
    default = "the instance prompt" if prompt is None else repr(prompt)
    parser.add_argument("--prompt", default=prompt, help=f"text condition (default: {default})")
    parser.add_argument(
        "--num-inference-steps",
        type=int,
        default=steps,
        help=f"DDIM steps of the sampler (default: {steps})",
    )
    parser.add_argument(
        "--guidance-scale",
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
        "schedule and denoise it. Writes STEM-sdedit@STRENGTH.png (or STEM-onestep@STRENGTH.png), "
        "the variant names of `mimicshield evaluate`.",
    )
    _common_options(parser, prompt="a photo", steps=100, guidance=1.0)
    parser.add_argument(
        "--strength",
        default="0.3",
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
        "STEM-inpaint-MASK.png (MASK: the generated mask's name, or 'file').",
    )
    _common_options(parser, prompt="a photo", steps=100, guidance=7.5)
    parser.add_argument(
        "--mask",
        default="border",
        help="mask image (white = repaint, same size as the images) or a generated mask: "
        f"{', '.join(MASKS)} (default: border, which keeps the middle and repaints around it)",
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
    _preset_options(parser, TEXTUAL_INVERSION_PRESETS, example="textual_inversion example's")
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


def _preset_options(parser: argparse.ArgumentParser, presets: dict, *, example: str) -> None:
    """A ``--preset`` of training settings, and the options that override it."""
    quick, gpu = presets["quick"], presets["gpu"]
    parser.add_argument(
        "--preset",
        default="quick",
        choices=tuple(presets),
        help=f"training settings: 'quick' (CPU, small models: {quick.steps} steps) or 'gpu' "
        f"(the diffusers {example} values, for real models: {gpu.steps} steps); the options "
        "below override it (default: quick)",
    )
    parser.add_argument(
        "--train-steps", type=int, help="optimisation steps (default: the preset's)"
    )
    parser.add_argument(
        "--learning-rate", type=float, help="AdamW learning rate (default: the preset's)"
    )
    parser.add_argument(
        "--batch-size", type=int, help="images per training step (default: the preset's)"
    )


def _fine_tuning_options(parser: argparse.ArgumentParser, presets: dict) -> None:
    """Options of LoRA and DreamBooth: a preset, and the settings that override it."""
    _common_options(parser, prompt=None, steps=50, guidance=7.5)
    _preset_options(parser, presets, example="training examples'")
    parser.add_argument(
        "--instance-prompt",
        help="prompt of every training image (default: 'a painting in the style of sks')",
    )
    parser.add_argument("--num-images", type=int, default=4, help="images to generate (default: 4)")


def _register_lora(scenarios: argparse._SubParsersAction) -> None:
    parser = scenarios.add_parser(
        "lora",
        help="fine-tune LoRA adapters on the images, then generate",
        description="LoRA: train low-rank adapters on the denoiser's attention projections from "
        "all readable INPUT images (one size) under one instance prompt, then generate "
        "--num-images images with --prompt (default: the instance prompt). Writes lora-NNN.png "
        f"and {LORA_WEIGHTS_FILE}, which the family pipeline's load_lora_weights reads.",
    )
    _fine_tuning_options(parser, LORA_PRESETS)
    parser.add_argument("--rank", type=int, help="adapter rank (default: the preset's, 4)")
    parser.set_defaults(run=_run_lora)


def _register_dreambooth(scenarios: argparse._SubParsersAction) -> None:
    parser = scenarios.add_parser(
        "dreambooth",
        help="fine-tune the whole denoiser on the images, then generate",
        description="DreamBooth: fine-tune a copy of the denoiser (UNet or transformer) on all "
        "readable INPUT images (one size) under one instance prompt, optionally with prior "
        "preservation, then generate --num-images images with --prompt (default: the instance "
        "prompt). Writes dreambooth-NNN.png; the denoiser (as large as the model's) only with "
        "--save-denoiser.",
    )
    _fine_tuning_options(parser, DREAMBOOTH_PRESETS)
    parser.add_argument("--class-prompt", help="prompt of the class images (default: 'a painting')")
    parser.add_argument(
        "--num-class-images",
        type=int,
        help="class images for prior preservation, 0 for none (default: the preset's: 0 quick, "
        "200 gpu)",
    )
    parser.add_argument(
        "--prior-loss-weight", type=float, help="weight of the class images' loss (default: 1)"
    )
    parser.add_argument(
        "--save-denoiser",
        "--save-unet",
        action="store_true",
        help="also write the fine-tuned denoiser to OUTPUT/unet or OUTPUT/transformer",
    )
    parser.set_defaults(run=_run_dreambooth)


# ------------------------------------------------------------------------------------ scenarios


def _run_sdedit(args: argparse.Namespace) -> int:
    scenario = _scenario(
        lambda: SDEditScenario(
            strengths=tuple(number_list(args.strength, "--strength")),
            num_inference_steps=args.num_inference_steps,
            guidance_scale=args.guidance_scale,
            one_step=args.one_step,
            multi_step=not args.one_step,
        )
    )
    return _run_per_file(args, scenario)


def _run_inpaint(args: argparse.Namespace) -> int:
    mask_image = None
    if args.mask not in MASKS:
        try:
            mask_image = read_mask(args.mask)
        except ImageFileError as error:
            raise CommandError(
                f"--mask must be one of {', '.join(MASKS)} or a readable image: {error}"
            ) from None
    scenario = _scenario(
        lambda: InpaintScenario(
            mask=args.mask if mask_image is None else "border",
            num_inference_steps=args.num_inference_steps,
            guidance_scale=args.guidance_scale,
            mask_image=mask_image,
        )
    )
    return _run_per_file(args, scenario)


def _run_textual_inversion(args: argparse.Namespace) -> int:
    # 1. Everything that can be checked without a model.
    templates = {"style": STYLE_TEMPLATES, "object": OBJECT_TEMPLATES}[args.templates]
    config = _scenario(
        lambda: _overridden(
            TEXTUAL_INVERSION_PRESETS[args.preset],
            placeholder=args.placeholder,
            initializer=args.initializer,
            steps=args.train_steps,
            learning_rate=args.learning_rate,
            batch_size=args.batch_size,
            templates=templates,
        )
    )
    if "{}" not in args.prompt:
        raise CommandError(f"--prompt must contain {{}} for the learned token, got {args.prompt!r}")
    _check_sampling(args)

    # 2. The training set: every readable image, all of one size.
    images, failed = _training_set(args, "textual inversion")

    # 3. The model (of a family with textual inversion); learning, then generation.
    model = load_model(args)
    _scenario(lambda: token_encoders(model))
    with _progress(config.steps, "textual inversion") as on_step:
        generated, token = textual_inversion(
            model,
            images,
            config=config,
            prompt=args.prompt,
            num_images=args.num_images,
            num_inference_steps=args.num_inference_steps,
            guidance_scale=args.guidance_scale,
            generator=torch.Generator().manual_seed(args.seed),
            callback=on_step,
        )

    # 4. Write the images and the embedding.
    args.output.mkdir(parents=True, exist_ok=True)
    token.save(args.output / "learned-embedding.safetensors")
    failed += _write_generated(args.output, "textual-inversion", generated)
    used = token.config
    print(
        f"learned {used.placeholder!r} from {len(images)} images in {len(token.losses)} steps "
        f"of {used.batch_size} at learning rate {used.learning_rate:g} (final loss "
        f"{token.losses[-1]:.4f}); wrote {args.num_images} images to {args.output}"
    )
    return EXIT_FAILED if failed else EXIT_OK


def _run_lora(args: argparse.Namespace) -> int:
    # 1. Everything that can be checked without a model.
    config = _scenario(
        lambda: _overridden(
            LORA_PRESETS[args.preset],
            steps=args.train_steps,
            learning_rate=args.learning_rate,
            batch_size=args.batch_size,
            instance_prompt=args.instance_prompt,
            rank=args.rank,
        )
    )
    _check_sampling(args)

    # 2. The training set; 3. training and sampling.
    images, failed = _training_set(args, "LoRA")
    model = load_model(args)
    with _progress(config.steps, "LoRA") as on_step:
        generated, weights = lora(
            model,
            images,
            config=config,
            prompt=args.prompt,
            num_images=args.num_images,
            num_inference_steps=args.num_inference_steps,
            guidance_scale=args.guidance_scale,
            generator=torch.Generator().manual_seed(args.seed),
            callback=on_step,
        )

    # 4. The images and the adapters.
    args.output.mkdir(parents=True, exist_ok=True)
    print(f"  {weights.save(args.output)}")
    failed += _write_generated(args.output, "lora", generated)
    print(
        f"trained rank-{config.rank} LoRA on {len(images)} images in {config.steps} steps "
        f"(final loss {weights.losses[-1]:.4f}); wrote {args.num_images} images to {args.output}"
    )
    return EXIT_FAILED if failed else EXIT_OK


def _run_dreambooth(args: argparse.Namespace) -> int:
    # 1. Everything that can be checked without a model.
    config = _scenario(
        lambda: _overridden(
            DREAMBOOTH_PRESETS[args.preset],
            steps=args.train_steps,
            learning_rate=args.learning_rate,
            batch_size=args.batch_size,
            instance_prompt=args.instance_prompt,
            class_prompt=args.class_prompt,
            num_class_images=args.num_class_images,
            prior_loss_weight=args.prior_loss_weight,
        )
    )
    _check_sampling(args)

    # 2. The training set; 3. training and sampling.
    images, failed = _training_set(args, "DreamBooth")
    model = load_model(args)
    with _progress(config.steps, "DreamBooth") as on_step:
        generated, tuned = dreambooth(
            model,
            images,
            config=config,
            prompt=args.prompt,
            num_images=args.num_images,
            num_inference_steps=args.num_inference_steps,
            guidance_scale=args.guidance_scale,
            generator=torch.Generator().manual_seed(args.seed),
            callback=on_step,
        )

    # 4. The images, and the denoiser only when asked for (it is as large as the model's).
    args.output.mkdir(parents=True, exist_ok=True)
    if args.save_denoiser:
        tuned.save(args.output / tuned.part)
        print(f"  {args.output / tuned.part}")
    failed += _write_generated(args.output, "dreambooth", generated)
    print(
        f"fine-tuned the {tuned.part} on {len(images)} images in {config.steps} steps "
        f"(final loss {tuned.losses[-1]:.4f}); wrote {args.num_images} images to {args.output}"
    )
    return EXIT_FAILED if failed else EXIT_OK


# ------------------------------------------------------------------------------------- helpers


def _scenario(build):
    """The scenario or configuration ``build()`` makes; its ValueError is a usage error."""
    try:
        return build()
    except ValueError as error:
        raise CommandError(str(error)) from None


def _run_per_file(args: argparse.Namespace, scenario: Scenario) -> int:
    """Run ``scenario`` on each input alone; write STEM-VARIANT.png per output; report, go on.

    Each file gets a generator seeded with ``--seed``, so its results do not depend on the other
    files of the run.
    """
    inputs = collect_inputs(args.inputs)
    outputs = plan_outputs(inputs, args.output, "png")
    model = load_model(args)
    args.output.mkdir(parents=True, exist_ok=True)

    failures = 0
    for path in inputs:
        try:
            item = read_image(path)
            results = scenario.run(
                model,
                item.pixels.unsqueeze(0),
                prompt=args.prompt,
                generator=torch.Generator().manual_seed(args.seed),
            )
            for variant, pixels in results.items():
                target = outputs[path].with_name(f"{outputs[path].stem}-{variant}.png")
                write_png(target, pixels[0])
                print(f"  {target}")
        except ImageFileError as error:  # its message names the file
            failures += 1
            print(f"error: {error}", file=sys.stderr)
        except (RuntimeError, ValueError) as error:  # input checks (mask size), out of memory
            failures += 1
            print(f"error: {path}: {error}", file=sys.stderr)
    print(f"processed {len(inputs) - failures} of {len(inputs)} images into {args.output}")
    return EXIT_FAILED if failures else EXIT_OK


def _overridden(preset, **settings):
    """The ``preset`` configuration with the options that were given (not None) replaced."""
    given = {name: value for name, value in settings.items() if value is not None}
    return dataclasses.replace(preset, **given)


def _check_sampling(args: argparse.Namespace) -> None:
    for value, name in (
        (args.num_inference_steps, "--num-inference-steps"),
        (args.num_images, "--num-images"),
    ):
        if value < 1:
            raise CommandError(f"{name} must be at least 1, got {value}")


def _training_set(args: argparse.Namespace, what: str) -> tuple[torch.Tensor, list[str]]:
    """(N, 3, H, W) of every readable input, which must share one size; the failures' messages."""
    inputs = collect_inputs(args.inputs)
    plan_outputs(inputs, args.output, "png")
    loaded, failed = _read_all(inputs)
    if not loaded:
        raise CommandError("no readable input image to learn from", EXIT_FAILED)
    sizes = {item.size for item in loaded}
    if len(sizes) > 1:
        listing = "; ".join(
            f"{w}×{h}: {', '.join(i.path.name for i in loaded if i.size == (h, w))}"
            for h, w in sorted(sizes)
        )
        raise CommandError(f"{what} needs images of one size, got {listing}")
    return torch.stack([item.pixels for item in loaded]), failed


@contextlib.contextmanager
def _progress(steps: int, what: str):
    """A progress bar over training steps; yields the training callback that advances it."""
    with tqdm(total=steps, unit="step", desc=what) as bar:

        def on_step(step: int, steps: int, loss: float) -> None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}")

        yield on_step


def _write_generated(folder: Path, stem: str, generated: torch.Tensor) -> list[str]:
    """Write (N, 3, H, W) as FOLDER/STEM-NNN.png; the messages of the files that failed."""
    failed = []
    for index, pixels in enumerate(generated):
        path = folder / f"{stem}-{index:03d}.png"
        try:
            write_png(path, pixels)
        except ImageFileError as error:
            failed.append(str(error))
            print(f"error: {error}", file=sys.stderr)
            continue
        print(f"  {path}")
    return failed


def _read_all(inputs: list[Path]) -> tuple[list[LoadedImage], list[str]]:
    loaded, failed = [], []
    for path in inputs:
        try:
            loaded.append(read_image(path))
        except ImageFileError as error:
            failed.append(str(error))
            print(f"error: {error}", file=sys.stderr)
    return loaded, failed
