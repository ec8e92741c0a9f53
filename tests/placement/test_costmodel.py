"""The shared cost model: choice on known profiles, constraints, endpoint regions."""

from __future__ import annotations

import pytest

from placement import (
    CloudEstimate,
    Constraints,
    CutProfile,
    Endpoint,
    LinkEstimate,
    candidate_codecs,
    choose,
    choose_endpoint,
    predict,
)
from tests.placement.synthetic import synthetic_cuts


def _brute(cuts, link, cloud, cons):
    return min((predict(c, link, cloud).total_ms, c.cut_id) for c in cuts if cons.admits(c))


@pytest.mark.parametrize("up", [1e3, 1e5, 1e6, 1e7, 1e9])
@pytest.mark.parametrize("rtt", [1.0, 30.0])
def test_choice_is_the_known_optimum(up: float, rtt: float) -> None:
    cuts = synthetic_cuts()
    link = LinkEstimate(up, up * 4, rtt)
    d = choose(cuts, link, CloudEstimate(), Constraints(privacy_floor=0))
    assert (d.predicted.total_ms, d.cut_id) == _brute(cuts, link, CloudEstimate(),
                                                      Constraints(privacy_floor=0))
    assert d.margin_ms >= 0


def test_known_choices_at_extremes() -> None:
    cuts = synthetic_cuts()
    assert choose(cuts, LinkEstimate(1e3, 1e3, 50), CloudEstimate()).cut_id == "edge"
    fast = LinkEstimate(1e10, 1e10, 0.1)
    assert choose(cuts, fast, CloudEstimate(), Constraints(privacy_floor=0)).cut_id == "cloud"
    assert choose(cuts, fast, CloudEstimate()).cut_id == "k1"  # floor 1 excludes "cloud"


def test_constraints_exclude_what_they_must() -> None:
    cuts = synthetic_cuts()
    fast = LinkEstimate(1e10, 1e10, 0.1)
    ids = lambda c: {p.cut_id for p in choose(cuts, fast, CloudEstimate(), c).ranking}  # noqa: E731
    assert "cloud" not in ids(Constraints(privacy_floor=1))
    assert ids(Constraints(privacy_floor=3)) == {"k2", "k3", "edge"}
    assert ids(Constraints(privacy_floor=0, accuracy_floor=0.99)) == {"cloud", "k1", "k2"}
    assert ids(Constraints(edge_memory_mb=30)) == {"k1", "k2"}
    assert ids(Constraints(allowed=frozenset({"k3", "edge"}))) == {"k3", "edge"}
    with pytest.raises(ValueError, match="no cut satisfies"):
        choose(cuts, fast, CloudEstimate(), Constraints(accuracy_floor=0.9999))


def test_regions_restrict_endpoints() -> None:
    cuts = synthetic_cuts()
    near = Endpoint("eu-1", "eu", LinkEstimate(1e8, 1e8, 2.0))
    far = Endpoint("us-1", "us", LinkEstimate(1e8, 1e8, 80.0))
    assert choose_endpoint(cuts, [near, far]).endpoint == "eu-1"
    only_us = Constraints(regions=frozenset({"us"}))
    got = choose_endpoint(cuts, [near, far], only_us)
    assert got.endpoint in ("us-1", None)
    assert got.endpoint == "us-1" or got.decision.cut_id == "edge"
    nowhere = choose_endpoint(cuts, [near, far], Constraints(regions=frozenset({"ap"})))
    assert nowhere.endpoint is None and nowhere.decision.cut_id == "edge"


def _lowbit_cut(codecs: tuple[str, ...]) -> CutProfile:
    """An interior cut whose activations are 40 kB raw, with measured low-bit codecs."""
    return CutProfile(cut_id="k2", depth=2, head_ms=3.0, tail_ms={1: 2.0},
                      bytes={"int8+lz4": 10_000, "int4c+zstd": 4_000, "int2c+zstd": 2_200,
                             "raw": 40_000},
                      encode_ms={"int8+lz4": 0.2, "int4c+zstd": 0.5, "int2c+zstd": 0.6},
                      reply_bytes=40, codecs=codecs)


def test_choose_picks_the_codec_with_the_cut() -> None:
    """On a slow link the fewest bytes win despite the longer encode; on a fast link the
    cheapest encode wins; a cut that lists no codecs uses the configured one."""
    edge = CutProfile(cut_id="edge", depth=9, head_ms=60.0)
    cut = _lowbit_cut(("int8+lz4", "int4c+zstd", "int2c+zstd"))
    slow = choose([cut, edge], LinkEstimate(2e5, 2e5, 20.0), CloudEstimate(), codec="raw")
    assert (slow.cut_id, slow.codec) == ("k2", "int2c+zstd")
    fast = choose([cut, edge], LinkEstimate(1e10, 1e10, 0.1), CloudEstimate(), codec="raw")
    assert (fast.cut_id, fast.codec) == ("k2", "int8+lz4")
    plain = choose([_lowbit_cut(()), edge], LinkEstimate(1e10, 1e10, 0.1), CloudEstimate(),
                   codec="int8+lz4")
    assert plain.codec == "int8+lz4"
    assert candidate_codecs(edge, "raw") == ("raw",)
    assert choose([cut, edge], LinkEstimate(1e3, 1e3, 50.0), CloudEstimate()).codec == ""


def test_only_listed_codecs_are_candidates() -> None:
    """A codec the profile does not list (its accuracy floor failed) is never chosen,
    even where it would be the fastest."""
    cut = _lowbit_cut(("int8+lz4",))
    d = choose([cut], LinkEstimate(1e4, 1e4, 20.0), CloudEstimate(), Constraints(), "raw")
    assert d.codec == "int8+lz4"
    assert all(p.codec == "int8+lz4" for p in d.ranking)


def test_codec_choice_is_the_brute_force_optimum() -> None:
    cut = _lowbit_cut(("int8+lz4", "int4c+zstd", "int2c+zstd"))
    for up in (1e4, 1e5, 1e6, 1e7, 1e9):
        link = LinkEstimate(up, up, 5.0)
        best = min((predict(cut, link, CloudEstimate(), k).total_ms, k) for k in cut.codecs)
        d = choose([cut], link, CloudEstimate())
        assert (d.predicted.total_ms, d.codec) == best
