"""The pure core's optional C helpers (``greentap/core/_offload.c``), chosen once.

Checksums, cutting super-frames and merging segments are per-byte work that
the interpreter does slowly; the C twins do exactly what the Python
references in :mod:`~greentap.core.checksum`, :mod:`~greentap.core.segment`
and :mod:`~greentap.core.coalesce` do (tests/unit/test_offload_twins.py
compares them).  ``GREENTAP_PURE_PYTHON=1`` keeps the references, as it
does for the relay loop.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["REASON", "offload"]

offload: Any = None
REASON: str | None = None  # why the references run, or None

if os.environ.get("GREENTAP_PURE_PYTHON"):
    REASON = "GREENTAP_PURE_PYTHON is set"
else:
    try:
        from greentap.core import _offload as offload  # type: ignore[attr-defined,no-redef]
    except ImportError as exc:  # pragma: no cover - built wherever a compiler is
        REASON = f"the C extension greentap.core._offload was not built ({exc})"
