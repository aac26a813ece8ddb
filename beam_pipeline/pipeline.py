"""The engine every cohort shares: inputs and models resolved at launch, table reads, stages, and the dispatch.

``build_pipeline`` hands the graph to the chosen cohort (``beam_pipeline.cohorts``); a cohort composes the shared
pieces: ``read_tables`` (typed rows + rejects + checksums), ``stage`` (a DoFn with results, rejects and events),
``key_by_subject`` for its CoGroupByKey, the image stage inside ``fileio.outputs.WriteExamples``, splits
(``transforms.split``), ``WriteOutputs`` and ``WriteMetadata`` (accounting, publishing).

Inputs, models and the retrieval index are resolved before anything runs (``resolve_inputs``, ``resolve_text``), so
a wrong root, a missing column, an unloadable tokenizer or a mismatched index fails at launch with a clear message;
workers load the index directory resolved there (``index_for_remote_workers`` for a remote job's). A remote job's
inputs must be remote paths (``check_remote_inputs``): the launching machine could read a local one, its workers not.
The leakage rules are read once, at launch, and travel inside the graph: what metadata.json records is what workers
apply.
"""

from __future__ import annotations

import apache_beam as beam

import hashlib
import json

from beam_pipeline import accounting, cohorts, kb, mimic, models
from beam_pipeline.fileio.csv_tables import InputError, ReadMimicTable, resolve_and_check
from beam_pipeline.fileio.outputs import LOCAL_OUTPUT, is_local_path
from beam_pipeline.fileio.sharded import AssertUniqueKeys
from beam_pipeline.fileio.sources import make_source
from beam_pipeline.options import Config
from beam_pipeline.transforms.images import ImageLoader, ImageSettings
from beam_pipeline.transforms.leakage import rules_document
from beam_pipeline.transforms.split import AssertPatientDisjoint
from beam_pipeline.transforms.text import CONTEXT_HEADER, effective_top_k

# The input flags a remote job's workers open themselves (--output: fileio.outputs.check_output).
WORKER_INPUTS = ("mimic_cxr_root", "mimic_cxr_reports", "mimic_ed_root", "mimic_iv_root", "mimic_ecg_root")
# Read once by whatever launches the job; the graph carries their content to the workers (resolve_text).
LAUNCH_INPUTS = ("leakage_rules",)


def check_remote_inputs(config: Config, flex_launcher: bool = False) -> None:
    """For a remote job, before anything is read: a local input passes every check on the launching machine, then
    fails on every worker of the started (and billed) job. ``flex_launcher``: the job will be launched by a Flex
    Template's launcher VM, which cannot read this machine's files either. Raises InputError naming the flag."""
    for name in WORKER_INPUTS + (LAUNCH_INPUTS + ("output",) if flex_launcher else ()):
        path = getattr(config, name)
        if not path or not is_local_path(path):
            continue
        if name == "output":
            raise InputError(LOCAL_OUTPUT.format(path))
        reader = "remote workers" if name in WORKER_INPUTS else "the Flex Template launcher"
        raise InputError(f"--{name}={path} is a local path, which {reader} cannot read; use a gs:// path (copy it "
                         "to a bucket)")


def resolve_inputs(config: Config) -> dict[str, str]:
    """Table name -> input path, with every needed column checked, and the cohort's other inputs; raises InputError
    naming file and column (or RequesterPaysError naming the bucket and the flag)."""
    roots = {"cxr": config.mimic_cxr_root, "ed": config.mimic_ed_root, "iv": config.mimic_iv_root,
             "ecg": config.mimic_ecg_root}
    source = make_source(config.billing_project)
    cohort = cohorts.get(config.cohort)
    paths = {table.name: resolve_and_check(roots[table.module], table, source) for table in cohort.tables(config)}
    cohort.check_inputs(config, source)
    return paths


def resolve_text(config: Config) -> dict | None:
    """Load the tokenizer and the rules, check the index (its passages, and --embedding_model's fingerprint); their
    identities go to metadata.json. Raises InputError with the fix in the message. None for a cohort without text."""
    if not cohorts.get(config.cohort).uses_text:
        return None
    try:
        tokenizer = models.load_tokenizer(config.tokenizer, config.tokenizer_revision)
        rules = rules_document(config.leakage_rules)
        retrieval = None
        directory = kb.index_directory(config.kb_index, config.embedding_model)
        if directory:
            manifest = kb.check(directory, config.embedding_model)
            retrieval = {"kb_index": config.kb_index, "directory": directory,
                         "embedding_model": config.embedding_model,
                         "embedding_model_fingerprint": manifest["embedding_model_fingerprint"],
                         "top_k": effective_top_k(config.rag_top_k, manifest["count"]),
                         "passages": manifest["count"], "index_sha256": manifest["index_sha256"],
                         "passages_sha256": manifest["passages_sha256"],
                         "enhanced_format": f"note + blank line + '{CONTEXT_HEADER}' + one line per passage: "
                                            "'[i] title (source): text'"}
    except (OSError, ValueError) as err:
        raise InputError(str(err)) from None
    rules_json = json.dumps(rules, sort_keys=True).encode("utf-8")
    return {"tokenizer": models.tokenizer_identity(tokenizer, config.tokenizer, config.tokenizer_revision),
            "max_tokens": config.max_tokens,
            "leakage_rules": {"sha256": hashlib.sha256(rules_json).hexdigest(), "extra": config.leakage_rules,
                              "rules": rules["rules"],
                              "redaction_token": config.redaction_token},
            "retrieval": retrieval}


def index_for_remote_workers(text: dict | None, temp_location: str | None) -> dict | None:
    """``text`` with the retrieval directory that a remote job's workers load (``kb.for_remote_workers``), so none
    of them builds or looks for its own; InputError when that cannot be."""
    retrieval = (text or {}).get("retrieval")
    if not retrieval:
        return text
    try:
        directory = kb.for_remote_workers(retrieval["directory"], temp_location)
    except (OSError, ValueError) as err:
        raise InputError(str(err)) from None
    return {**text, "retrieval": {**retrieval, "directory": directory}}


def read_tables(p: beam.Pipeline, paths: dict[str, str], source, row_filters: dict | None = None) -> dict:
    """Table name -> its ReadMimicTable outputs (rows, rejects, events, files). ``row_filters``: table name ->
    (column, allowed raw values) applied before typing, e.g. labevents to a cohort's itemids."""
    row_filters = row_filters or {}
    return {name: p | f"Read {name}" >> ReadMimicTable(mimic.TABLES[name], path, source, row_filters.get(name))
            for name, path in paths.items()}


def key_by_subject(label: str, pcoll):
    return pcoll | label >> beam.Map(lambda row: (row["subject_id"], row))


def stage(pcoll, label: str, dofn: beam.DoFn, main: str = "records"):
    """A stage: a DoFn whose outputs are its results plus the tagged rejects and events every stage has."""
    return pcoll | label >> beam.ParDo(dofn).with_outputs(accounting.REJECTS, accounting.EVENTS, main=main)


def gather(reads: dict, stages: list, more_events: list = ()):
    """(rejects, events, input file records) of a graph: every read's and stage's tagged outputs flattened, plus
    ``more_events`` (e.g. patient counts), for WriteOutputs and WriteMetadata."""
    everything = list(reads.values()) + stages
    rejects = [s[accounting.REJECTS] for s in everything] | "AllRejects" >> beam.Flatten()
    events = [s[accounting.EVENTS] for s in everything] + list(more_events) | "AllEvents" >> beam.Flatten()
    input_files = [read.files for read in reads.values()] | "InputFiles" >> beam.Flatten()
    return rejects, events, input_files


def checks_before_images(records, key):
    """Patient-disjoint splits and unique record keys: both must pass before any image is read (``after`` of
    WriteExamples)."""
    return ((records | "AssertPatientDisjoint" >> AssertPatientDisjoint(),
             records | "RecordKeys" >> beam.Map(key) | "AssertUniqueKeys" >> AssertUniqueKeys())
            | "ChecksBeforeImages" >> beam.Flatten())


def image_stage(config: Config, source) -> tuple[ImageSettings | None, ImageLoader | None]:
    """The image settings and loader the shard writer uses, or (None, None) with --images=false."""
    if not config.images:
        return None, None
    settings = ImageSettings(config.image_size, config.resize_mode, config.image_format, config.jpeg_quality,
                             config.edge_map)
    return settings, ImageLoader(config.mimic_cxr_root, settings, source, config.image_read_ahead)


def build_pipeline(p: beam.Pipeline, config: Config, paths: dict[str, str], text: dict | None, base: str,
                   fail_when_empty: bool = False) -> None:
    """``paths`` from resolve_inputs, ``text`` from resolve_text; the chosen cohort builds the graph. The job
    writes into its run folder (``config.output``) and publishes it as ``base``/LATEST when complete and not empty
    (``fail_when_empty``: an empty run fails the job, for runners whose caller does not wait for the counts)."""
    cohorts.get(config.cohort).build(p, config, paths, text, base, fail_when_empty)
