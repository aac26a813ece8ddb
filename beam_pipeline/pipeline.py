"""The pipeline graph: tables -> images x ED stays -> records -> text -> splits -> pixels -> outputs.

    Read* ──► SelectImages ──► LinkImagesToStays (CoGroupByKey on subject_id) ──► BuildRecord ──► FilterLeakage
                                                                                                      │
    AssignSplits ◄─ TokenizeAndRetrieve ◄── DeterministicBatches ◄────────────────────────────────────┘
        │  AssertPatientDisjoint, AssertUniqueKeys (must pass before any image is read)
        └──► WriteExamples: tfrecords/ (each shard's writer reads, preprocesses and appends one image at a time)
                  └──► written records ──► CountWritten ──► WriteOutputs: manifest/, rejects/, audit/
    metadata.json ◄── WriteMetadata (events of every stage, input checksums, model identities, files written,
                                     LeakageProbe: per-label AUROC of filtered/unfiltered notes vs structured data)

Inputs, models and the retrieval index are resolved before anything runs (``resolve_inputs``, ``resolve_text``), so
a wrong root, a missing column, an unloadable tokenizer or a mismatched index fails at launch with a clear message.
"""

from __future__ import annotations

import apache_beam as beam

import hashlib
import json

from beam_pipeline import accounting, kb, mimic, models
from beam_pipeline.fileio.csv_tables import InputError, ReadMimicTable, resolve_and_check
from beam_pipeline.fileio.metadata import WriteMetadata
from beam_pipeline.fileio.outputs import WRITTEN, WriteExamples, WriteOutputs
from beam_pipeline.fileio.sharded import AssertUniqueKeys
from beam_pipeline.fileio.sources import make_source
from beam_pipeline.options import Config
from beam_pipeline.transforms.images import ImageLoader, ImageSettings, SelectImages
from beam_pipeline.transforms.join import REJECTED_LABELS, REJECTED_STAYS, LinkImagesToStays
from beam_pipeline.transforms.leakage import AUDIT, FilterLeakage, rules_document
from beam_pipeline.transforms.probe import UNFILTERED_TERMS, LeakageProbe
from beam_pipeline.transforms.text import (CONTEXT_HEADER, DeterministicBatches, TextSettings, TokenizeAndRetrieve,
                                           effective_top_k)
from beam_pipeline.transforms.records import BuildRecord
from beam_pipeline.transforms.split import AssertPatientDisjoint, AssignSplits, CountPatientsAndStudies
from beam_pipeline.transforms.stats import DescribeRecords

JOIN_TABLES = {  # CoGroupByKey tag -> table keyed by subject_id
    "stays": mimic.EDSTAYS,
    "triage": mimic.TRIAGE,
    "vitals": mimic.VITALSIGN,
    "medrecon": mimic.MEDRECON,
    "pyxis": mimic.PYXIS,
    "labels": mimic.CXR_CHEXPERT,
    "patients": mimic.PATIENTS,
    "splits": mimic.CXR_SPLIT,
}
# CoGroupByKey tag -> table whose read rejects (with a subject_id) the join sees: their images are rejected for
# them, never counted as no_ed_stay or written unlabelled.
JOIN_REJECTS = {REJECTED_STAYS: mimic.EDSTAYS, REJECTED_LABELS: mimic.CXR_CHEXPERT}


def tables_needed(config: Config) -> list[mimic.Table]:
    tables = [mimic.CXR_METADATA, mimic.CXR_CHEXPERT, mimic.EDSTAYS, mimic.TRIAGE, mimic.VITALSIGN,
              mimic.MEDRECON, mimic.PYXIS]
    if config.mimic_iv_root:
        tables.append(mimic.PATIENTS)
    if config.split_strategy == "official":
        tables.append(mimic.CXR_SPLIT)
    return tables


def resolve_inputs(config: Config) -> dict[str, str]:
    """Table name -> input path, with every needed column checked; raises InputError naming file and column (or
    RequesterPaysError naming the bucket and the flag)."""
    roots = {"cxr": config.mimic_cxr_root, "ed": config.mimic_ed_root, "iv": config.mimic_iv_root}
    source = make_source(config.billing_project)
    return {table.name: resolve_and_check(roots[table.module], table, source) for table in tables_needed(config)}


def resolve_text(config: Config) -> dict:
    """Load the tokenizer and the rules, check the index against --embedding_model; their identities go to
    metadata.json. Raises InputError with the fix in the message."""
    try:
        tokenizer = models.load_tokenizer(config.tokenizer, config.tokenizer_revision)
        rules = rules_document(config.leakage_rules)
        retrieval = None
        directory = kb.index_directory(config.kb_index, config.embedding_model)
        if directory:
            manifest = kb.read_manifest(directory)
            if manifest["embedding_model"] != config.embedding_model:
                raise InputError(f"{config.kb_index} was built with {manifest['embedding_model']!r}; pass "
                                 f"--embedding_model={manifest['embedding_model']} or rebuild the index")
            retrieval = {"kb_index": config.kb_index, "directory": directory,
                         "embedding_model": config.embedding_model,
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
                              "rule_ids": [r["id"] for r in rules["rules"]],
                              "redaction_token": config.redaction_token},
            "retrieval": retrieval}


def _key_by_subject(label: str, pcoll):
    return pcoll | label >> beam.Map(lambda row: (row["subject_id"], row))


def _stage(pcoll, label: str, dofn: beam.DoFn, main: str = "records"):
    """A stage: a DoFn whose outputs are its results plus the tagged rejects and events every stage has."""
    return pcoll | label >> beam.ParDo(dofn).with_outputs(accounting.REJECTS, accounting.EVENTS, main=main)


def build_pipeline(p: beam.Pipeline, config: Config, paths: dict[str, str], text: dict, base: str,
                   fail_when_empty: bool = False) -> None:
    """``paths`` from resolve_inputs, ``text`` from resolve_text; the job writes into its run folder
    (``config.output``) and publishes it as ``base``/LATEST when complete and not empty (``fail_when_empty``: an
    empty run fails the job, for runners whose caller does not wait for the counts)."""
    source = make_source(config.billing_project)
    reads = {name: p | f"Read {name}" >> ReadMimicTable(mimic.TABLES[name], path, source)
             for name, path in paths.items()}

    images = _stage(reads["cxr_metadata"].rows, "SelectImages", SelectImages(config.views), main="images")
    keyed = {"images": images.images | "KeyImages" >> beam.Map(lambda im: (im.subject_id, im))}
    for tag, table in JOIN_TABLES.items():
        if table.name in reads:
            keyed[tag] = _key_by_subject(f"Key {tag}", reads[table.name].rows)
    for tag, table in JOIN_REJECTS.items():
        keyed[tag] = _key_by_subject(f"Key {tag}", reads[table.name][accounting.REJECTS]
                                     | f"Attributable {tag}" >> beam.Filter(lambda r: r["subject_id"] is not None))
    linked = keyed | "LinkImagesToStays" >> LinkImagesToStays(config.window_start_hours, config.window_end_hours,
                                                                     config.within_ed_stay)
    built = _stage(linked.linked, "BuildRecords", BuildRecord(config.uncertain_policy))
    filtered = built.records | "FilterLeakage" >> beam.ParDo(FilterLeakage(
        config.leakage_rules, config.redaction_token, config.leakage_audit)).with_outputs(
        accounting.REJECTS, accounting.EVENTS, AUDIT, UNFILTERED_TERMS, main="records")
    retrieval = text["retrieval"] or {}
    settings = TextSettings(config.tokenizer, config.tokenizer_revision, config.max_tokens, config.kb_index,
                            config.embedding_model, config.rag_top_k, index_sha256=retrieval.get("index_sha256", ""))
    tokenized = _stage(filtered.records | "BatchNotes" >> DeterministicBatches(config.text_batch_size),
                       "TokenizeAndRetrieve", TokenizeAndRetrieve(settings))
    split = tokenized.records | "AssignSplits" >> AssignSplits(config.split_strategy, config.split_salt,
                                                                config.split_fractions)
    checked = ((split.records | "AssertPatientDisjoint" >> AssertPatientDisjoint(),
                split.records | "RecordKeys" >> beam.Map(lambda r: r.dicom_id)
                | "AssertUniqueKeys" >> AssertUniqueKeys())
               | "ChecksBeforeImages" >> beam.Flatten())
    image_settings = loader = None
    if config.images:
        image_settings = ImageSettings(config.image_size, config.resize_mode, config.image_format,
                                       config.jpeg_quality, config.edge_map)
        loader = ImageLoader(config.mimic_cxr_root, image_settings, source)
    examples = split.records | "WriteExamples" >> WriteExamples(
        config.output, config.target_shard_mb, config.compression, loader, image_settings, after=checked)
    final = _stage(examples[WRITTEN], "CountWritten", accounting.CountWritten())
    described = _stage(final.records, "DescribeRecords", DescribeRecords())
    stages = list(reads.values()) + [images, linked, built, filtered, tokenized, split, examples, final, described]
    patients = final.records | "CountPatientsAndStudies" >> CountPatientsAndStudies()

    rejects = [stage[accounting.REJECTS] for stage in stages] | "AllRejects" >> beam.Flatten()
    events = [stage[accounting.EVENTS] for stage in stages] + [patients] | "AllEvents" >> beam.Flatten()
    input_files = [read.files for read in reads.values()] | "InputFiles" >> beam.Flatten()
    outputs = {"records": final.records, "rejects": rejects}
    if config.leakage_audit:
        outputs["audit"] = filtered[AUDIT]
    files = (examples["files"], outputs | "WriteOutputs" >> WriteOutputs(config.output)) | "Written" >> beam.Flatten()
    probe = (final.records, filtered[UNFILTERED_TERMS]) | "LeakageProbe" >> LeakageProbe(config.redaction_token)
    (events, input_files, files, probe) | "WriteMetadata" >> WriteMetadata(config, text, base, config.keep_runs,
                                                                           fail_when_empty)
