"""``mimicshield evaluate IMAGES --output DIR``: the method × purifier × scenario grid + report."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from .. import Budget
from ..evaluation import Evaluation, EvaluationPlan, plan_record, write_report
from ..imagefiles import ImageFileError, read_image
from ..metrics import DEFAULT_CLIP_MODEL, load_metrics
from ..mimicry import (
    REFERENCE_STRENGTHS,
    SCENARIOS,
    InpaintScenario,
    SDEditScenario,
    TextualInversionScenario,
)
from ..purify import parse_purifier
from ..runtime.files import collect_inputs
from ..runtime.processes import Processes
from .options import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    CommandError,
    add_model_options,
    comma_list,
    load_model,
    model_notes,
    number_list,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``evaluate`` subcommand and its options to the ``mimicshield`` parser."""
    parser = subparsers.add_parser(
        "evaluate",
        help="protect, purify, simulate mimicry and measure; write results and a report",
        description="Run the grid method × purifier × scenario on IMAGES and write results.csv, "
        "results.json and report.html to --output. Re-running with the same settings resumes.",
    )
    parser.add_argument("inputs", nargs="+", metavar="IMAGES", help="image files or folders")
    parser.add_argument(
        "-o", "--output", required=True, type=Path, help="folder for results and report"
    )
    parser.add_argument(
        "--methods",
        default="sds-,advdm,photoguard,noise",
        help="comma list; 'noise' is random noise of the same budget (default: %(default)s)",
    )
    parser.add_argument(
        "--scenarios",
        default="sdedit",
        help=f"comma list of {', '.join(SCENARIOS)} (default: %(default)s)",
    )
    parser.add_argument(
        "--purify",
        default="none",
        help="comma list: none, jpegQ, resizeF, blurS, noiseS, diffpureT (default: %(default)s)",
    )
    parser.add_argument(
        "--metrics",
        default="psnr,ssim,lpips,clip,latent_shift,fd_clip",
        help="comma list (default: %(default)s); unavailable ones are skipped",
    )
    parser.add_argument(
        "--strengths",
        default=",".join(f"{s:g}" for s in REFERENCE_STRENGTHS),
        help="SDEdit strengths (default: %(default)s)",
    )
    parser.add_argument(
        "--num-inference-steps",
        type=int,
        default=100,
        help="DDIM steps of SDEdit and inpainting (default: 100)",
    )
    parser.add_argument(
        "--no-one-step", action="store_true", help="skip the one-step x̂₀ reconstructions"
    )
    parser.add_argument(
        "--reference-conventions",
        action="store_true",
        help="SDEdit as the paper's reference code: noise one DDIM step higher, one-step "
        "timestep int(s·T) (default: diffusers' conventions)",
    )
    parser.add_argument("--inpaint-mask", default="border", help="border, center or strokes")
    parser.add_argument(
        "--train-steps", type=int, default=500, help="textual inversion training steps"
    )
    parser.add_argument("--num-images", type=int, default=4, help="images generated per token")
    parser.add_argument("--clip-model", default=DEFAULT_CLIP_MODEL, help="CLIP for clip/fd_clip")
    parser.add_argument("--eps", type=float, default=16, help="L∞ budget, 0–255 units")
    parser.add_argument("--step-size", type=float, default=1, help="PGD step, 0–255 units")
    parser.add_argument("--steps", type=int, default=100, help="protection (PGD) steps")
    parser.add_argument("--prompt", default="a photo", help="protection and mimicry prompt")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    add_model_options(parser)
    parser.add_argument(
        "--victim",
        action="append",
        metavar="MODEL",
        help="the imitator's model(s), which purify and mimic; hub ids, folders, 'mini' or "
        "'tiny', comma list or repeated; an inpainting checkpoint runs the inpaint scenario with "
        "its own 9-channel UNet (default: --model, the surrogate that protection attacks)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run the grid, print where the results are; the exit code."""
    # 1. Settings and inputs, checked before anything heavy.
    try:
        plan = build_plan(args)
    except ValueError as error:  # a bad name or value, named in the message
        raise CommandError(str(error)) from None
    paths = collect_inputs(args.inputs)
    images, failed = [], 0
    for path in paths:
        try:
            images.append(read_image(path))
        except ImageFileError as error:
            print(f"error: {error}", file=sys.stderr)
            failed += 1
    if not images:
        raise CommandError("none of the inputs could be read", EXIT_USAGE)

    # 2. Models and metrics; under `accelerate launch` each process takes a share of images.
    processes = Processes.start(args.device)
    device = processes.device or args.device
    model = load_model(args, device=device)
    victims = [model]
    if args.victim:
        names = [name for text in args.victim for name in comma_list(text, "--victim")]
        victims = [_load_victim(args, name, model, device) for name in names]
    try:
        metrics = load_metrics(
            comma_list(args.metrics, "--metrics"),
            model=model,
            device=model.device,
            clip_model=args.clip_model,
        )
    except ValueError as error:
        raise CommandError(str(error)) from None
    notes = list(dict.fromkeys(note for victim in victims for note in model_notes(victim)))
    skipped = [f"metric '{skip.metric}' skipped: {skip.reason}" for skip in metrics.skipped]
    for note in skipped:  # load_model printed the models' own
        print(f"note: {note}", file=sys.stderr)

    # 3. The grid, written as it goes, then (main process) the report.
    try:
        evaluation = Evaluation(
            images, plan, model, args.output, metrics, victims=victims, processes=processes
        )
        with tqdm(
            total=evaluation.units(),
            unit="step",
            desc="evaluate" if processes.count == 1 else f"evaluate [{processes.index}]",
        ) as bar:
            evaluation.progress = lambda description: (
                bar.set_postfix_str(description),
                bar.update(1),
            )
            store = evaluation.run()
    except ValueError as error:
        raise CommandError(str(error), EXIT_FAILED) from None
    if not processes.is_main:
        return EXIT_FAILED if failed else EXIT_OK
    report = write_report(
        args.output,
        store,
        title="mimicshield evaluation",
        notes=[*notes, *skipped],
        plan_json=plan_record(plan, evaluation.victims),
        surrogate=model.name,
    )
    print(f"{len(store.rows)} result rows in {args.output}/results.csv; report: {report}")
    return EXIT_FAILED if failed else EXIT_OK


def _load_victim(args: argparse.Namespace, name: str, surrogate, device):
    """The victim ``name``; the surrogate itself when it names the same model (loaded once)."""
    if name == args.model:
        return surrogate
    return load_model(argparse.Namespace(model=name, dtype=args.dtype), device=device)


def build_plan(args: argparse.Namespace) -> EvaluationPlan:
    """The plan from the command line.

    Raises:
        CommandError, BudgetError, ValueError: a bad value, named in the message.
    """
    names = comma_list(args.scenarios, "--scenarios")
    unknown = [name for name in names if name not in SCENARIOS]
    if unknown:
        raise CommandError(
            f"unknown scenario {', '.join(map(repr, unknown))}; known: {', '.join(SCENARIOS)}"
        )
    scenarios = {
        "sdedit": lambda: SDEditScenario(
            strengths=tuple(number_list(args.strengths, "--strengths")),
            num_inference_steps=args.num_inference_steps,
            one_step=not args.no_one_step,
            reference_conventions=args.reference_conventions,
        ),
        "inpaint": lambda: InpaintScenario(
            mask=args.inpaint_mask, num_inference_steps=args.num_inference_steps
        ),
        "textual-inversion": lambda: TextualInversionScenario(
            steps=args.train_steps, num_images=args.num_images
        ),
    }
    return EvaluationPlan(
        methods=tuple(comma_list(args.methods, "--methods")),
        purifiers=tuple(parse_purifier(name) for name in comma_list(args.purify, "--purify")),
        scenarios=tuple(scenarios[name]() for name in names),
        budget=Budget.from_255(args.eps, args.step_size, args.steps),
        prompt=args.prompt,
        seed=args.seed,
    )
