"""`tiersplit demo`: partition, start a cloud core and agents, infer, print the table."""

from __future__ import annotations

from pathlib import Path

import typer

from tiersplit.cli.common import clean_errors


def register(app: typer.Typer) -> None:
    """Add ``demo`` to the root app."""

    @app.command("demo")
    def demo(
        model: str = typer.Option("mobilenet_like", help="Zoo model to split."),
        transport: str = typer.Option("zmq", help="zmq (embedded, default) or mqtt."),
        broker: str = typer.Option(None, help="MQTT broker HOST:PORT (with --transport mqtt)."),
        broker_tls: bool = typer.Option(False, help="TLS to the MQTT broker."),
        broker_ca: Path = typer.Option(None, help="CA file for the broker's certificate."),
        duration: float = typer.Option(30.0, min=6.0, help="Seconds of traffic."),
        links: str = typer.Option("3g,4g,wifi", help="One agent per link profile."),
        plot: Path = typer.Option(None, help="Write a latency-over-time PNG here."),
        workdir: Path = typer.Option(Path.home() / ".cache" / "tiersplit" / "demo",
                                     help="Cache for the bundle and the last run's logs."),
        edge_gmacs: float = typer.Option(0.1, help="Emulated edge speed (GMAC/s)."),
    ) -> None:
        """Run the whole system on loopback and print the live comparison table."""
        from partitioner.errors import PartitionError
        from tiersplit.demo import DemoOptions, run_demo
        from tiersplit.devtools.services import ServiceError
        from transport.errors import TransportError

        if transport not in ("zmq", "mqtt"):
            raise typer.BadParameter("--transport must be zmq or mqtt")
        opts = DemoOptions(model=model, transport=transport, broker=broker,
                           broker_tls=broker_tls, broker_ca=broker_ca, duration=duration,
                           profiles=tuple(p for p in links.split(",") if p), plot=plot,
                           workdir=workdir, edge_gmacs=edge_gmacs)
        with clean_errors(ValueError, PartitionError, ServiceError, TransportError):
            code = run_demo(opts)
        raise typer.Exit(code)
