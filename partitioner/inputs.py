"""Model inputs: declarations (``NAME:SHAPE:DTYPE``), example data that respects the dtype,
and checks of user-given data against what the model takes.

Text models read int64 token ids and a 0/1 attention mask whose sequence length varies per
request; image models read float tensors of a fixed size. One declaration covers both: a
name, an example shape (batch first), a dtype, and which non-batch dimensions are dynamic.
Random example data stays inside what the model accepts: token ids below the vocabulary
size (read from the embedding table the ids index), masks of ones with random padding.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from contract.dtypes import UnknownDType, by_name
from partitioner.errors import InputError

__all__ = ["DEFAULT_DYNAMIC_SIZE", "InputDecl", "check_feeds", "example_feeds", "model_inputs",
           "parse_input", "vocab_sizes"]

DEFAULT_DYNAMIC_SIZE = 16  # example size of a symbolic non-batch dimension nobody sized
_DIM = re.compile(r"^(?:([A-Za-z_][A-Za-z0-9_]*)=)?(\d+)$")
_INT_KINDS = "iub"


@dataclass(frozen=True, slots=True)
class InputDecl:
    """One model input.

    Attributes:
        name: the input's name (None: positional, from ``--input-shape``).
        shape: example shape, batch first (the batch size itself is not used).
        dtype: numpy dtype name ("float32", "int64", "bool"...).
        dynamic: non-batch dimensions whose size varies per request, each with its
            symbolic name (dims of several inputs sharing a name must agree).
    """

    name: str | None
    shape: tuple[int, ...]
    dtype: str = "float32"
    dynamic: tuple[tuple[int, str], ...] = ()

    @property
    def dynamic_axes(self) -> dict[int, str]:
        return dict(self.dynamic)


def parse_input(text: str) -> InputDecl:
    """Parse ``[NAME:]SHAPE[:DTYPE]``; SHAPE is ``1,seq=32`` (``seq=`` marks a dynamic dim).

    Raises:
        InputError: with the expected syntax.
    """
    parts = text.strip().split(":")
    hint = (f"{text!r} is not an input like input_ids:1,seq=128:int64 (NAME:SHAPE:DTYPE, batch "
            "first; NAME=SIZE marks a dynamic dimension)")
    if len(parts) > 3 or not parts[-1 if len(parts) < 3 else 1]:
        raise InputError(hint)
    name: str | None = None
    dtype = "float32"
    if len(parts) == 3:
        name, shape_text, dtype = parts
    elif len(parts) == 2:
        if _looks_like_shape(parts[0]):
            shape_text, dtype = parts
        else:
            name, shape_text = parts
    else:
        shape_text = parts[0]
    dims: list[int] = []
    dynamic: list[tuple[int, str]] = []
    for i, d in enumerate(shape_text.replace("x", ",").split(",")):
        m = _DIM.match(d.strip())
        if not m or int(m.group(2)) <= 0:
            raise InputError(hint)
        dims.append(int(m.group(2)))
        if m.group(1):
            if i == 0:
                raise InputError(f"{text!r}: dimension 0 is always the dynamic batch; name "
                                 "only the other dynamic dimensions")
            dynamic.append((i, m.group(1)))
    try:
        dtype = by_name(dtype.strip()).name
    except UnknownDType as e:
        raise InputError(f"{text!r}: {e}") from None
    if name is not None and not name.strip():
        raise InputError(hint)
    return InputDecl(name=name.strip() if name else None, shape=tuple(dims), dtype=dtype,
                     dynamic=tuple(dynamic))


def _looks_like_shape(text: str) -> bool:
    return all(_DIM.match(d.strip()) for d in text.replace("x", ",").split(",") if d) and bool(
        text)


def model_inputs(model: onnx.ModelProto,
                 sizes: Mapping[str, Sequence[int]] | None = None) -> list[InputDecl]:
    """The declarations of an ONNX model's real inputs.

    Symbolic non-batch dimensions are dynamic; their example size comes from ``sizes``
    (shape at batch 1 per input, e.g. from calibration data) or defaults to
    :data:`DEFAULT_DYNAMIC_SIZE`.
    """
    weights = {i.name for i in model.graph.initializer}
    out = []
    for vi in model.graph.input:
        if vi.name in weights:
            continue
        tt = vi.type.tensor_type
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type)).name
        given = list((sizes or {}).get(vi.name, ()))
        dims: list[int] = []
        dynamic: list[tuple[int, str]] = []
        for i, d in enumerate(tt.shape.dim):
            if i == 0:
                dims.append(1)
                continue
            if d.HasField("dim_value") and d.dim_value > 0:
                dims.append(int(d.dim_value))
                continue
            size = given[i] if i < len(given) else DEFAULT_DYNAMIC_SIZE
            dims.append(int(size))
            dynamic.append((i, d.dim_param or f"{vi.name}_{i}"))
        out.append(InputDecl(vi.name, tuple(dims), "bool" if dtype == "bool" else dtype,
                             tuple(dynamic)))
    return out


def vocab_sizes(model: onnx.ModelProto) -> dict[str, int]:
    """Integer inputs that index an embedding table: input name -> rows of the table.

    Follows Cast/Unsqueeze/Reshape/Identity from the input to a ``Gather`` whose data is a
    weight; the smallest table read wins (ids must be valid for every table they index).
    """
    weights = {w.name: tuple(w.dims) for w in model.graph.initializer}
    passthrough = {"Cast", "Unsqueeze", "Reshape", "Identity", "Squeeze", "Flatten"}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for x in n.input:
            consumers.setdefault(x, []).append(n)
    out: dict[str, int] = {}
    for vi in model.graph.input:
        if vi.name in weights:
            continue
        stack, seen = [vi.name], set()
        while stack:
            t = stack.pop()
            if t in seen:
                continue
            seen.add(t)
            for n in consumers.get(t, ()):
                if n.op_type == "Gather" and len(n.input) > 1 and n.input[1] == t \
                        and n.input[0] in weights and weights[n.input[0]]:
                    rows = int(weights[n.input[0]][0])
                    out[vi.name] = min(rows, out.get(vi.name, rows))
                elif n.op_type in passthrough:
                    stack.extend(o for o in n.output if o)
    return out


def _is_mask(decl: InputDecl) -> bool:
    return decl.dtype == "bool" or "mask" in (decl.name or "").lower()


def example_feeds(decls: Sequence[InputDecl], batch: int, seed: int,
                  vocab: Mapping[str, int] | None = None) -> dict[str, np.ndarray]:
    """Random inputs that the model accepts: floats ~ N(0, 1), token ids within the
    vocabulary, masks of ones followed by random padding zeros, small integers otherwise.

    Inputs sharing a dynamic dimension get padding of the same length per sample, so a
    mask always matches its ids.
    """
    rng = np.random.default_rng(seed)
    vocab = vocab or {}
    lengths: dict[str, np.ndarray] = {}
    feeds: dict[str, np.ndarray] = {}
    for i, d in enumerate(decls):
        name = d.name or f"input{i}"
        shape = (batch, *d.shape[1:])
        np_dtype = by_name(d.dtype).numpy
        if np_dtype.kind == "f":
            feeds[name] = rng.standard_normal(shape).astype(np_dtype)
            continue
        if _is_mask(d) and len(shape) >= 2:
            axis = max(d.dynamic_axes, default=len(shape) - 1)
            key = d.dynamic_axes.get(axis, f"{name}_{axis}")
            size = shape[axis]
            if key not in lengths:
                lengths[key] = rng.integers(max(1, size // 2), size + 1, batch)
            idx = np.arange(size).reshape([size if a == axis else 1
                                           for a in range(len(shape))])
            keep = idx < lengths[key].reshape([batch] + [1] * (len(shape) - 1))
            feeds[name] = np.broadcast_to(keep, shape).astype(np_dtype)
            continue
        high = vocab.get(name, 4)
        ids = rng.integers(0, high, shape)
        if name in vocab and high > 200:  # avoid [PAD]/[CLS]-like low ids dominating
            ids = rng.integers(min(100, high - 1), high, shape)
        feeds[name] = ids.astype(np_dtype)
    return feeds


def check_feeds(decls: Sequence[InputDecl], arrays: Mapping[str, np.ndarray], what: str,
                ) -> dict[str, np.ndarray]:
    """Check user data against the declarations; return it in the model's dtypes.

    Integer data for integer inputs is cast within its kind (int32 ids for an int64
    input); float data for an integer input, or the reverse, is refused, as is a sample
    shape that differs in a fixed dimension, or inputs that share a dynamic dimension
    (ids and their mask) with different sizes there.

    Raises:
        InputError: naming the input and what the model takes.
    """
    out: dict[str, np.ndarray] = {}
    shared: dict[str, tuple[str, int]] = {}
    for d in decls:
        name = d.name or ""
        if name not in arrays:
            raise InputError(f"{what} has no array for input {name!r} (has: "
                             f"{', '.join(arrays) or 'nothing'})")
        a = np.asarray(arrays[name])
        want = by_name(d.dtype).numpy
        if (a.dtype.kind == "f") != (want.kind == "f") or (
                want.kind == "b" and a.dtype.kind not in _INT_KINDS):
            raise InputError(f"{what}: input {name!r} is {a.dtype.name}, the model takes "
                             f"{d.dtype} — convert it (e.g. token ids to int64)")
        if a.ndim != len(d.shape):
            raise InputError(f"{what}: input {name!r} has samples of shape {a.shape[1:]}, the "
                             f"model takes {_fmt(d)}")
        for axis in range(1, a.ndim):
            sym = d.dynamic_axes.get(axis)
            if sym is None:
                if a.shape[axis] != d.shape[axis]:
                    raise InputError(f"{what}: input {name!r} has samples of shape "
                                     f"{a.shape[1:]}, the model takes {_fmt(d)}")
                continue
            other = shared.setdefault(sym, (name, a.shape[axis]))
            if other[1] != a.shape[axis]:
                raise InputError(f"{what}: input {name!r} has {a.shape[axis]} along dimension "
                                 f"{sym!r}, input {other[0]!r} has {other[1]}; inputs sharing "
                                 "a dimension (ids and their mask) must match")
        if want.kind in _INT_KINDS and a.dtype.kind in _INT_KINDS and a.dtype != want:
            if want.kind == "b" and not np.isin(a, (0, 1)).all():
                raise InputError(f"{what}: input {name!r} must be 0/1 (a mask)")
            a = a.astype(want)
        elif a.dtype != want:
            a = a.astype(want)
        out[name] = np.ascontiguousarray(a)
    return out


def _fmt(d: InputDecl) -> str:
    dyn = d.dynamic_axes
    dims = [f"{dyn[i]}" if i in dyn else str(s) for i, s in enumerate(d.shape)][1:]
    return f"({', '.join(dims)}{',' if len(dims) == 1 else ''}) {d.dtype}"
