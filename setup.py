"""Packages beam_pipeline for Dataflow workers (--setup_file) and for local editable installs."""

import re
from pathlib import Path

import setuptools

VERSION = re.search(r'__version__ = "([^"]+)"', Path("beam_pipeline/__init__.py").read_text()).group(1)

setuptools.setup(
    name="mimic-cxr-ed-beam",
    version=VERSION,
    description="Apache Beam pipeline: MIMIC-CXR-JPG x MIMIC-IV-ED -> leakage-safe multimodal TFRecords",
    packages=setuptools.find_packages(include=["beam_pipeline", "beam_pipeline.*"]),
    package_data={"beam_pipeline": ["resources/*.json", "resources/kb/*.jsonl"]},
    python_requires=">=3.10",
    # Workers run in the project's container image with requirements.txt installed; these are the imports the
    # pipeline itself needs, unpinned so --setup_file never fights the image's pins.
    install_requires=["apache-beam[gcp]", "google-crc32c", "protobuf"],
)
