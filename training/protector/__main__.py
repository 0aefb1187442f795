"""Command line: ``python -m training.protector --model MODEL ...`` (from the repository root).

Trains into ``--run`` (resuming from its checkpoint), then writes the fp16 protector folder to
``--output``, which ``mimicshield protect --method amortised --protector FOLDER`` loads.
"""

import argparse
import logging
from pathlib import Path

import torch
from accelerate import PartialState

from .data import image_folder, mini_training_crops, prepare_crops
from .train import OBJECTIVES, Settings, export, train

DEFAULTS = Settings()


def main(argv: list[str] | None = None) -> None:
    """Parse, train (or resume), export."""
    parser = argparse.ArgumentParser(prog="python -m training.protector", description=__doc__)
    parser.add_argument("--model", default=DEFAULTS.model, help="surrogate: mini, folder or hub id")
    parser.add_argument(
        "--images",
        type=Path,
        help="folder of training images (default: the miniature's training crops, built by "
        "`python -m training.mini sources` and `prepare`)",
    )
    parser.add_argument(
        "--resolution", type=int, default=64, help="training side in pixels for --images"
    )
    parser.add_argument("--objective", default=DEFAULTS.objective, choices=list(OBJECTIVES))
    parser.add_argument("--eps", type=float, default=DEFAULTS.eps_255, help="L∞ budget, 0–255")
    parser.add_argument(
        "--channels",
        default=",".join(map(str, DEFAULTS.block_channels)),
        help="network channels per level, full resolution first",
    )
    parser.add_argument(
        "--uncentred",
        action="store_true",
        help="let the network output a constant colour shift (to reproduce the pilots' collapse)",
    )
    parser.add_argument("--steps", type=int, default=DEFAULTS.steps)
    parser.add_argument("--batch", type=int, default=DEFAULTS.batch, help="images per step")
    parser.add_argument("--lr", type=float, default=DEFAULTS.lr)
    parser.add_argument("--warmup", type=int, default=DEFAULTS.warmup, help="warm-up steps")
    parser.add_argument("--prompt", default=DEFAULTS.prompt)
    parser.add_argument("--dtype", default=DEFAULTS.dtype, help="surrogate precision")
    parser.add_argument(
        "--mixed-precision", default=DEFAULTS.mixed_precision, choices=["no", "bf16", "fp16"]
    )
    parser.add_argument("--seed", type=int, default=DEFAULTS.seed)
    parser.add_argument("--save-every", type=int, default=DEFAULTS.save_every)
    parser.add_argument("--eval-every", type=int, default=DEFAULTS.eval_every)
    parser.add_argument(
        "--run", type=Path, help="checkpoint folder (default: training/runs/protector-<model>)"
    )
    parser.add_argument("--output", type=Path, help="protector folder (default: <run>/protector)")
    parser.add_argument(
        "--prepare",
        action="store_true",
        help="only build the crop cache from the miniature's sources, then stop",
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="CPU threads (default 1: the machine is shared)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    if args.prepare:
        prepare_crops()
        return

    settings = Settings(
        model=args.model,
        objective=args.objective,
        eps_255=args.eps,
        block_channels=tuple(int(width) for width in args.channels.split(",")),
        centred=not args.uncentred,
        steps=args.steps,
        batch=args.batch,
        lr=args.lr,
        warmup=args.warmup,
        prompt=args.prompt,
        dtype=args.dtype,
        mixed_precision=args.mixed_precision,
        save_every=args.save_every,
        eval_every=args.eval_every,
        seed=args.seed,
    )
    images = (
        mini_training_crops() if args.images is None else image_folder(args.images, args.resolution)
    )
    name = Path(args.model).name or "model"
    run = args.run or Path("training") / "runs" / f"protector-{name}"
    network = train(settings, images, run)
    if PartialState().is_main_process:
        export(network, args.output or run / "protector")


if __name__ == "__main__":
    main()
