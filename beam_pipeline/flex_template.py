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
    parameter = {"name": field.name, "label": field.name.replace("_", " ").capitalize(), "helpText": meta["help"],
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
    if field.name not in options.REQUIRED_FLAGS:
        default = field.default
        parameter["defaultValue"] = ",".join(map(str, default)) if isinstance(default, tuple) else str(default)
    return parameter


def template_metadata() -> dict:
    return {
        "name": "MIMIC multimodal training data",
        "description": "Builds a multimodal MIMIC dataset (--cohort: ed_cxr links MIMIC-CXR-JPG X-rays to MIMIC-IV-ED "
                       "stays; symile_mimic pairs admissions with a CXR, an ECG and labs) as leakage-safe, "
                       "patient-disjoint TFRecord splits, a manifest, rejects and metadata.json.",
        "parameters": [_parameter(f) for f in dataclasses.fields(options.Config)],
    }


def main() -> None:
    print(json.dumps(template_metadata(), indent=2))


if __name__ == "__main__":
    main()
