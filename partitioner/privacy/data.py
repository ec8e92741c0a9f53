"""The data an audit attacks with, and two reproducible data sets to audit with.

``DATA.npz`` holds samples of the model's input, batch first, named like the input (or a
lone ``arr_0``), plus any other input the model takes (an attention mask) by name:

* images: ``(N, C, H, W)`` floats of the model's own sample shape;
* text: ``tokens`` ``(N, S)`` int ids plus ``embedding`` ``(V, D)``, the token table. A
  model taking float embeddings is fed ``embedding[tokens]``; a model taking ids is fed the
  ids (its own Gather table is used when ``embedding`` is absent).

Attacks reconstruct :attr:`AuditData.target`: the pixels, or the embedding sequence that
is then mapped back to tokens by nearest embedding.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from partitioner.privacy.errors import AuditError

if TYPE_CHECKING:
    from contract.bundle import Manifest, TensorSpec

__all__ = ["AuditData", "attacked_input", "digits_images", "graph_embedding", "load_audit_data",
           "token_data"]


@dataclass(frozen=True)
class AuditData:
    """Audit samples in the forms the attacks and the model need.

    Attributes:
        input_name: the model input the samples feed.
        feeds: model inputs, batch first.
        target: what a reconstruction is scored against: images ``(N, C, H, W)`` or
            embedding sequences ``(N, S, D)``.
        modality: ``image`` (SSIM/PSNR) or ``tokens`` (token recovery rate).
        tokens / embedding: text only: true ids ``(N, S)`` and the table ``(V, D)``.
        differentiable: the model input is ``target`` itself (floats), so the white-box
            attack can optimise it.
        data_range: max - min of ``target`` (SSIM and PSNR constants).
        description: file name, sha256 prefix and sample count, for the manifest.
    """

    input_name: str
    feeds: dict[str, np.ndarray]
    target: np.ndarray
    modality: Literal["image", "tokens"]
    description: str
    differentiable: bool
    data_range: float
    tokens: np.ndarray | None = None
    embedding: np.ndarray | None = None

    @property
    def samples(self) -> int:
        return len(self.target)

    def subset(self, idx: np.ndarray) -> AuditData:
        """The same data restricted to rows ``idx``."""
        return AuditData(self.input_name, {k: v[idx] for k, v in self.feeds.items()},
                         self.target[idx], self.modality, self.description,
                         self.differentiable, self.data_range,
                         None if self.tokens is None else self.tokens[idx], self.embedding)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def graph_embedding(bundle_dir: Path | None, manifest: Manifest, name: str) -> np.ndarray:
    """The embedding table a token-id model gathers from (its first Gather on the ids)."""
    if bundle_dir is None:
        raise AuditError("token-id data without an 'embedding' table and no bundle to read "
                         "one from")
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(bundle_dir / manifest.full_fp32))
    weights = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Gather" and len(node.input) == 2 and node.input[1] == name \
                and node.input[0] in weights:
            return numpy_helper.to_array(weights[node.input[0]]).astype(np.float32)
    raise AuditError(f"no Gather on input {name!r} with a constant table in "
                     f"{manifest.full_fp32}; put the table in the data file as 'embedding'")


def attacked_input(manifest: Manifest) -> TensorSpec:
    """The input the attacks reconstruct: the only one, else the first whose name says it
    holds token ids, else the first."""
    if len(manifest.inputs) == 1:
        return manifest.inputs[0]
    for spec in manifest.inputs:
        if not spec.dtype.startswith("float") and "ids" in spec.name.lower():
            return spec
    return manifest.inputs[0]


def load_audit_data(path: Path | str, manifest: Manifest, bundle_dir: Path | None = None,
                    ) -> AuditData:
    """Read ``DATA.npz`` for ``manifest``'s model (see the module docstring).

    A model with several inputs is attacked through one (see :func:`attacked_input`);
    the others (an attention mask...) must be in the file under their own names.

    Raises:
        AuditError: the file is missing or unreadable, or the arrays do not match the
            model's inputs.
    """
    path = Path(path)
    spec = attacked_input(manifest)
    try:
        npz = dict(np.load(path, allow_pickle=False))
    except (OSError, ValueError) as e:
        raise AuditError(f"cannot read audit data {path}: {e}") from e
    extra: dict[str, np.ndarray] = {}
    for other in manifest.inputs:
        if other.name == spec.name:
            continue
        if other.name not in npz:
            raise AuditError(f"{path}: the model also takes {other.name!r}; add it to the "
                             f"data file (found {sorted(npz)})")
        extra[other.name] = np.asarray(npz.pop(other.name)).astype(other.dtype)
        _check_shape(path, other.name, extra[other.name], other.shape)
    desc_base = f"{path.name} (sha256 {_sha(path)})"
    is_int = not spec.dtype.startswith("float")
    if "tokens" in npz or is_int:
        tokens = npz.get("tokens", npz.get(spec.name))
        if tokens is None or tokens.ndim != 2 or tokens.dtype.kind not in "iu":
            raise AuditError(f"{path}: text data needs 'tokens' as (N, seq) integer ids")
        table = npz.get("embedding")
        if table is None:
            table = graph_embedding(bundle_dir, manifest, spec.name)
        table = np.asarray(table, np.float32)
        if tokens.min() < 0 or tokens.max() >= len(table):
            raise AuditError(f"{path}: token ids outside the embedding table (0..{len(table) - 1})")
        target = table[tokens]
        feed = tokens.astype(spec.dtype) if is_int else target
        _check_shape(path, spec.name, feed, spec.shape)
        _check_rows(path, feed, extra)
        return AuditData(spec.name, {spec.name: feed, **extra}, target, "tokens",
                         f"{desc_base}: {len(tokens)} sequences of {tokens.shape[1]} tokens, "
                         f"vocabulary {len(table)}", not is_int,
                         float(target.max() - target.min()), tokens.astype(np.int64), table)
    if spec.name in npz:
        x = npz[spec.name]
    elif len(npz) == 1:
        x = next(iter(npz.values()))
    else:
        raise AuditError(f"{path}: no array named {spec.name!r} (found {sorted(npz)})")
    x = np.asarray(x, np.float32)
    if x.ndim != 4:
        raise AuditError(f"{path}: image data must be (N, C, H, W), got shape {x.shape}; "
                         "text data needs 'tokens' and 'embedding'")
    _check_shape(path, spec.name, x, spec.shape)
    _check_rows(path, x, extra)
    return AuditData(spec.name, {spec.name: x, **extra}, x, "image",
                     f"{desc_base}: {len(x)} images {list(x.shape[1:])}", True,
                     float(x.max() - x.min()) or 1.0)


def _check_rows(path: Path, x: np.ndarray, extra: dict[str, np.ndarray]) -> None:
    for name, arr in extra.items():
        if len(arr) != len(x):
            raise AuditError(f"{path}: {name!r} has {len(arr)} samples, the attacked input "
                             f"{len(x)}")


def _check_shape(path: Path, name: str, x: np.ndarray, shape: list[int]) -> None:
    want = list(shape[1:])
    if list(x.shape[1:]) != want:
        raise AuditError(f"{path}: {name!r} samples are {list(x.shape[1:])}, the model takes "
                         f"{want}")
    if len(x) < 20:
        raise AuditError(f"{path}: {len(x)} samples are too few to audit (need at least 20)")


def digits_images(shape: tuple[int, int, int] = (1, 8, 8)) -> np.ndarray:
    """scikit-learn's 1797 8x8 digits in [0, 1] as ``(N, C, H, W)``: upscaled by pixel
    repetition to ``H x W`` (multiples of 8) and repeated over ``C`` channels, so a zoo
    image model sees real images offline."""
    from sklearn.datasets import load_digits

    c, h, w = shape
    if h % 8 or w % 8:
        raise AuditError(f"digit images upscale by whole factors: H and W must be multiples "
                         f"of 8, not {h}x{w}")
    x = load_digits().images.astype(np.float32) / 16.0
    x = np.kron(x, np.ones((1, h // 8, w // 8), np.float32))
    return np.ascontiguousarray(np.repeat(x[:, None], c, axis=1))


def token_data(samples: int, seq: int, dim: int, vocab: int = 128, seed: int = 0,
               ) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic text: ``(tokens (samples, seq), embedding (vocab, dim))``.

    Token frequencies follow Zipf's law (as words do) and the table is Gaussian with unit
    variance per dimension, like a trained embedding's scale; seeded, offline.
    """
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, vocab + 1)
    tokens = rng.choice(vocab, size=(samples, seq), p=p / p.sum())
    table = rng.standard_normal((vocab, dim)).astype(np.float32)
    return tokens.astype(np.int64), table
