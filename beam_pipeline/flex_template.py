"""Dataflow Flex Template metadata, generated from Config so the template can never drift from the flags.

``python -m beam_pipeline.flex_template > templates/metadata.json`` regenerates the committed file; a test checks
that the committed file equals this output.
"""

from __future__ import annotations

import dataclasses
import json

from beam_pipeline import options

GCS_PATH = r"^gs:\/\/[^\n\r]+$"
PARAM_TYPES = {"mimic_cxr_root": "GCS_READ_FOLDER", "mimic_ed_root": "GCS_READ_FOLDER",
               "mimic_iv_root": "GCS_READ_FOLDER", "mimic_ecg_root": "GCS_READ_FOLDER", "output": "GCS_WRITE_FOLDER"}


def _parameter(field: dataclasses.Field) -> dict:
    meta = field.metadata
    by_cohort = options.cohort_defaults(field)
    # A defaultValue pre-fills the console's form, and a filled value overrides the chosen cohort's own default:
    # such flags get none, and their help lists each cohort's.
    help_text = meta["help"] + (" Default by cohort: " + "; ".join(f"{c} {v}" for c, v in by_cohort.items()) + "."
                                if by_cohort else "")
    parameter = {"name": field.name, "label": field.name.replace("_", " ").capitalize(), "helpText": help_text,
                 "isOptional": field.name not in options.REQUIRED_FLAGS}
    if field.name in PARAM_TYPES:
        parameter.update(paramType=PARAM_TYPES[field.name], regexes=[GCS_PATH])
    elif meta["choices"]:
        parameter.update(paramType="ENUM", enumOptions=[{"value": c} for c in meta["choices"]])
    elif meta["parse"] is options.parse_bool:
        parameter.update(paramType="BOOLEAN")
    elif meta["parse"] in (float, int):
        parameter.update(paramType="NUMBER")
    else:
        parameter.update(paramType="TEXT")
    if field.name not in options.REQUIRED_FLAGS and not by_cohort:
        parameter["defaultValue"] = options.as_text(field.default)
    return parameter


def template_metadata() -> dict:
    return {
        "name": "MIMIC multimodal training data",
        "description": "Builds a multimodal MIMIC dataset (--cohort: ed_cxr links MIMIC-CXR-JPG X-rays to MIMIC-IV-ED "
                       "stays; symile_mimic pairs admissions with a CXR, an ECG and labs; medfuse_ihm and "
                       "medfuse_phenotyping, ICU time series with a CXR; cxr_ehr, each CXR with the EHR of its time; "
                       "cxr_report, report generation) as leakage-safe, patient-disjoint TFRecord splits, a "
                       "manifest, rejects and metadata.json.",
        "parameters": [_parameter(f) for f in dataclasses.fields(options.Config)],
    }


def main() -> None:
    print(json.dumps(template_metadata(), indent=2))


if __name__ == "__main__":
    main()
