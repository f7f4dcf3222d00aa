"""The one atomic-write helper and the strict-JSON conversion every output file goes through."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Callable, Union

__all__ = ["atomic_write", "jsonable"]


def atomic_write(
    path: Union[str, os.PathLike], data: Union[str, bytes, Callable[[Path], Any]]
) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and
    ``os.replace`` (atomic on POSIX): a reader sees the old file or the new one, never a
    half-written one. ``data`` is text (written as UTF-8), bytes, or a callable that writes
    the temporary path it is given (``lambda tmp: torch.save(state, tmp)``). Creates the
    parent folder; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        elif isinstance(data, (bytes, bytearray)):
            tmp.write_bytes(data)
        else:
            data(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def jsonable(value: Any) -> Any:
    """``value`` with non-finite floats replaced by ``None`` (strict JSON), recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value
