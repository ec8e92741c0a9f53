"""A small ONNX -> torch interpreter for fp32 tails.

Why: the torch backend must run bundles that carry only ONNX tails (the partitioner
writes ``tail-<cut>.onnx``; a ``torch.export`` program is optional), ``onnx2torch`` is
not a dependency, and ``torch.onnx`` only exports. The tails the partitioner produces use a
modest set of standard operators (the zoo's CNNs, MLPs and transformer encoder), so we
interpret the graph node by node with ``torch.nn.functional``: eager, ``inference_mode``,
on CPU or CUDA. Unsupported operators are listed at load time, never at request time.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper

from contract.dtypes import UnknownDType, by_onnx

__all__ = ["SUPPORTED_OPS", "OnnxTorchProgram", "UnsupportedOnnx"]


class UnsupportedOnnx(Exception):
    """The graph uses operators or attributes this interpreter does not implement."""


def _torch_dtype(onnx_type: int) -> torch.dtype:
    """torch dtype of an ONNX element type, through the one dtype table."""
    try:
        return getattr(torch, by_onnx(onnx_type).name)
    except UnknownDType as e:
        raise UnsupportedOnnx(str(e)) from None


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for a in node.attribute:
        v = onnx.helper.get_attribute_value(a)
        if isinstance(v, bytes):
            v = v.decode()
        elif isinstance(v, onnx.TensorProto):
            v = numpy_helper.to_array(v)
        out[a.name] = v
    return out


def _ints(t: torch.Tensor | None) -> list[int] | None:
    return None if t is None else [int(x) for x in t.reshape(-1).tolist()]


def _pads(x: torch.Tensor, a: dict[str, Any], nd: int, fill: float = 0.0
          ) -> tuple[torch.Tensor, list[int]]:
    """ONNX pads -> (maybe padded input, symmetric torch padding)."""
    if a.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        raise UnsupportedOnnx(f"auto_pad={a['auto_pad']} (re-export with explicit pads)")
    pads = list(a.get("pads", [0] * (2 * nd)))
    begin, end = pads[:nd], pads[nd:]
    if begin == end:
        return x, begin
    torch_pad: list[int] = []
    for b, e in zip(reversed(begin), reversed(end), strict=True):
        torch_pad += [b, e]
    return F.pad(x, torch_pad, value=fill), [0] * nd


def _conv(x, w, b=None, **a):
    nd = w.dim() - 2
    x, pad = _pads(x, a, nd)
    fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[nd]
    return fn(x, w, b, stride=a.get("strides", 1), padding=pad,
              dilation=a.get("dilations", 1), groups=a.get("group", 1))


def _maxpool(x, **a):
    k = a["kernel_shape"]
    nd = len(k)
    x, pad = _pads(x, a, nd, fill=float("-inf"))
    fn = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[nd]
    return fn(x, k, stride=a.get("strides", k), padding=pad,
              dilation=a.get("dilations", 1), ceil_mode=bool(a.get("ceil_mode", 0)))


def _avgpool(x, **a):
    k = a["kernel_shape"]
    nd = len(k)
    include = bool(a.get("count_include_pad", 0))
    x, pad = _pads(x, a, nd)
    fn = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[nd]
    return fn(x, k, stride=a.get("strides", k), padding=pad,
              ceil_mode=bool(a.get("ceil_mode", 0)), count_include_pad=include)


def _gemm(a_, b_, c=None, alpha=1.0, beta=1.0, transA=0, transB=0):
    a_ = a_.t() if transA else a_
    b_ = b_.t() if transB else b_
    y = alpha * (a_ @ b_)
    return y + beta * c if c is not None else y


def _reduce(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    def op(x, axes_in=None, keepdims=1, axes=None, noop_with_empty_axes=0):
        ax = axes if axes is not None else _ints(axes_in)
        if not ax:
            if noop_with_empty_axes:
                return x
            ax = list(range(x.dim()))
        return fn(x, dim=tuple(ax), keepdim=bool(keepdims))
    return op


def _reduce_max(x, dim, keepdim):
    return torch.amax(x, dim=dim, keepdim=keepdim)


def _reshape(x, shape, allowzero=0):
    s = _ints(shape) or []
    if not allowzero:
        s = [x.shape[i] if d == 0 else d for i, d in enumerate(s)]
    return x.reshape(s)


def _flatten(x, axis=1):
    axis = axis % x.dim() if x.dim() else 0
    lead = 1
    for d in x.shape[:axis]:
        lead *= d
    return x.reshape(lead, -1)


def _squeeze(x, axes_in=None, axes=None):
    ax = axes if axes is not None else _ints(axes_in)
    if ax is None:
        return x.squeeze()
    for d in sorted((a % x.dim() for a in ax), reverse=True):
        x = x.squeeze(d)
    return x


def _unsqueeze(x, axes_in=None, axes=None):
    ax = axes if axes is not None else _ints(axes_in)
    rank = x.dim() + len(ax)
    for d in sorted(a % rank for a in ax):
        x = x.unsqueeze(d)
    return x


def _slice(x, starts, ends, axes=None, steps=None):
    st, en = _ints(starts), _ints(ends)
    ax = _ints(axes) or list(range(len(st)))
    sp = _ints(steps) or [1] * len(st)
    idx: list[Any] = [slice(None)] * x.dim()
    for s, e, a, p in zip(st, en, ax, sp, strict=True):
        if p <= 0:
            raise UnsupportedOnnx("Slice with non-positive steps")
        n = x.shape[a]
        idx[a % x.dim()] = slice(max(-n, min(s, n)), max(-n, min(e, n)), p)
    return x[tuple(idx)]


def _split(x, split=None, axis=0, num_outputs=None, _n=1):
    sizes = _ints(split)
    if sizes is None:
        n = num_outputs or _n
        size = -(-x.shape[axis] // n)
        return tuple(torch.split(x, size, dim=axis))
    return tuple(torch.split(x, sizes, dim=axis))


def _clip(x, lo=None, hi=None, min=None, max=None):
    lo_v = float(lo) if lo is not None else min
    hi_v = float(hi) if hi is not None else max
    return torch.clamp(x, lo_v, hi_v)


def _layernorm(x, scale, bias=None, axis=-1, epsilon=1e-5, stash_type=1):
    axis = axis % x.dim()
    return F.layer_norm(x, x.shape[axis:], scale, bias, epsilon)


def _batchnorm(x, scale, bias, mean, var, epsilon=1e-5, momentum=0.9, training_mode=0):
    return F.batch_norm(x, mean, var, scale, bias, False, 0.0, epsilon)


def _gelu(x, approximate="none"):
    return F.gelu(x, approximate=approximate)


def _softmax(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    def op(x, axis=-1):
        return fn(x, dim=axis)
    return op


def _gather(x, i, axis=0):
    axis = axis % x.dim()
    picked = torch.index_select(x, axis, i.reshape(-1) % x.shape[axis])
    return picked.reshape((*x.shape[:axis], *i.shape, *x.shape[axis + 1:]))


def _div(a, b):
    # ONNX Div on integers truncates (shape arithmetic relies on it); torch.div would not.
    if not a.is_floating_point() and not b.is_floating_point():
        return torch.div(a, b, rounding_mode="trunc")
    return torch.div(a, b)


def _cast(x, to):
    return x.to(_torch_dtype(to))


def _constant(value=None, value_float=None, value_floats=None, value_int=None,
              value_ints=None, _device=None):
    if value is not None:
        return torch.as_tensor(np.array(value), device=_device)
    for v, dt in ((value_float, torch.float32), (value_floats, torch.float32),
                  (value_int, torch.int64), (value_ints, torch.int64)):
        if v is not None:
            return torch.as_tensor(v, dtype=dt, device=_device)
    raise UnsupportedOnnx("Constant without a supported value attribute")


def _constant_of_shape(shape, value=None, _device=None):
    v = torch.as_tensor(np.array(value).reshape(-1)[0] if value is not None else 0.0,
                        device=_device)
    return torch.full(_ints(shape), v.item(), dtype=v.dtype, device=_device)


def _shape(x, start=0, end=None, _device=None):
    return torch.tensor(list(x.shape)[start:end], dtype=torch.int64, device=_device)


def _range(start, limit, delta, _device=None):
    return torch.arange(start.item(), limit.item(), delta.item(), device=_device)


_OPS: dict[str, Callable[..., Any]] = {
    "Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": _div,
    "Pow": torch.pow, "Sqrt": torch.sqrt, "Exp": torch.exp, "Log": torch.log,
    "Neg": torch.neg, "Abs": torch.abs, "Tanh": torch.tanh, "Sigmoid": torch.sigmoid,
    "Relu": F.relu, "Erf": torch.erf, "Reciprocal": torch.reciprocal,
    "Where": torch.where, "Equal": torch.eq, "Less": torch.lt, "Greater": torch.gt,
    "Not": torch.logical_not, "Min": torch.minimum, "Max": torch.maximum,
    "Identity": lambda x: x, "Dropout": lambda x, *_, **__: x,
    "LeakyRelu": lambda x, alpha=0.01: F.leaky_relu(x, alpha),
    "Elu": lambda x, alpha=1.0: F.elu(x, alpha),
    "HardSigmoid": lambda x, alpha=0.2, beta=0.5: torch.clamp(alpha * x + beta, 0, 1),
    "HardSwish": F.hardswish, "Gelu": _gelu, "Clip": _clip,
    "Softmax": _softmax(torch.softmax), "LogSoftmax": _softmax(torch.log_softmax),
    "Gemm": _gemm, "MatMul": torch.matmul, "Conv": _conv,
    "MaxPool": _maxpool, "AveragePool": _avgpool,
    "GlobalAveragePool": lambda x: x.mean(dim=tuple(range(2, x.dim())), keepdim=True),
    "GlobalMaxPool": lambda x: x.amax(dim=tuple(range(2, x.dim())), keepdim=True),
    "BatchNormalization": _batchnorm, "LayerNormalization": _layernorm,
    "Flatten": _flatten, "Reshape": _reshape,
    "Transpose": lambda x, perm=None: x.permute(perm) if perm else x.permute(
        *reversed(range(x.dim()))),
    "Concat": lambda *xs, axis: torch.cat(xs, dim=axis),
    "Squeeze": _squeeze, "Unsqueeze": _unsqueeze, "Slice": _slice, "Split": _split,
    "Gather": _gather,
    "Expand": lambda x, s: x * torch.ones(_ints(s), dtype=x.dtype, device=x.device),
    "ReduceMean": _reduce(torch.mean), "ReduceSum": _reduce(torch.sum),
    "ReduceMax": _reduce(_reduce_max), "Cast": _cast,
    "Constant": _constant, "ConstantOfShape": _constant_of_shape, "Shape": _shape,
    "Range": _range,
}
_NEEDS_DEVICE = {"Constant", "ConstantOfShape", "Shape", "Range"}
SUPPORTED_OPS = frozenset(_OPS)


class OnnxTorchProgram:
    """An ONNX graph compiled to a list of torch calls; weights live on ``device``."""

    def __init__(self, path: Path, device: torch.device) -> None:
        model = onnx.load(str(path))
        graph = model.graph
        bad = sorted({n.op_type for n in graph.node
                      if n.op_type not in _OPS or n.domain not in ("", "ai.onnx")})
        if bad:
            raise UnsupportedOnnx(f"operators not supported by the torch backend: {bad} "
                                  "(ship a tail-<cut>.pt2 torch.export program in the bundle, "
                                  "or use backend onnxruntime)")
        self.device = device
        self.consts: dict[str, torch.Tensor] = {
            i.name: torch.as_tensor(numpy_helper.to_array(i).copy(), device=device)
            for i in graph.initializer
        }
        self.inputs = [i.name for i in graph.input if i.name not in self.consts]
        self.outputs = [o.name for o in graph.output]
        self.nodes = [(n.op_type, list(n.input), list(n.output), _attrs(n))
                      for n in graph.node]

    def __call__(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        env: dict[str, Any] = dict(self.consts)
        env.update(feeds)
        env[""] = None
        for op, ins, outs, attrs in self.nodes:
            args = [env[i] for i in ins]
            # Optional trailing inputs that are absent are passed as None.
            kw = dict(attrs)
            if op in _NEEDS_DEVICE:
                kw["_device"] = self.device
            if op == "Split":
                kw["_n"] = len(outs)
            try:
                result = _OPS[op](*args, **kw)
            except UnsupportedOnnx:
                raise
            except (RuntimeError, TypeError, ValueError, IndexError) as e:
                raise UnsupportedOnnx(f"{op} node {outs[0]!r} failed: {e}") from e
            if len(outs) == 1:
                env[outs[0]] = result
            else:
                for name, value in zip(outs, result, strict=False):
                    env[name] = value
        return {o: env[o] for o in self.outputs}
