"""ed_cxr: every frontal MIMIC-CXR image linked to the ED stay it was taken in, with a leakage-safe pseudo-note.

    Read* ──► SelectImages ──► LinkImagesToStays (CoGroupByKey on subject_id) ──► BuildRecord ──► FilterLeakage
                                                                                                      │
    AssignSplits ◄─ TokenizeAndRetrieve ◄── DeterministicBatches ◄────────────────────────────────────┘
        │  AssertPatientDisjoint, AssertUniqueKeys (must pass before any image is read)
        └──► WriteExamples: tfrecords/ (each shard's writer reads, preprocesses and appends one image at a time)
                  └──► written records ──► CountWritten ──► WriteOutputs: manifest/, rejects/, audit/
    metadata.json ◄── WriteMetadata (events of every stage, input checksums, model identities, files written,
                                     LeakageProbe: per-label AUROC of filtered/unfiltered notes vs structured data)

Anchor: the ED stay's ``intime``; window ``--window_start_hours <= study time - intime <= --window_end_hours``
(inclusive; the ED-specific rules of which stay wins are in ``transforms.join``). One record per image.
"""

from __future__ import annotations

import functools

import apache_beam as beam

from beam_pipeline import accounting, mimic
from beam_pipeline.cohorts import Cohort
from beam_pipeline.fileio.metadata import WriteMetadata, ed_document, ed_empty_message
from beam_pipeline.fileio.outputs import WRITTEN, Serialize, WriteExamples, WriteOutputs, example_plan
from beam_pipeline.fileio.sources import make_source
from beam_pipeline.options import Config
from beam_pipeline.pipeline import checks_before_images, gather, image_stage, key_by_subject, read_tables, stage
from beam_pipeline.transforms.examples import to_example
from beam_pipeline.transforms.images import SelectKeptImages
from beam_pipeline.transforms.join import REJECTED_LABELS, ROW_REJECTS, KeyLabelRejects, LinkImagesToStays
from beam_pipeline.transforms.leakage import AUDIT, FilterLeakage
from beam_pipeline.transforms.probe import UNFILTERED_TERMS, LeakageProbe
from beam_pipeline.transforms.records import BuildRecord
from beam_pipeline.transforms.split import AssignSplits, CountPatientsAndStudies
from beam_pipeline.transforms.stats import DescribeRecords
from beam_pipeline.transforms.text import DeterministicBatches, TextSettings, TokenizeAndRetrieve

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


def tables_needed(config: Config) -> list[mimic.Table]:
    tables = [mimic.CXR_METADATA, mimic.CXR_CHEXPERT, mimic.EDSTAYS, mimic.TRIAGE, mimic.VITALSIGN,
              mimic.MEDRECON, mimic.PYXIS]
    if config.mimic_iv_root:
        tables.append(mimic.PATIENTS)
    if config.split_strategy == "official":
        tables.append(mimic.CXR_SPLIT)
    return tables


def build(p: beam.Pipeline, config: Config, paths: dict[str, str], text: dict, base: str,
          fail_when_empty: bool = False) -> None:
    source = make_source(config.billing_project)
    reads = read_tables(p, paths, source)

    images = reads["cxr_metadata"].rows | "SelectImages" >> SelectKeptImages(config.views)
    keyed = {"images": images["images"] | "KeyImages" >> beam.Map(lambda im: (im.subject_id, im))}
    for tag, table in JOIN_TABLES.items():
        if table.name in reads:
            keyed[tag] = key_by_subject(f"Key {tag}", reads[table.name].rows)
    # Read rejects that the join can tie to images: those images are rejected for them, never counted as no_ed_stay,
    # written unlabelled or written without a row their record would hold (join.ROW_REJECTS).
    keyed[REJECTED_LABELS] = (reads[mimic.CXR_CHEXPERT.name][accounting.REJECTS]
                              | f"Key {REJECTED_LABELS}" >> KeyLabelRejects(images["images"]))
    for rejects in ROW_REJECTS:
        if rejects.table in reads:
            keyed[rejects.tag] = rejects.keyed(reads[rejects.table][accounting.REJECTS])
    linked = keyed | "LinkImagesToStays" >> LinkImagesToStays(config.window_start_hours, config.window_end_hours,
                                                                     config.within_ed_stay)
    built = stage(linked.linked, "BuildRecords", BuildRecord(config.uncertain_policy))
    filtered = built.records | "FilterLeakage" >> beam.ParDo(FilterLeakage(
        text["leakage_rules"]["rules"], config.redaction_token, config.leakage_audit)).with_outputs(
        accounting.REJECTS, accounting.EVENTS, AUDIT, UNFILTERED_TERMS, main="records")
    retrieval = text["retrieval"] or {}
    settings = TextSettings(config.tokenizer, config.tokenizer_revision, config.max_tokens,
                            retrieval.get("directory", ""), config.embedding_model, config.rag_top_k,
                            index_sha256=retrieval.get("index_sha256", ""),
                            tokenizer_sha256=text["tokenizer"]["sha256"])
    tokenized = stage(filtered.records | "BatchNotes" >> DeterministicBatches(config.text_batch_size),
                       "TokenizeAndRetrieve", TokenizeAndRetrieve(settings))
    split = tokenized.records | "AssignSplits" >> AssignSplits.for_run(config, reads)
    checked = checks_before_images(split.records, key=lambda r: r.dicom_id)
    image_settings, loader = image_stage(config, source)
    examples = split.records | "WriteExamples" >> WriteExamples(
        config.output, example_plan(config.target_shard_mb, image_settings), config.compression, loader,
        Serialize(to_example), key=lambda r: r.dicom_id, after=checked)
    final = stage(examples[WRITTEN], "CountWritten", accounting.CountWritten())
    described = stage(final.records, "DescribeRecords", DescribeRecords())
    patients = final.records | "CountPatientsAndStudies" >> CountPatientsAndStudies()
    rejects, events, input_files = gather(
        reads, [images, linked, built, filtered, tokenized, split, examples, final, described], [patients])
    outputs = {"records": final.records, "rejects": rejects}
    if config.leakage_audit:
        outputs["audit"] = filtered[AUDIT]
    files = (examples["files"], outputs | "WriteOutputs" >> WriteOutputs(config.output)) | "Written" >> beam.Flatten()
    probe = (final.records, filtered[UNFILTERED_TERMS]) | "LeakageProbe" >> LeakageProbe(config.redaction_token)
    (events, input_files, files, probe) | "WriteMetadata" >> WriteMetadata(
        config, base, functools.partial(ed_document, config, text), ed_empty_message, fail_when_empty)


def funnel(counts: dict, config: dict) -> str:
    """The stage funnel as a small aligned table. The lines under "kept views" add up to it; every line from
    "matched and written" down counts written records only (records rejected at a later stage are not in them)."""
    views = config["views"]
    split_text = " / ".join(f"{s} {counts['per_split'][s]}" for s in mimic.SPLITS)
    labels = counts["labels"]
    written_notes = counts["written_notes"]
    rows = [
        ("images in metadata", counts["images_total"], ""),
        ("  unreadable rows", counts["images_unreadable"], ""),
        ("  other views", counts["images_other_view"], ""),
        (f"  kept views ({','.join(views)})", counts["images_kept_view"], ""),
        ("    no ED stay in window", counts["no_ed_stay"], ""),
        ("    after ED departure, dropped", counts["dropped_after_ed_departure"], "only with --within_ed_stay"),
        ("    rejected", counts["rejected"], ""),
        *((f"      {reason}", n, "") for reason, n in counts["rejected_by_reason"].items()),
        ("    matched and written", counts["matched"], split_text),
        ("      of which without labels", labels.get("no_label_row", 0) + labels.get("all_blank", 0),
         "no CheXpert row {} / all blank {}".format(labels.get("no_label_row", 0), labels.get("all_blank", 0))),
        ("      of which after ED departure", counts["after_ed_departure"], ""),
        ("      of which notes redacted", written_notes["redacted"], "by the leakage filter"),
        ("      of which notes truncated", written_notes["truncated"], "at --max_tokens"),
        ("rejects written (all stages)", counts["rejects_total"], ""),
    ]
    return "\n".join(f"{name:<36}{n:>9}  {extra}".rstrip() for name, n, extra in rows)


COHORTS = {"ed_cxr": Cohort(
    name="ed_cxr",
    description="MIMIC-CXR-JPG x MIMIC-IV-ED, leakage-safe multimodal records",
    roots=("mimic_ed_root",),
    defaults={},
    tables=tables_needed,
    build=build,
    funnel=funnel,
    empty_message=ed_empty_message,
    uses_text=True,
)}
