"""``mimicshield serve``: parse, then start the web page (``mimicshield.web``)."""

from __future__ import annotations

import argparse
import importlib.util
import ipaddress
import sys

from .options import CommandError, add_model_options, at_least_one, model_names

#: The one sentence a user without the optional extra gets.
INSTALL_HINT = (
    "the web page needs Gradio, which is an optional extra: pip install 'mimicshield[web]'"
)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``serve`` subcommand and its options to the ``mimicshield`` parser."""
    parser = subparsers.add_parser(
        "serve",
        help="start a local web page for protecting images (needs mimicshield[web])",
        description="Start a web page, on this machine only unless told otherwise, where images "
        "are dropped, protected and downloaded. The model loads when the first job needs it.",
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on; 0.0.0.0 lets other machines of the network in "
        "(default: 127.0.0.1, this machine only)",
    )
    parser.add_argument("--port", type=int, default=7860, help="port (default: 7860)")
    parser.add_argument(
        "--share",
        action="store_true",
        help="also create a public link through Gradio's share servers (anyone with the link "
        "can use the page and this machine); off by default",
    )
    parser.add_argument(
        "--max-files", type=int, default=20, help="images per job at most (default: 20)"
    )
    parser.add_argument(
        "--max-upload-mb",
        type=float,
        default=50,
        help="size of one uploaded file at most, in MB (default: 50)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of protection and preview (default: 0)"
    )
    add_model_options(parser, auto_dtype=True)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Start the local web page and serve until interrupted; the exit code."""
    if importlib.util.find_spec("gradio") is None:
        raise CommandError(INSTALL_HINT)
    if args.max_upload_mb <= 0:
        raise CommandError(f"--max-upload-mb must be positive, got {args.max_upload_mb:g}")
    if len(model_names(args.model)) > 1:
        raise CommandError(
            f"--model names one model for the web page, got '{args.model}'; protect against "
            "several at once with `mimicshield protect --model A,B`"
        )
    # Imported here: Gradio is optional, and the page is built only when it is served.
    from ..web.app import ServeSettings, serve
    from ..web.jobs import UploadLimits

    settings = ServeSettings(
        model=args.model,
        model_config=args.model_config,
        device=args.device,
        dtype=args.dtype,
        limits=UploadLimits(at_least_one(args.max_files, "--max-files"), args.max_upload_mb),
        seed=args.seed,
    )
    if args.share:
        print(
            "warning: --share makes this page reachable by anyone on the internet who has the "
            "link, through Gradio's servers; your images and this machine are theirs to use.",
            file=sys.stderr,
        )
    if not _is_loopback(args.host):
        print(
            f"warning: listening on {args.host}: other machines of the network can use this page.",
            file=sys.stderr,
        )
    serve(settings, host=args.host, port=args.port, share=args.share)
    return 0


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve anywhere
        return False
