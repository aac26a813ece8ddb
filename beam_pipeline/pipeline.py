"""The pipeline graph: read tables -> select images -> link to ED stays -> records -> splits -> pixels -> outputs.

    Read* ──► SelectImages ──► LinkImagesToStays (CoGroupByKey on subject_id) ──► BuildRecord ──► AssignSplit
                                                                                                   │
    manifest/, tfrecords/, rejects/ ◄── WriteOutputs ◄── CountWritten ◄── ProcessImages (JPEG bytes) ◄┘
    metadata.json ◄── WriteMetadata (events of every stage, input checksums, files written)

Inputs are resolved and their headers checked before anything runs (``resolve_inputs``), so a wrong root or a
missing column fails at launch with the file and the column named.
"""

from __future__ import annotations

import apache_beam as beam

from beam_pipeline import accounting, mimic
from beam_pipeline.io.csv_tables import ReadMimicTable, resolve_and_check
from beam_pipeline.io.metadata import WriteMetadata
from beam_pipeline.io.outputs import WriteOutputs
from beam_pipeline.options import Config
from beam_pipeline.transforms.images import ImageSettings, ProcessImages, SelectImages
from beam_pipeline.transforms.join import LinkImagesToStays
from beam_pipeline.transforms.records import BuildRecord
from beam_pipeline.transforms.split import AssertPatientDisjoint, AssignSplit

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


def resolve_inputs(config: Config) -> dict[str, str]:
    """Table name -> input path, with every needed column checked; raises InputError naming file and column."""
    roots = {"cxr": config.mimic_cxr_root, "ed": config.mimic_ed_root, "iv": config.mimic_iv_root}
    return {table.name: resolve_and_check(roots[table.module], table) for table in tables_needed(config)}


def _key_by_subject(label: str, pcoll):
    return pcoll | label >> beam.Map(lambda row: (row["subject_id"], row))


def _stage(pcoll, label: str, dofn: beam.DoFn, main: str = "records"):
    """A stage: a DoFn whose outputs are its results plus the tagged rejects and events every stage has."""
    return pcoll | label >> beam.ParDo(dofn).with_outputs(accounting.REJECTS, accounting.EVENTS, main=main)


def build_pipeline(p: beam.Pipeline, config: Config, paths: dict[str, str]) -> None:
    reads = {name: p | f"Read {name}" >> ReadMimicTable(mimic.TABLES[name], path) for name, path in paths.items()}

    images = _stage(reads["cxr_metadata"].rows, "SelectImages", SelectImages(config.views), main="images")
    keyed = {"images": images.images | "KeyImages" >> beam.Map(lambda im: (im.subject_id, im))}
    for tag, table in JOIN_TABLES.items():
        if table.name in reads:
            keyed[tag] = _key_by_subject(f"Key {tag}", reads[table.name].rows)
    linked = keyed | "LinkImagesToStays" >> LinkImagesToStays(config.window_start_hours, config.window_end_hours)
    built = _stage(linked.linked, "BuildRecords", BuildRecord(config.uncertain_policy))
    split = _stage(built.records, "AssignSplits",
                   AssignSplit(config.split_strategy, config.split_salt, config.split_fractions))
    stages = list(reads.values()) + [images, linked, built, split]
    if config.images:
        settings = ImageSettings(config.image_size, config.resize_mode, config.image_format, config.jpeg_quality,
                                 config.edge_map)
        stages.append(_stage(split.records, "ProcessImages", ProcessImages(config.mimic_cxr_root, settings)))
    final = _stage(stages[-1].records, "CountWritten", accounting.CountWritten())
    stages.append(final)
    disjoint = final.records | "AssertPatientDisjoint" >> AssertPatientDisjoint()

    rejects = [stage[accounting.REJECTS] for stage in stages] | "AllRejects" >> beam.Flatten()
    events = [stage[accounting.EVENTS] for stage in stages] + [disjoint] | "AllEvents" >> beam.Flatten()
    input_files = [read.files for read in reads.values()] | "InputFiles" >> beam.Flatten()
    written = (final.records, rejects) | "WriteOutputs" >> WriteOutputs(
        config.output, config.target_shard_mb, config.compression)
    (events, input_files, written) | "WriteMetadata" >> WriteMetadata(config)
