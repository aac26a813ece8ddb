"""Beam pipeline that links MIMIC-CXR-JPG chest X-rays to MIMIC-IV-ED stays as leakage-safe training records."""

__version__ = "0.1.0"
