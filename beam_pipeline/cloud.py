"""Dataflow Flex Template launches: one request body for the launch script and Cloud Scheduler, checked offline
against Dataflow's own API schema (the v1b3 discovery document shipped in google-api-python-client).

    python -m beam_pipeline.cloud launch-body --project P --region us-central1 --bucket my-bucket \\
        --image us-central1-docker.pkg.dev/P/mimic/pipeline:1 --service_account runner@P.iam.gserviceaccount.com \\
        --param mimic_ed_root=gs://my-bucket/mimic-iv-ed/2.2 --param mimic_iv_root=gs://my-bucket/mimiciv/2.2 \\
        > templates/launch_body.json

Recommended settings (see the README's Dataflow section for the reasoning and the cost model): n2-standard-4
workers (one SDK process per vCPU, each holding OpenCV, torch and the embedding model), throughput-based
autoscaling up to 32 workers, 50 GB disks, the template's own image as the worker image, and --keep_runs so a
scheduled rerun adds a run beside the previous ones and publishes it (LATEST) only once complete.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

from beam_pipeline import options
from beam_pipeline.pipeline import check_remote_inputs

PHYSIONET_CXR_BUCKET = "gs://mimic-cxr-jpg-2.1.0.physionet.org"
IMAGE_KB_INDEX = "/template/kb"  # the packaged knowledge base, indexed at image build time
ENVIRONMENT = {
    "machineType": "n2-standard-4",
    "maxWorkers": 32,
    "autoscalingAlgorithm": "AUTOSCALING_ALGORITHM_BASIC",  # REST name of THROUGHPUT_BASED
    "diskSizeGb": 50,
    "additionalUserLabels": {"app": "mimic-cxr-ed"},
}


def launch_body(project: str, region: str, bucket: str, image: str, service_account: str,
                parameters: dict[str, str], job_name: str = "mimic-cxr-ed") -> dict:
    """A LaunchFlexTemplateRequest. A fixed job name means an overlapping scheduled launch is refused (409) rather
    than run twice; every run still gets its own run folder under the output."""
    values = {"mimic_cxr_root": PHYSIONET_CXR_BUCKET, "output": f"gs://{bucket}/mimic-cxr-ed",
              "billing_project": project, "kb_index": IMAGE_KB_INDEX, **parameters}
    unknown = sorted(set(values) - {f.name for f in dataclasses.fields(options.Config)})
    if unknown:
        raise ValueError(f"not pipeline parameters: {', '.join(unknown)}")
    # What the launcher VM would refuse, refused here: values, ranges, roots, and local paths it or the workers cannot
    # read (or write).
    config = options.config_from_text(values)
    check_remote_inputs(config, flex_launcher=True)
    if not config.overwrite:  # by value: overwrite=false must keep the default, or every rerun after the first fails
        values.setdefault("keep_runs", "true")
    return {"launchParameter": {
        "jobName": job_name,
        "containerSpecGcsPath": f"gs://{bucket}/templates/mimic-cxr-ed.json",
        "parameters": {k: str(v) for k, v in sorted(values.items())},
        "environment": {**ENVIRONMENT, "sdkContainerImage": image, "serviceAccountEmail": service_account,
                        "tempLocation": f"gs://{bucket}/dataflow/tmp",
                        "stagingLocation": f"gs://{bucket}/dataflow/staging",
                        "workerRegion": region},
    }}


def discovery_schemas(api: str = "dataflow", version: str = "v1b3") -> dict:
    from googleapiclient import discovery_cache

    return json.loads(discovery_cache.get_static_doc(api, version))["schemas"]


def schema_errors(value, schema: dict, schemas: dict, path: str = "body") -> list[str]:
    """Every way ``value`` breaks a discovery-document schema (types, enums, unknown fields, $ref, maps, lists)."""
    if "$ref" in schema:
        return schema_errors(value, schemas[schema["$ref"]], schemas, path)
    kind = schema.get("type")
    if kind == "object":
        if not isinstance(value, dict):
            return [f"{path}: expected an object"]
        errors = []
        for key, item in value.items():
            if key in schema.get("properties", {}):
                errors += schema_errors(item, schema["properties"][key], schemas, f"{path}.{key}")
            elif "additionalProperties" in schema:
                errors += schema_errors(item, schema["additionalProperties"], schemas, f"{path}.{key}")
            else:
                errors.append(f"{path}.{key}: not a field of this message")
        return errors
    if kind == "array":
        if not isinstance(value, list):
            return [f"{path}: expected a list"]
        return [error for i, item in enumerate(value)
                for error in schema_errors(item, schema["items"], schemas, f"{path}[{i}]")]
    checks = {"string": lambda v: isinstance(v, str), "boolean": lambda v: isinstance(v, bool),
              "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
              "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)}
    if kind in checks and not checks[kind](value):
        return [f"{path}: expected {kind}, got {type(value).__name__}"]
    if "enum" in schema and value not in schema["enum"]:
        return [f"{path}: {value!r} is not one of {', '.join(schema['enum'])}"]
    return []


def launch_errors(body: dict) -> list[str]:
    """Schema errors of a LaunchFlexTemplateRequest, plus the rules the schema states only in prose."""
    errors = schema_errors(body, {"$ref": "LaunchFlexTemplateRequest"}, discovery_schemas())
    parameter = body.get("launchParameter", {})
    if not parameter.get("jobName"):
        errors.append("body.launchParameter.jobName: required")
    if ("containerSpec" in parameter) == ("containerSpecGcsPath" in parameter):
        errors.append("body.launchParameter: exactly one of containerSpec and containerSpecGcsPath")
    if not all(isinstance(v, str) for v in parameter.get("parameters", {}).values()):
        errors.append("body.launchParameter.parameters: every value must be a string")
    return errors


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m beam_pipeline.cloud", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    body = commands.add_parser("launch-body", help="print a validated flexTemplates:launch request body")
    body.add_argument("--project", required=True, help="project that runs the job and pays for requester-pays reads")
    body.add_argument("--region", required=True)
    body.add_argument("--bucket", required=True, help="your bucket (template, temp files, outputs); no gs://")
    body.add_argument("--image", required=True, help="the template image (also used by the workers)")
    body.add_argument("--service_account", required=True, help="worker service account email")
    body.add_argument("--job_name", default="mimic-cxr-ed")
    body.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                      help="pipeline parameter (repeatable), e.g. mimic_ed_root=gs://b/mimic-iv-ed/2.2")
    args = parser.parse_args(argv)
    malformed = [p for p in args.param if "=" not in p]
    if malformed:
        parser.error(f"--param takes NAME=VALUE, got {', '.join(malformed)}")
    try:
        request = launch_body(args.project, args.region, args.bucket, args.image, args.service_account,
                              dict(p.split("=", 1) for p in args.param), args.job_name)
    except ValueError as err:
        parser.error(str(err))
    errors = launch_errors(request)
    if errors:
        parser.error("invalid launch request: " + "; ".join(errors))
    print(json.dumps(request, indent=2))


if __name__ == "__main__":
    main()
