"""`tiersplit link emulate`: run the link emulator as a stand-alone proxy."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from tiersplit.cli.common import clean_errors, console


def register(app: typer.Typer) -> None:
    """Add ``tiersplit link emulate``."""
    link_app = typer.Typer(help="Emulated network links for tests and benchmarks.",
                           no_args_is_help=True)

    @link_app.command("emulate")
    def emulate(
        listen: int = typer.Option(..., "--listen", help="Port to listen on (127.0.0.1)"),
        target: str = typer.Option(..., "--target", help="HOST:PORT to forward to"),
        profile: str = typer.Option("4g", "--profile", help="Profile name"),
        profiles: Path = typer.Option(Path("configs/links.yaml"), "--profiles",
                                      help="Profiles YAML"),
        seed: int = typer.Option(0, "--seed", help="Jitter seed"),
        duration: float = typer.Option(0.0, "--duration",
                                       help="Stop after this many seconds (0: until Ctrl-C)"),
        trace: Path | None = typer.Option(
            None, "--trace", help="Replay this trace CSV (t_s,up_bps,down_bps,rtt_ms,loss); "
            "the profile then gives only the jitter"),
        loop: bool = typer.Option(False, "--loop/--no-loop",
                                  help="With --trace: start it again at its end"),
    ) -> None:
        """Proxy 127.0.0.1:LISTEN -> TARGET through an emulated link (delay, rate, jitter,
        or a replayed bandwidth/RTT/loss trace)."""
        from transport.linkemu import LinkEmulator, Trace, load_profiles

        with clean_errors(ValueError, OSError):
            host, _, port = target.rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"--target must be HOST:PORT, not {target!r}")
            table = load_profiles(profiles)
            if profile not in table:
                raise ValueError(f"unknown profile {profile!r}; {profiles} has "
                                 f"{', '.join(sorted(table))}")
            prof = table[profile]
            tr = Trace.from_csv(trace) if trace is not None else None
            emu = LinkEmulator((host, int(port)), prof, listen_port=listen, seed=seed,
                               trace=tr, trace_loop=loop).start()
        if tr is not None:
            ups = [r.up_bps for r in tr.rows]
            rtts = [r.rtt_ms for r in tr.rows]
            console.print(
                f"link trace {tr.name}: 127.0.0.1:{emu.port} -> {host}:{port}  "
                f"{len(tr.rows)} rows, {tr.duration_s:g} s{' (looping)' if loop else ''}, "
                f"up {min(ups) / 1e6:.3g}-{max(ups) / 1e6:.3g} Mbit/s, "
                f"RTT {min(rtts):.3g}-{max(rtts):.4g} ms, jitter {prof.jitter_ms:g} ms",
                highlight=False, soft_wrap=True)
        else:
            console.print(
                f"link {prof.name}: 127.0.0.1:{emu.port} -> {host}:{port}  "
                f"up {prof.up_bps / 1e6:g} Mbit/s, down {prof.down_bps / 1e6:g} Mbit/s, "
                f"RTT {prof.rtt_ms:g} ms (one way {prof.rtt_ms / 2:g} ms), "
                f"jitter {prof.jitter_ms:g} ms", highlight=False, soft_wrap=True)
        try:
            end = time.monotonic() + duration if duration > 0 else None
            while end is None or time.monotonic() < end:
                time.sleep(0.2)
        except KeyboardInterrupt:
            pass
        finally:
            emu.stop()
            console.print(f"carried {emu.bytes_up} B up, {emu.bytes_down} B down")

    app.add_typer(link_app, name="link")
