"""The `labelprop` command line: a thin Typer shell over the pure core.

Each area of the tool keeps its commands in its own module, which exposes
``register(app)``; this file only assembles them.  Heavy imports (matplotlib,
scikit-learn, boto3) happen inside the commands so that ``--help`` is instant.
"""
from __future__ import annotations

import importlib
import sys

import typer

from orchestrator.errors import LabelpropError

app = typer.Typer(
    name="labelprop",
    help=(
        "Turn a pool of unlabeled images into high-quality instance masks for a tiny human budget: "
        "cluster mask predictions into per-class trees, ask humans a few yes/no questions per cluster, "
        "propagate the answers (Papadopoulos et al., ICCV 2021).\n\n"
        "Examples:\n\n"
        "  labelprop demo                             # a whole simulated campaign\n\n"
        "  labelprop init camp --backend server       # a campaign for your crowd\n"
        "  labelprop ingest camp --results det.json --features f.npy \\\n"
        "      --images images.json --image-root images/\n"
        "  labelprop cluster camp\n"
        "  labelprop estimate camp                    # questions, cost, hours\n"
        "  labelprop run camp\n"
        "  labelprop export camp --coco accepted.json\n\n"
        "Every command has --help with examples."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# Modules that contribute commands; each has register(app: typer.Typer) -> None.
COMMAND_MODULES = [
    "orchestrator.cli.simulate",
    "orchestrator.cli.data",
    "orchestrator.cli.campaign",
    "orchestrator.cli.run",
    "orchestrator.cli.estimate",
    "orchestrator.cli.crowd",
    "orchestrator.cli.prolific",
    "orchestrator.crowd_server.cli",
    "orchestrator.cli.evaluate",
    "orchestrator.cli.iterate",
    "detection.cli",            # train / detect / shapes: torch is imported inside the commands
]


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            v = version("labelprop")
        except PackageNotFoundError:        # running from a source tree that is not installed
            v = "unknown (not installed)"
        typer.echo(f"labelprop {v}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print labelprop's version and exit.")) -> None:
    pass


for _name in COMMAND_MODULES:
    importlib.import_module(_name).register(app)


def main() -> None:
    """Console entry point: user errors become one red line and exit code 2."""
    try:
        app()
    except LabelpropError as exc:  # raised by every layer for bad input or state
        typer.secho(f"labelprop: error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
