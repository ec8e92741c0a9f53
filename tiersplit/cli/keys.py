"""`tiersplit keys`: generate key pairs (0600 secrets) and print public keys."""

from __future__ import annotations

from pathlib import Path

import typer

from tiersplit.cli.common import clean_errors, console


def register(app: typer.Typer) -> None:
    """Add ``tiersplit keys gen`` and ``tiersplit keys show-public``."""
    keys_app = typer.Typer(help="Generate and inspect Curve, X25519 and Ed25519 keys.",
                           no_args_is_help=True)

    @keys_app.command("gen")
    def gen(
        kind: str = typer.Option(..., "--kind",
                                 help="curve (ZeroMQ), x25519 (MQTT payloads) or "
                                      "ed25519 (bundle signing)"),
        out: Path = typer.Option(..., "--out", help="Directory for NAME.key and NAME.pub"),
        name: str = typer.Option("key", "--name", help="File stem (agent id for agents)"),
    ) -> None:
        """Write OUT/NAME.key (secret, mode 0600) and OUT/NAME.pub (public)."""
        from transport import keys
        from transport.errors import TransportError

        with clean_errors(TransportError, ValueError, OSError):
            if kind not in ("curve", "x25519", "ed25519"):
                raise ValueError(f"--kind must be curve, x25519 or ed25519, not {kind!r}")
            secret, public = keys.generate(kind, out, name)  # type: ignore[arg-type]
        console.print(f"secret key: {secret} (0600)\npublic key: {public}")

    @keys_app.command("show-public")
    def show_public(path: Path = typer.Argument(..., help="A .pub or .key file")) -> None:
        """Print the public half of a key file (never the secret)."""
        from cryptography.hazmat.primitives import serialization

        from transport import keys
        from transport.errors import TransportError

        with clean_errors(TransportError, ValueError, OSError):
            text = path.read_text(errors="replace")
            if "curve" in text:
                pub = (keys.load_curve_public(path) if path.suffix == ".pub"
                       else keys.load_curve_secret(path)[0]).decode()
                console.print(f"curve {pub}", highlight=False)
                return
            if path.suffix != ".pub":
                keys.check_secret_permissions(path)
                priv = serialization.load_pem_private_key(path.read_bytes(), password=None)
                public = priv.public_key()
            else:
                public = serialization.load_pem_public_key(path.read_bytes())
            raw = public.public_bytes(serialization.Encoding.Raw,  # type: ignore[union-attr]
                                      serialization.PublicFormat.Raw)
            kind = type(public).__name__.replace("PublicKey", "").lstrip("_").lower()
            console.print(f"{kind} {raw.hex()}", highlight=False)

    app.add_typer(keys_app, name="keys")
