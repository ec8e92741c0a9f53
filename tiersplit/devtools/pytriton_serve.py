"""Serve a Triton model repository written by ``tiersplit cloud export-triton`` on a real
Triton Inference Server (PyTriton), each tail run by ONNX Runtime in a Python callable.

Runs under the PyTriton venv's interpreter (``.venv-triton``, numpy<2), NOT the project's:
it imports nothing of tiersplit. :mod:`tiersplit.devtools.triton_local` starts it with the
``LD_LIBRARY_PATH`` Triton's Python stub needs. Every model's ``config.pbtxt`` is parsed
with Triton's own protobuf schema and honoured: inputs/outputs, ``max_batch_size``,
``dynamic_batching.max_queue_delay_microseconds`` and ``instance_group.count``.

Prints ``READY grpc=<port> http=<port>`` once serving; stops cleanly on SIGTERM/SIGINT.

Usage: python _pytriton_serve.py --repo REPO --grpc-port P --http-port P --metrics-port P
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

import numpy as np
import onnxruntime as ort
from google.protobuf import text_format
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig
from tritonclient.grpc import model_config_pb2

_NP = {
    "TYPE_FP32": np.float32, "TYPE_FP16": np.float16, "TYPE_FP64": np.float64,
    "TYPE_INT8": np.int8, "TYPE_UINT8": np.uint8, "TYPE_INT16": np.int16,
    "TYPE_INT32": np.int32, "TYPE_INT64": np.int64, "TYPE_BOOL": np.bool_,
}


def _callable(session: ort.InferenceSession, outputs: list[str]):
    @batch
    def infer(**inputs: np.ndarray) -> dict[str, np.ndarray]:
        values = session.run(outputs, inputs)
        return dict(zip(outputs, values, strict=True))

    return infer


def _bind(triton: Triton, model_dir: Path, threads: int, providers: list[str]) -> list[str]:
    cfg = model_config_pb2.ModelConfig()
    text_format.Parse((model_dir / "config.pbtxt").read_text(), cfg)
    dtype_name = model_config_pb2.DataType.Name
    inputs = [Tensor(name=i.name, dtype=_NP[dtype_name(i.data_type)], shape=tuple(i.dims))
              for i in cfg.input]
    outputs = [Tensor(name=o.name, dtype=_NP[dtype_name(o.data_type)], shape=tuple(o.dims))
               for o in cfg.output]
    count = max(1, sum(g.count for g in cfg.instance_group) or 1)
    bound = []
    for vdir in sorted(p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()):
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        funcs = []
        for _ in range(count):
            s = ort.InferenceSession(str(vdir / "model.onnx"), opts,
                                     providers=providers)
            funcs.append(_callable(s, [o.name for o in cfg.output]))
        batcher = DynamicBatcher(max_queue_delay_microseconds=cfg.dynamic_batching
                                 .max_queue_delay_microseconds)
        triton.bind(model_name=cfg.name, infer_func=funcs if count > 1 else funcs[0],
                    inputs=inputs, outputs=outputs, model_version=int(vdir.name),
                    config=ModelConfig(max_batch_size=cfg.max_batch_size, batcher=batcher,
                                       batching=cfg.max_batch_size > 0))
        bound.append(f"{cfg.name}/{vdir.name}")
    return bound


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repo", type=Path, required=True)
    ap.add_argument("--grpc-port", type=int, required=True)
    ap.add_argument("--http-port", type=int, required=True)
    ap.add_argument("--metrics-port", type=int, required=True)
    ap.add_argument("--threads", type=int, default=0, help="ORT intra-op threads per instance")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    args = ap.parse_args()
    providers = ["CPUExecutionProvider"]
    if args.device == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    logging.basicConfig(level=logging.WARNING)
    config = TritonConfig(grpc_port=args.grpc_port, http_port=args.http_port,
                          metrics_port=args.metrics_port, http_address="127.0.0.1",
                          grpc_address="127.0.0.1", metrics_address="127.0.0.1",
                          exit_on_error=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with Triton(config=config) as triton:
        bound = []
        for model_dir in sorted(p for p in args.repo.iterdir() if (p / "config.pbtxt").exists()):
            bound += _bind(triton, model_dir, args.threads, providers)
        triton.run()
        # A leading newline: Triton's own log shares this pipe and may be mid-line.
        sys.stdout.write(f"\nREADY grpc={args.grpc_port} http={args.http_port} "
                         f"models={','.join(bound)} providers={','.join(providers)}\n")
        sys.stdout.flush()
        stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
