"""What the agent knows of each cut before measuring anything: the manifest's facts."""

from __future__ import annotations

from dataclasses import dataclass

from contract.bundle import EDGE_CUT, CutCodec, Manifest

__all__ = ["CutInfo", "cut_infos_from_manifest", "wire_bytes_guess"]


@dataclass(frozen=True, slots=True)
class CutInfo:
    """Static facts about one cut, from the manifest."""

    cut_id: str
    depth: int
    raw_bytes: int  # per sample, fp32
    int8_bytes: int  # per sample, int8 before compression
    reply_bytes: int  # per sample, outputs
    accuracy: float
    head_flops: int
    tail_flops: int
    codecs: tuple[CutCodec, ...] = ()  # wire codecs measured at this cut (manifest)

    @property
    def remote(self) -> bool:
        return self.cut_id != EDGE_CUT


def wire_bytes_guess(cut: CutInfo, codec: str) -> float:
    """Bytes per sample on the wire before any measurement of this codec on this cut."""
    base = codec.split("+")[0]
    if base == "raw":
        return float(cut.raw_bytes)
    if base == "fp16":
        return cut.raw_bytes / 2
    return float(cut.int8_bytes)


def cut_infos_from_manifest(manifest: Manifest) -> list[CutInfo]:
    reply = sum(4 * max(t.sample_elements, 1) for t in manifest.outputs)
    out = []
    for c in manifest.cuts:
        accuracy = c.accuracy.cosine if c.accuracy.samples else 1.0
        out.append(CutInfo(c.id, c.depth, c.bytes, c.bytes_int8, 0 if c.is_edge else reply,
                           accuracy, c.head_flops, c.tail_flops, tuple(c.codecs)))
    return out
