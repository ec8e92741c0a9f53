"""Sample files users hand to several commands (calibration data for ``tiersplit
partition``, held-back data for the cascade tuner): one ``.npz`` convention, read one way.

Arrays are matched to a model's inputs by input name, else by position (``arr_0``, ``arr_1``
... as ``np.savez`` names unnamed arrays), else a single array feeds a single input. Pickled
objects are never loaded: a sample file is data, not code.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["read_npz_inputs"]


def read_npz_inputs(path: Path, names: Sequence[str], what: str) -> dict[str, np.ndarray]:
    """One array per name in ``names`` from the ``.npz`` at ``path``.

    ``what`` names the file's role in messages ("calibration data", "held-back data").
    Shapes and dtypes are the caller's to check: only it knows the model.

    Raises:
        ValueError: the file cannot be read as an ``.npz`` without pickles, or it has no
            array for one of ``names`` (the message lists the arrays it has).
    """
    try:
        with np.load(path, allow_pickle=False) as z:
            raw = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read {what} {path}: {e}") from e
    out: dict[str, np.ndarray] = {}
    for i, name in enumerate(names):
        if name in raw:
            out[name] = raw[name]
        elif f"arr_{i}" in raw:
            out[name] = raw[f"arr_{i}"]
        elif len(names) == 1 and len(raw) == 1:
            out[name] = next(iter(raw.values()))
        else:
            raise ValueError(f"{what} {path} has no array for input {name!r} (has: "
                             f"{', '.join(raw) or 'nothing'})")
    return out
