"""The README's journeys as a list of shell commands, and how a test may run them safely.

The README's ``## Journeys`` section is a story a new user copies, block by block, into a
fresh clone. :func:`journey_commands` extracts every fenced ``bash`` block of it, in order,
and splits each into commands exactly as a shell would read them (backslash continuations
joined, a heredoc kept with the line that opens it). :func:`adapt` turns the few commands
that cannot run unattended on a test machine into their safe forms: ``sudo`` dropped and
``--prefix /`` pointed at a temporary root, ``systemctl enable NAME`` replaced by a check
that the unit it would enable was installed. :class:`PortMap` moves the fixed loopback
ports of the example configs to free ones, in the configs and the commands alike, so the
run never collides with a service already on the machine.
"""

from __future__ import annotations

import re
import shlex
import socket
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Command", "PortMap", "adapt", "journey_commands"]

#: Commands that serve until stopped: run in the background until their READY line.
SERVICES = (("tiersplit", "cloud", "serve"), ("tiersplit", "edge", "run"))
_HEREDOC = re.compile(r"<<-?\s*(['\"]?)([A-Za-z_]\w*)\1")
_ENV_ASSIGN = re.compile(r"^[A-Za-z_]\w*=")


@dataclass(frozen=True)
class Command:
    """One shell command of a journey.

    Attributes:
        text: the command as written (continuation lines and a heredoc body included).
        line: the README line it starts on (1-based), for error messages.
        section: the ``###`` heading it sits under.
    """

    text: str
    line: int
    section: str

    def words(self) -> list[str]:
        """The command's words up to the first newline, environment assignments skipped."""
        first = self.text.split("\n", 1)[0].replace("\\", " ")
        try:
            words = shlex.split(first, comments=True)
        except ValueError:
            words = first.split()
        while words and _ENV_ASSIGN.match(words[0]):
            words.pop(0)
        return words

    @property
    def is_service(self) -> bool:
        """True for a command that keeps serving (``cloud serve``, ``edge run``)."""
        return tuple(self.words()[:3]) in SERVICES


def journey_commands(markdown: str, section: str = "Journeys") -> list[Command]:
    """Every command of the ``bash`` blocks under the level-2 heading ``section``.

    Raises:
        ValueError: the section is missing or has no ``bash`` block, a fence or a heredoc
            is never closed, or a line ends in a continuation with nothing after it.
    """
    lines = markdown.splitlines()
    try:
        start = next(i for i, ln in enumerate(lines) if ln.strip() == f"## {section}")
    except StopIteration:
        raise ValueError(f"no '## {section}' heading in the README") from None
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")),
               len(lines))
    commands: list[Command] = []
    heading = section
    i = start + 1
    while i < end:
        ln = lines[i]
        if ln.startswith("### "):
            heading = ln[4:].strip()
        if ln.strip() == "```bash":
            close = next((j for j in range(i + 1, end) if lines[j].strip() == "```"), None)
            if close is None:
                raise ValueError(f"README line {i + 1}: ```bash block is never closed")
            commands += _split_block(lines[i + 1:close], i + 2, heading)
            i = close
        i += 1
    if not commands:
        raise ValueError(f"'## {section}' has no ```bash block")
    return commands


def _split_block(block: list[str], first_line: int, section: str) -> list[Command]:
    """Split one block's lines into commands (continuations and heredocs kept whole)."""
    out: list[Command] = []
    i = 0
    while i < len(block):
        ln = block[i]
        if not ln.strip() or ln.lstrip().startswith("#"):
            i += 1
            continue
        start, parts = i, [ln]
        while parts[-1].rstrip().endswith("\\"):
            i += 1
            if i >= len(block):
                raise ValueError(f"README line {first_line + start}: continuation at the end "
                                 "of a block")
            parts.append(block[i])
        for m in _HEREDOC.finditer("\n".join(parts)):
            delimiter = m.group(2)
            while True:
                i += 1
                if i >= len(block):
                    raise ValueError(f"README line {first_line + start}: heredoc "
                                     f"{delimiter!r} is never closed")
                parts.append(block[i])
                if block[i].strip() == delimiter:
                    break
        out.append(Command("\n".join(parts), first_line + start, section))
        i += 1
    return out


def adapt(cmd: Command, root: Path) -> str:
    """The form of ``cmd`` a test runs: unchanged, or its unattended equivalent.

    ``sudo X ... --prefix /`` runs ``X ... --prefix <root>`` (no root needed, nothing
    written outside ``root``); ``systemctl enable|start|restart [--now] NAME`` checks that
    ``<root>/etc/systemd/system/NAME.service`` exists; ``systemctl daemon-reload`` has
    nothing to check.

    Raises:
        ValueError: a ``sudo`` or ``systemctl`` command with no safe form.
    """
    words = cmd.words()
    text = cmd.text
    if words[:1] == ["sudo"]:
        words = words[1:]
        text = re.sub(r"^\s*sudo\s+", "", text, count=1)
        if words[:1] != ["systemctl"]:
            if not re.search(r"--prefix\s+/(?=\s|$)", text):
                raise ValueError(f"README line {cmd.line}: `{cmd.text}` needs root and has no "
                                 "--prefix / to point at a temporary root")
            return re.sub(r"--prefix\s+/(?=\s|$)", f"--prefix {shlex.quote(str(root))}", text)
    if words[:1] == ["systemctl"]:
        verbs = [w for w in words[1:] if not w.startswith("-")]
        if verbs == ["daemon-reload"]:
            return "true"
        if len(verbs) == 2 and verbs[0] in ("enable", "start", "restart"):
            unit = verbs[1] if "." in verbs[1] else f"{verbs[1]}.service"
            return f"test -f {shlex.quote(str(root / 'etc/systemd/system' / unit))}"
        raise ValueError(f"README line {cmd.line}: no unattended form of `{cmd.text}`")
    if "sudo " in text or "systemctl " in text:
        raise ValueError(f"README line {cmd.line}: `sudo`/`systemctl` only work at the start "
                         "of a command")
    return text


class PortMap:
    """Fixed loopback ports of the example configs, each moved to a free port."""

    _IN_TEXT = re.compile(r"(?P<pre>(?:127\.0\.0\.1|localhost):|\bport:[ \t]*)(?P<port>\d+)\b")

    def __init__(self, mapping: dict[int, int]) -> None:
        self.mapping = dict(mapping)

    @classmethod
    def for_configs(cls, configs: Path) -> PortMap:
        """A free port for every port (1024 and up) that ``configs/*.yaml`` names."""
        ports: set[int] = set()
        for path in sorted(configs.glob("*.yaml")):
            for m in cls._IN_TEXT.finditer(path.read_text()):
                if int(m.group("port")) >= 1024:
                    ports.add(int(m.group("port")))
        return cls({p: _free_port() for p in sorted(ports)})

    def apply(self, text: str) -> str:
        """``text`` with every mapped port replaced where it follows a host or ``port:``."""
        def repl(m: re.Match[str]) -> str:
            port = int(m.group("port"))
            return m.group("pre") + str(self.mapping.get(port, port))

        return self._IN_TEXT.sub(repl, text)

    def rewrite_configs(self, configs: Path) -> None:
        """Apply the map to every ``configs/*.yaml`` (in a copy of the repository)."""
        for path in configs.glob("*.yaml"):
            path.write_text(self.apply(path.read_text()))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
