"""The journey extractor: what it reads from a README, how it adapts commands, and that a
broken command fails the run."""

from __future__ import annotations

import textwrap
from pathlib import Path

import psutil
import pytest

from tests.journeys.readme import Command, PortMap, adapt, journey_commands
from tests.journeys.runner import JourneyFailure, JourneyRunner

REPO = Path(__file__).resolve().parents[2]

DOC = textwrap.dedent("""\
    # title

    ```bash
    echo not-a-journey
    ```

    ## Journeys

    ### One

    ```bash
    # a comment line is not a command
    echo one \\
        two
    tiersplit cloud serve --config configs/cloud.yaml   # serves
    ```

    ```text
    echo not bash
    ```

    ### Two

    ```bash
    python - <<'EOF'
    print("a")
    EOF
    sudo tiersplit edge install --config c.yaml --prefix /
    sudo systemctl enable --now tiersplit-edge
    ```

    ## After

    ```bash
    echo after
    ```
    """)


def test_extracts_bash_blocks_of_the_section_in_order() -> None:
    cmds = journey_commands(DOC)
    assert [c.text for c in cmds] == [
        "echo one \\\n    two",
        "tiersplit cloud serve --config configs/cloud.yaml   # serves",
        "python - <<'EOF'\nprint(\"a\")\nEOF",
        "sudo tiersplit edge install --config c.yaml --prefix /",
        "sudo systemctl enable --now tiersplit-edge",
    ]
    assert [c.line for c in cmds] == [13, 15, 25, 28, 29]
    assert [c.section for c in cmds] == ["One", "One", "Two", "Two", "Two"]
    assert [c.is_service for c in cmds] == [False, True, False, False, False]


def test_unclosed_fence_heredoc_or_missing_section_is_an_error() -> None:
    with pytest.raises(ValueError, match="never closed"):
        journey_commands("## Journeys\n```bash\necho x\n")
    with pytest.raises(ValueError, match="heredoc 'EOF' is never closed"):
        journey_commands("## Journeys\n```bash\ncat <<EOF\nx\n```\n")
    with pytest.raises(ValueError, match="no '## Journeys'"):
        journey_commands("## Other\n```bash\necho x\n```\n")


def test_sudo_and_systemctl_take_their_unattended_forms(tmp_path: Path) -> None:
    cmds = journey_commands(DOC)
    assert adapt(cmds[3], tmp_path) == f"tiersplit edge install --config c.yaml --prefix {tmp_path}"
    assert adapt(cmds[4], tmp_path) == (
        f"test -f {tmp_path}/etc/systemd/system/tiersplit-edge.service")
    assert adapt(cmds[0], tmp_path) == cmds[0].text
    with pytest.raises(ValueError, match="needs root"):
        adapt(Command("sudo rm -rf /opt/x", 1, "s"), tmp_path)
    with pytest.raises(ValueError, match="no unattended form"):
        adapt(Command("systemctl stop x", 1, "s"), tmp_path)


def test_port_map_moves_config_ports_in_configs_and_commands(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("http:\n  port: 9300\nendpoint: tcp://127.0.0.1:5555\n"
                                     "x: 0\n")
    ports = PortMap.for_configs(tmp_path)
    assert sorted(ports.mapping) == [5555, 9300]
    new = ports.mapping[9300]
    assert ports.apply("curl -s http://127.0.0.1:9300/metrics") == (
        f"curl -s http://127.0.0.1:{new}/metrics")
    assert ports.apply("sleep 9300") == "sleep 9300"
    ports.rewrite_configs(tmp_path)
    assert f"port: {new}" in (tmp_path / "a.yaml").read_text()


def test_a_broken_command_fails_the_run_naming_its_line(tmp_path: Path) -> None:
    doc = ("## Journeys\n\n### Inspect\n\n```bash\necho fine\n"
           "tiersplit inspect out/bundles/no_such_model/1\n```\n")
    with JourneyRunner(tmp_path, tmp_path / "root") as runner:
        cmds = journey_commands(doc)
        assert runner.run(cmds[0]).strip() == "fine"
        with pytest.raises(JourneyFailure, match=r"README line 7 \(Inspect\).*exited 2") as e:
            runner.run(cmds[1])
    assert "not a bundle directory" in str(e.value)
    # the failure says how long each command so far took, the failing one included
    assert [c.line for c, _ in runner.timings] == [6, 7]
    assert all(s > 0 for _, s in runner.timings)
    assert "7: tiersplit inspect out/bundles/no_such_model/1" in str(e.value)
    assert "6: echo fine" in str(e.value)


def test_a_failing_pipeline_stage_fails_the_command(tmp_path: Path) -> None:
    with JourneyRunner(tmp_path, tmp_path / "root") as runner, \
            pytest.raises(JourneyFailure, match="exited 1"):
        runner.run(Command("printf 'a\\n' | grep -q no_such_text", 1, "s"))


def test_a_service_that_never_serves_fails_and_leaves_nothing(tmp_path: Path) -> None:
    (tmp_path / "cloud.yaml").write_text("repository: missing\n")
    with JourneyRunner(tmp_path, tmp_path / "root", ready_timeout=120) as runner, \
            pytest.raises(JourneyFailure, match="did not serve"):
        runner.run(Command("tiersplit cloud serve --config cloud.yaml", 1, "s"))
    assert runner.services == []


def test_the_readme_journeys_extract() -> None:
    cmds = journey_commands((REPO / "README.md").read_text())
    services = [c.words()[:3] for c in cmds if c.is_service]
    assert services == [["tiersplit", "cloud", "serve"], ["tiersplit", "edge", "run"]]
    for c in cmds:
        adapt(c, Path("/tmp/root"))  # every sudo/systemctl line has an unattended form


def test_a_hung_command_is_killed_with_everything_it_started(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    with JourneyRunner(tmp_path, tmp_path / "root", command_timeout=3) as runner, \
            pytest.raises(JourneyFailure, match="still running after 3 s"):
        runner.run(Command(f"sleep 600 & echo $! > {pidfile}; wait", 1, "s"))
    child = int(pidfile.read_text())
    assert not psutil.pid_exists(child) or (
        psutil.Process(child).status() == psutil.STATUS_ZOMBIE)
