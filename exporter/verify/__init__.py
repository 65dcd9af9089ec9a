"""Verification of exported artifacts against the eager model (``exporter.verify.run``),
with its data, comparisons, metrics and reports in the modules beside it."""

from exporter.verify.run import ArtifactResult, Reference, VerifyReport, default_artifacts, verify

__all__ = ["ArtifactResult", "Reference", "VerifyReport", "default_artifacts", "verify"]
