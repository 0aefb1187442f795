"""``mimicshield env``: versions, devices and dtype support, for bug reports."""

from __future__ import annotations

import argparse
import json

from ..models import devices, versions


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``env`` subcommand and its options to the ``mimicshield`` parser."""
    parser = subparsers.add_parser("env", help="print versions, devices and dtype support")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Print package versions and each device with its supported dtypes; returns 0."""
    report = {"versions": versions(), "devices": devices()}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    for package, found in report["versions"].items():
        print(f"{package:<13} {found}")
    for device in report["devices"]:
        details = ", ".join(f"{k}={v}" for k, v in device.items() if k not in ("device", "dtypes"))
        print(f"{device['device']:<13} {details}; dtypes: {', '.join(device['dtypes'])}")
    return 0
