"""The ``tiersplit`` command. Each area registers its own sub-commands from its module
here (``tiersplit.cli.<area>``), and imports heavy things (torch, onnxruntime) only inside
the command that needs them, never at ``tiersplit --help``."""

from __future__ import annotations

import logging
import sys

import typer

from tiersplit.cli import (
    bench,
    cloud,
    demo,
    edge,
    fleet,
    keys,
    link,
    partition,
    place,
    privacy,
)

app = typer.Typer(
    name="tiersplit",
    help="Edge-cloud split inference: partition, serve, place.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _root(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


partition.register(app)
keys.register(app)
link.register(app)
cloud.register(app)
fleet.register(app)
edge.register(app)
place.register(app)
privacy.register(app)
demo.register(app)
bench.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
