"""The ``tiersplit`` command. Each tier registers its own sub-commands from a private
module (``_cli_<area>.py``) so the heavy imports (torch, onnxruntime) happen only inside
the command that needs them, never at ``tiersplit --help``."""

from __future__ import annotations

import logging
import sys

import typer

from tiersplit import (
    _cli_bench,
    _cli_cloud,
    _cli_demo,
    _cli_edge,
    _cli_keys,
    _cli_link,
    _cli_partition,
    _cli_place,
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


_cli_partition.register(app)
_cli_keys.register(app)
_cli_link.register(app)
_cli_cloud.register(app)
_cli_edge.register(app)
_cli_place.register(app)
_cli_demo.register(app)
_cli_bench.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
