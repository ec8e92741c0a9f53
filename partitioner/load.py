"""Resolve a model reference (zoo name, .onnx file, ``pkg.mod:callable``, nn.Module) to ONNX.

torch models are exported with the TorchScript-based exporter (fast, stable tensor names)
and, should that fail, with the dynamo exporter; both at opset >= 17 with a dynamic batch
dimension 0 on every input and output. Failures are re-raised with advice.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import inspect
import io
import json
import logging
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from partitioner import stages, zoo
from partitioner.errors import ExportError, GraphError, InputError, UnknownModel
from partitioner.inputs import InputDecl, example_feeds, model_inputs, parse_input, vocab_sizes

log = logging.getLogger(__name__)

OPSET = 17
BATCH_PARAM = "batch"


@dataclass(frozen=True)
class Loaded:
    """A model ready for analysis.

    Attributes:
        model: ONNX model with a dynamic batch dim 0 on inputs and outputs.
        source: what the user named ("zoo:digits_cnn", a file name, "pkg.mod:fn").
        name: default bundle name.
        task: "classification" or "other".
        examples: ``(batch, seed) -> {input name: array}`` representative inputs, or None
            (then random inputs are drawn from the input specs).
        heldout: ``(inputs, labels)`` for accuracy on real data, or None.
        inputs: the model's input declarations (example shapes, dtypes, dynamic dims).
        vocab: integer inputs that index an embedding table -> its number of rows.
    """

    model: onnx.ModelProto
    source: str
    name: str
    task: str
    examples: Callable[[int, int], dict[str, np.ndarray]] | None = None
    heldout: tuple[dict[str, np.ndarray], np.ndarray] | None = None
    inputs: tuple[InputDecl, ...] = ()
    vocab: dict[str, int] | None = None

    def random(self, batch: int, seed: int) -> dict[str, np.ndarray]:
        """Inputs the model accepts (see :func:`partitioner.inputs.example_feeds`)."""
        return example_feeds(self.inputs, batch, seed, self.vocab)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:300]


def as_decls(inputs: Sequence[Any] | None) -> list[InputDecl] | None:
    """Normalise shapes, ``NAME:SHAPE:DTYPE`` strings and :class:`InputDecl` objects."""
    if not inputs:
        return None
    out = []
    for x in inputs:
        if isinstance(x, InputDecl):
            out.append(x)
        elif isinstance(x, str):
            out.append(parse_input(x))
        else:
            dims = tuple(int(d) for d in x)
            if len(dims) == 0 or min(dims) <= 0:
                raise ValueError(f"input shapes must be positive and include the batch dim: "
                                 f"{[tuple(s) for s in inputs]}")
            out.append(InputDecl(None, dims))
    return out


def load(model: Any, inputs: Sequence[Any] | None, *,
         name: str | None = None, task: str | None = None,
         export_cache: Path | None = None) -> Loaded:
    """Resolve ``model`` to ONNX.

    Args:
        inputs: per model input a shape (float32, batch first), a ``NAME:SHAPE:DTYPE``
            string or an :class:`InputDecl`; None for zoo and ONNX models.
        export_cache: a directory keeping zoo models' ONNX exports, keyed by the zoo
            sources and the torch/onnx versions (a re-run skips building and exporting).

    Raises:
        UnknownModel: unknown zoo name, unimportable callable, missing or non-ONNX file.
        ExportError: forward or export failed (advice in the message).
        GraphError / InputError: inputs that do not match an ONNX model's inputs.
    """
    decls = as_decls(inputs)
    if isinstance(model, str) and model.startswith("zoo:"):
        return _load_zoo(model[4:], decls, name, task, export_cache)
    if isinstance(model, (str, Path)) and (str(model).endswith(".onnx") or Path(model).is_file()):
        return _load_onnx(Path(model), decls, name, task)
    if isinstance(model, str):
        module = _import_callable(model)
        return _from_module(module, decls, model, name or model.split(":")[-1], task)
    try:
        import torch
    except ImportError as e:  # pragma: no cover - partition extra always has torch
        raise UnknownModel("a model object needs torch (pip install tiersplit[partition])") from e
    if isinstance(model, torch.nn.Module):
        return _from_module(model, decls, type(model).__name__, name or type(model).__name__,
                            task)
    raise UnknownModel(f"cannot partition a {type(model).__name__}: pass 'zoo:<name>', a path "
                       "to an .onnx file, 'package.module:callable' or a torch.nn.Module")


def _zoo_export_key(zname: str) -> str:
    """What a zoo export depends on: the zoo's code, this exporter, torch and onnx."""
    import torch

    from partitioner import real_models

    h = hashlib.sha256(f"{zname}|{torch.__version__}|{onnx.__version__}".encode())
    for mod in (zoo, real_models, sys.modules[__name__]):
        h.update(Path(inspect.getfile(mod)).read_bytes())
    return h.hexdigest()[:32]


def _cached_export(zm: Any, cache: Path | None, export: Callable[[], Loaded]) -> Loaded:
    if cache is None:
        return export()
    base = cache / f"{zm.name}-{_zoo_export_key(zm.name)}"
    onnx_path, meta_path = base.with_suffix(".onnx"), base.with_suffix(".json")
    try:
        meta = json.loads(meta_path.read_text())
        model = onnx.load(str(onnx_path))
        decls = tuple(InputDecl(d["name"], tuple(d["shape"]), d["dtype"],
                                tuple((int(a), str(n)) for a, n in d["dynamic"]))
                      for d in meta["inputs"])
        log.debug("zoo:%s export from the cache", zm.name)
        stages.current().count("cache hits: export")
        return Loaded(model=model, source=f"zoo:{zm.name}", name=zm.name, task=zm.task,
                      inputs=decls, vocab=vocab_sizes(model))
    except Exception as e:  # missing or damaged entry: a miss, never an error
        if onnx_path.exists() or meta_path.exists():
            log.warning("cached export of zoo:%s unusable (%s); exporting again", zm.name, e)
    stages.current().count("cache misses: export")
    loaded = export()
    try:
        cache.mkdir(parents=True, exist_ok=True)
        tmp = onnx_path.with_suffix(f".tmp{os.getpid()}")
        onnx.save(loaded.model, str(tmp))
        os.replace(tmp, onnx_path)
        meta_path.write_text(json.dumps({"inputs": [
            {"name": d.name, "shape": list(d.shape), "dtype": d.dtype,
             "dynamic": [list(x) for x in d.dynamic]} for d in loaded.inputs]}))
    except OSError as e:  # the cache is an optimisation: a full disk costs the reuse only
        log.warning("cannot cache the export of zoo:%s: %s", zm.name, e)
    return loaded


def _load_zoo(zname: str, decls: list[InputDecl] | None, name, task,
              export_cache: Path | None = None) -> Loaded:
    zm = zoo.get(zname)
    if decls is not None and (len(decls) != len(zm.input_shapes) or any(
            tuple(a.shape[1:]) != tuple(b[1:])
            for a, b in zip(decls, zm.input_shapes, strict=False))):
        want = " ".join("--input-shape " + ",".join(map(str, s)) for s in zm.input_shapes)
        raise GraphError(f"wrong input shape for zoo:{zname}: got "
                         f"{[d.shape for d in decls]}, the model takes "
                         f"{zm.input_shapes} (use {want})")
    loaded = _cached_export(zm, export_cache, lambda: _from_module(
        zm.build(), zm.decls(), f"zoo:{zname}", zname, zm.task))

    def examples(batch: int, seed: int) -> dict[str, np.ndarray]:
        return dict(zip(zm.input_names, zm.example_inputs(batch, seed), strict=True))

    heldout = None
    if zname == "digits_cnn":
        x, y = zm.heldout()
        heldout = ({zm.input_names[0]: x}, y)
    return Loaded(model=loaded.model, source=loaded.source, name=name or zname,
                  task=task or zm.task, examples=examples, heldout=heldout, inputs=loaded.inputs,
                  vocab=loaded.vocab)


def _import_callable(ref: str) -> Any:
    if ":" not in ref:
        raise UnknownModel(f"cannot resolve model {ref!r}: expected 'zoo:<name>', a path to an "
                           ".onnx file, or 'package.module:callable'")
    mod_name, _, attr = ref.partition(":")
    if str(Path.cwd()) not in sys.path and "" not in sys.path:
        sys.path.insert(0, str(Path.cwd()))  # like `python -m`: the user's project is importable
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise UnknownModel(f"cannot import module {mod_name!r} for {ref!r}: {_first_line(e)}; "
                           "check the name and that it is on PYTHONPATH") from e
    try:
        fn = getattr(mod, attr)
    except AttributeError as e:
        raise UnknownModel(f"module {mod_name!r} has no attribute {attr!r}") from e
    try:
        import torch
    except ImportError as e:  # pragma: no cover
        raise UnknownModel("a callable model needs torch (pip install tiersplit[partition])") from e
    obj = fn if isinstance(fn, torch.nn.Module) else None
    if obj is None:
        if not callable(fn):
            raise UnknownModel(f"{ref!r} is not callable")
        try:
            obj = fn()
        except Exception as e:
            raise UnknownModel(f"{ref}() raised {type(e).__name__}: {_first_line(e)}") from e
    if not isinstance(obj, torch.nn.Module):
        raise UnknownModel(f"{ref}() returned {type(obj).__name__}, not a torch.nn.Module")
    return obj


def _from_module(module: Any, decls: list[InputDecl] | None, source: str, name: str,
                 task: str | None) -> Loaded:
    if not decls:
        raise ValueError(f"{source} is a torch model: give its example input shapes "
                         "(--input-shape 1,3,64,64, or --input input_ids:1,seq=128:int64, "
                         "once per input)")
    model, decls = _export(module, decls)
    vocab = vocab_sizes(model)
    return Loaded(model=model, source=source, name=name, task=task or "other",
                  inputs=tuple(decls), vocab=vocab)


class _SkipLegacy(Exception):
    """Internal: go straight to the dynamo exporter."""


def _forward_names(module: Any, n: int) -> list[str]:
    try:
        params = [p for p in inspect.signature(module.forward).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        params = []
    if len(params) >= n and all(p.name.isidentifier() for p in params[:n]):
        return [p.name for p in params[:n]]
    return ["input"] if n == 1 else [f"input{i}" for i in range(n)]


def export(module: Any, inputs: Sequence[Any],
           input_names: Sequence[str] | None = None, *,
           exporter: str = "auto") -> onnx.ModelProto:
    """Export an ``nn.Module`` to ONNX (opset >= 17, dynamic batch dim 0, and the
    declared dynamic dimensions).

    Args:
        inputs: per model input a shape (float32) or an :class:`InputDecl` (any dtype).
        exporter: "auto" (TorchScript exporter, then dynamo if that fails),
            "torchscript" or "dynamo".

    Raises:
        ExportError: the forward pass fails on the given inputs, or the exporter(s) fail.
    """
    decls = as_decls(inputs) or []
    if input_names:
        decls = [InputDecl(n, d.shape, d.dtype, d.dynamic)
                 for n, d in zip(input_names, decls, strict=True)]
    return _export(module, decls, exporter)[0]


def _export(module: Any, decls: list[InputDecl], exporter: str = "auto",
            ) -> tuple[onnx.ModelProto, list[InputDecl]]:
    if exporter not in ("auto", "torchscript", "dynamo"):
        raise ValueError(f"exporter must be auto, torchscript or dynamo, not {exporter!r}")
    import torch

    module.eval()
    if any(d.name is None for d in decls):
        names = _forward_names(module, len(decls))
        decls = [d if d.name else InputDecl(n, d.shape, d.dtype, d.dynamic)
                 for n, d in zip(names, decls, strict=True)]
    feeds = example_feeds(decls, decls[0].shape[0] if decls else 1, seed=0)
    args = tuple(torch.from_numpy(np.ascontiguousarray(feeds[d.name or ""])) for d in decls)
    described = ", ".join(f"{d.name} {d.dtype}{tuple(d.shape)}" for d in decls)
    try:
        with torch.no_grad():
            out = module(*args)
    except Exception as e:
        raise ExportError(f"the model's forward failed on inputs {described}: "
                          f"{type(e).__name__}: {_first_line(e)} — check --input-shape / "
                          "--input NAME:SHAPE:DTYPE (one per model input, batch first; token "
                          "ids are int64)") from e
    outs = out if isinstance(out, (tuple, list)) else [out]
    if not outs or not all(isinstance(o, torch.Tensor) for o in outs):
        raise ExportError("the model must return a tensor or a tuple/list of tensors, got "
                          f"{type(out).__name__}")
    in_names = [d.name or "" for d in decls]
    out_names = ["output"] if len(outs) == 1 else [f"output{i}" for i in range(len(outs))]
    dyn: dict[str, dict[int, str]] = {d.name or "": {0: BATCH_PARAM, **d.dynamic_axes}
                                      for d in decls}
    dyn.update({n: {0: BATCH_PARAM} for n in out_names})
    buf = io.BytesIO()
    try:
        if exporter == "dynamo":
            raise _SkipLegacy
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(module, args, buf, dynamo=False, opset_version=OPSET,
                              input_names=in_names, output_names=out_names,
                              dynamic_axes=dyn, do_constant_folding=True)
        return onnx.load_from_string(buf.getvalue()), decls
    except Exception as legacy_error:
        if exporter == "torchscript":
            raise ExportError(f"ONNX export failed: {type(legacy_error).__name__}: "
                              f"{_first_line(legacy_error)} — try exporter='dynamo'"
                              ) from legacy_error
        if not isinstance(legacy_error, _SkipLegacy):
            log.info("TorchScript export failed (%s); trying the dynamo exporter",
                     _first_line(legacy_error))
        try:
            batch = torch.export.Dim(BATCH_PARAM, min=1)
            syms: dict[str, Any] = {}
            shapes = []
            for d in decls:
                spec: dict[int, Any] = {0: batch}
                for axis, sym in d.dynamic:
                    spec[axis] = syms.setdefault(sym, torch.export.Dim(sym, min=2))
                shapes.append(spec)
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                prog = torch.onnx.export(
                    module, args, dynamo=True, opset_version=max(OPSET, 18),
                    input_names=in_names, output_names=out_names,
                    dynamic_shapes=tuple(shapes), verbose=False)
            return prog.model_proto, decls
        except Exception as e:
            raise ExportError(
                f"ONNX export failed: {type(e).__name__}: {_first_line(e)} — try a dynamic "
                "batch-friendly forward (reshape with -1 for the batch, no data-dependent "
                "Python control flow), or export to .onnx yourself (opset >= 17) and pass the "
                "file") from e


def _load_onnx(path: Path, decls: list[InputDecl] | None, name, task) -> Loaded:
    if not path.is_file():
        raise UnknownModel(f"no such model file: {path}")
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as e:
        raise UnknownModel(f"{path} is not a valid ONNX model: {_first_line(e)}") from e
    if not model.graph.node:
        raise UnknownModel(f"{path} is not a valid ONNX model: the graph has no nodes")
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 13:
        try:
            from onnx import version_converter

            model = version_converter.convert_version(model, OPSET)
        except Exception as e:
            raise GraphError(f"{path} uses opset {opset}; per-channel int8 needs >= 13 and "
                             f"conversion failed: {_first_line(e)} — re-export at opset 17") from e
    weights = {i.name for i in model.graph.initializer}
    real = [vi for vi in model.graph.input if vi.name not in weights]
    sizes: dict[str, tuple[int, ...]] = {}
    if decls is not None:
        if len(decls) != len(real):
            raise GraphError(f"wrong input shape: {path.name} has {len(real)} inputs "
                             f"({', '.join(v.name for v in real)}), got {len(decls)} shapes")
        for vi, d in zip(real, decls, strict=True):
            if d.name is not None and d.name != vi.name:
                raise InputError(f"{path.name} has no input {d.name!r} at that position "
                                 f"(inputs: {', '.join(v.name for v in real)})")
            dims = vi.type.tensor_type.shape.dim
            model_dims = [d.dim_value if d.HasField("dim_value") else None for d in dims]
            s = d.shape
            if len(model_dims) != len(s) or any(
                    m is not None and m != g for m, g in zip(model_dims[1:], s[1:], strict=True)):
                raise GraphError(f"wrong input shape for {vi.name!r}: got {tuple(s)}, the model "
                                 f"takes {tuple(d if d is not None else -1 for d in model_dims)}")
            sizes[vi.name] = tuple(s)
    for vi in [*real, *model.graph.output]:  # make dim 0 the dynamic batch
        dims = vi.type.tensor_type.shape.dim
        if len(dims):
            dims[0].Clear()
            dims[0].dim_param = BATCH_PARAM
    del model.graph.value_info[:]  # stale batch-1 shapes would contradict the dynamic batch
    found = model_inputs(model, sizes)
    if decls is not None:  # a declared dtype must be the model's
        for d, f in zip(decls, found, strict=True):
            if isinstance(d, InputDecl) and d.dtype != "float32" and d.dtype != f.dtype:
                raise InputError(f"input {f.name!r} of {path.name} is {f.dtype}, not {d.dtype}")
    return Loaded(model=model, source=path.name, name=name or path.stem, task=task or "other",
                  inputs=tuple(found), vocab=vocab_sizes(model))
