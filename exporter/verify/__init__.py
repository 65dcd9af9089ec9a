"""Verification of exported artifacts against the eager model (``exporter.verify.run``),
with its data, comparisons, metrics and reports in the modules beside it.

The package's names are imported on first use: ``run`` needs torch (the eager model), and the
deployment side (``bench --web``) imports ``exporter.verify.compare``, which does not.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__all__ = ["ArtifactResult", "Reference", "VerifyReport", "default_artifacts", "verify"]

if TYPE_CHECKING:
    from exporter.verify.run import ArtifactResult, Reference, VerifyReport, default_artifacts, verify


def __getattr__(name: str) -> object:
    if name in __all__:
        return getattr(importlib.import_module("exporter.verify.run"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
