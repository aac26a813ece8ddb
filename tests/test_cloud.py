"""Offline checks of everything that ships to Google Cloud: template metadata, launch request, Terraform, scripts."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import hcl2
import pytest

from beam_pipeline import cloud, cohorts, options
from beam_pipeline.pipeline import LAUNCH_INPUTS, WORKER_INPUTS
from beam_pipeline.run import parse

ROOT = Path(__file__).resolve().parents[1]
TEMPLATES = ROOT / "templates"
EXAMPLE = dict(project="YOUR_PROJECT", region="us-central1", bucket="YOUR_BUCKET",
               image="us-central1-docker.pkg.dev/YOUR_PROJECT/mimic/pipeline:TAG",
               service_account="mimic-cxr-ed-runner@YOUR_PROJECT.iam.gserviceaccount.com",
               parameters={"mimic_ed_root": "gs://YOUR_BUCKET/mimic-iv-ed/2.2",
                           "mimic_iv_root": "gs://YOUR_BUCKET/mimiciv/2.2"})


def _sample_values(parameter: dict) -> list[str]:
    """Values Dataflow could pass for a parameter: every enum option, both booleans, a gs:// path, the default."""
    if parameter.get("enumOptions"):
        return [o["value"] for o in parameter["enumOptions"]]
    if parameter["paramType"] == "BOOLEAN":
        return ["true", "false"]
    if parameter.get("regexes"):
        return [f"gs://bucket/{parameter['name']}"]
    if "defaultValue" in parameter:
        return [parameter["defaultValue"]]
    default = {f.name: f.default for f in dataclasses.fields(options.Config)}[parameter["name"]]
    if "Default by cohort" in parameter["helpText"]:  # not pre-filled; Config's own default is a valid value
        return [",".join(map(str, default)) if isinstance(default, tuple) else str(default)]
    return ["7" if parameter["paramType"] == "NUMBER" else "text"]


ROOTS = ("mimic_ed_root", "mimic_iv_root", "mimic_ecg_root", "mimic_cxr_reports")  # each cohort requires some


def test_template_parameters_and_pipeline_options_match_both_ways():
    metadata = json.loads((TEMPLATES / "metadata.json").read_text())
    fields = {f.name: f for f in dataclasses.fields(options.Config)}
    assert [p["name"] for p in metadata["parameters"]] == list(fields)
    for parameter in metadata["parameters"]:  # each accepted by the parser, as Dataflow passes it: --name=value
        for value in _sample_values(parameter):
            argv = [f"--{n}=gs://b/{n}" for n in (*options.REQUIRED_FLAGS, *ROOTS) if n != parameter["name"]]
            config, _ = parse(argv + [f"--{parameter['name']}={value}"])
            assert getattr(config, parameter["name"]) == fields[parameter["name"]].metadata["parse"](value)
            assert all(re.fullmatch(r, value) for r in parameter.get("regexes", []))
        assert parameter["helpText"] and parameter["label"] and parameter["paramType"]


def test_the_template_pre_fills_no_value_a_cohort_sets_itself():
    """The console pre-fills a parameter's defaultValue and sends it: a filled image_size=518 would override
    cxr_report's 224. Flags whose default depends on the cohort carry none, and their help lists each cohort's."""
    metadata = json.loads((TEMPLATES / "metadata.json").read_text())
    overridden = {name for cohort in cohorts.NAMES for name in cohorts.get(cohort).defaults}
    for parameter in metadata["parameters"]:
        if parameter["name"] in overridden:
            assert "defaultValue" not in parameter and "Default by cohort: ed_cxr " in parameter["helpText"]
    assert {"views", "image_size", "resize_mode", "split_strategy"} <= overridden


def test_launch_request_validates_against_the_dataflow_discovery_schema():
    from google.auth.credentials import AnonymousCredentials
    from googleapiclient.discovery import build

    body = cloud.launch_body(**EXAMPLE)
    assert cloud.launch_errors(body) == []
    assert json.loads((TEMPLATES / "launch_body.example.json").read_text()) == body  # the committed example is current
    service = build("dataflow", "v1b3", credentials=AnonymousCredentials(), static_discovery=True)
    request = service.projects().locations().flexTemplates().launch(projectId="YOUR_PROJECT", location="us-central1",
                                                                   body=body)
    assert request.method == "POST" and request.uri.split("?")[0].endswith(
        "/v1b3/projects/YOUR_PROJECT/locations/us-central1/flexTemplates:launch")
    assert json.loads(request.body) == body
    parameters = body["launchParameter"]["parameters"]
    assert parameters["mimic_cxr_root"] == "gs://mimic-cxr-jpg-2.1.0.physionet.org"
    assert parameters["billing_project"] == "YOUR_PROJECT" and parameters["keep_runs"] == "true"


def test_the_validator_catches_what_the_api_would_refuse():
    body = cloud.launch_body(**EXAMPLE)
    environment = body["launchParameter"]["environment"]
    environment.update(maxWorkers="32", autoscalingAlgorithm="THROUGHPUT_BASED")
    body["launchParameter"]["containerSpec"] = {"image": "x"}
    body["launchParameter"]["parameters"]["image_size"] = 224
    errors = cloud.launch_errors(body)
    assert "body.launchParameter.environment.maxWorkers: expected integer, got str" in errors
    assert any("THROUGHPUT_BASED" in e and "AUTOSCALING_ALGORITHM_BASIC" in e for e in errors)
    assert "body.launchParameter: exactly one of containerSpec and containerSpecGcsPath" in errors
    assert any("parameters.image_size: expected string" in e for e in errors)
    with pytest.raises(ValueError, match="not pipeline parameters: imag_size"):
        cloud.launch_body(**{**EXAMPLE, "parameters": {"imag_size": "224"}})


@pytest.mark.parametrize("param, message", [
    ("image_size=abc", "argument --image_size: invalid int value: 'abc'"),
    ("keep_runs=maybe", "argument --keep_runs: expected true or false"),
    ("mimic_ed_root=", "--mimic_ed_root is required by --cohort=ed_cxr"),
    ("mimic_ed_root", "--param takes NAME=VALUE, got mimic_ed_root"),
    ("overwrite=maybe", "argument --overwrite: expected true or false"),
    *[(f"{name}=physionet.org/files/x", f"--{name}=physionet.org/files/x is a local path, which remote workers "
                                        "cannot read") for name in WORKER_INPUTS],
    *[(f"{name}=rules.json", f"--{name}=rules.json is a local path, which the Flex Template launcher cannot read")
      for name in LAUNCH_INPUTS],
    ("output=/data/out", "--output=/data/out is a local path, which remote workers cannot write"),
])
def test_launch_body_refuses_what_the_launcher_would(param, message, capsys):
    """Found when the body is made, not a week later on the launcher VM of a scheduled run."""
    with pytest.raises(SystemExit):
        cloud.main(["launch-body", "--project=p", "--region=r", "--bucket=b", "--image=i", "--service_account=s",
                    "--param", "mimic_ed_root=gs://b/ed", "--param", param])
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("overwrite, keep_runs", [("true", None), ("false", "true"), ("False", "true")])
def test_overwrite_in_a_launch_body_replaces_the_default_keep_runs(overwrite, keep_runs):
    """By its value: with overwrite=false and no keep_runs, every scheduled run after the first would be refused."""
    body = cloud.launch_body(**{**EXAMPLE, "parameters": {**EXAMPLE["parameters"], "overwrite": overwrite}})
    parameters = body["launchParameter"]["parameters"]
    assert parameters["overwrite"] == overwrite and parameters.get("keep_runs") == keep_runs


def _terraform() -> dict:
    return hcl2.load((TEMPLATES / "terraform" / "main.tf").open())


def test_terraform_schedules_the_same_launch_with_least_privilege():
    resources = {(kind.strip('"'), name.strip('"')): block for entry in _terraform()["resource"]
                 for kind, named in entry.items() for name, block in named.items()}
    job = resources[("google_cloud_scheduler_job", "rerun")]
    target = job["http_target"][0]
    assert target["http_method"] == '"POST"' and "flexTemplates:launch" in target["uri"]
    assert target["body"] == "${base64encode(file(var.launch_body_file))}"
    assert target["oauth_token"][0]["scope"] == '"https://www.googleapis.com/auth/cloud-platform"'
    assert "scheduler" in target["oauth_token"][0]["service_account_email"]
    roles = {(name, block["role"].strip('"')) for (kind, name), block in resources.items() if "iam_member" in kind}
    assert roles == {("runner_worker", "roles/dataflow.worker"),
                     ("runner_billing_for_requester_pays", "roles/serviceusage.serviceUsageConsumer"),
                     ("runner_outputs", "roles/storage.objectAdmin"), ("runner_inputs", "roles/storage.objectViewer"),
                     ("runner_image", "roles/artifactregistry.reader"),
                     ("scheduler_launches_jobs", "roles/dataflow.developer"),
                     ("scheduler_acts_as_runner", "roles/iam.serviceAccountUser"),
                     ("scheduler_reads_template", "roles/storage.objectViewer")}
    declared = {name for entry in hcl2.load((TEMPLATES / "terraform" / "variables.tf").open())["variable"]
                for name in entry}
    used = set(re.findall(r"var\.(\w+)", (TEMPLATES / "terraform" / "main.tf").read_text()))
    assert {d.strip('"') for d in declared} == used


@pytest.mark.parametrize("script", ["build.sh", "launch.sh", "schedule.sh"])
def test_scripts_parse_and_use_the_shared_pieces(script):
    text = (TEMPLATES / script).read_text()
    subprocess.run(["bash", "-n", str(TEMPLATES / script)], check=True)
    assert text.startswith("#!/usr/bin/env bash\n") and "set -euo pipefail" in text
    if script == "build.sh":
        assert "--metadata-file=templates/metadata.json" in text
    if script == "launch.sh":
        assert "beam_pipeline.cloud launch-body" in text and "flexTemplates:launch" in text
        # the scheduled job's name: Dataflow refuses a manual launch while a scheduled run is active, and vice versa
        assert '--job_name="${JOB_NAME:-mimic-cxr-ed}"' in text and cloud.launch_body.__defaults__[-1] == "mimic-cxr-ed"
    if script == "schedule.sh":
        assert "--message-body-from-file" in text
        assert "--oauth-token-scope=https://www.googleapis.com/auth/cloud-platform" in text


# gcloud for the scripts: logs each call (with its folder); a scheduler job exists once created.
STUB_GCLOUD = """#!/usr/bin/env bash
echo "$PWD: gcloud $*" >> "$GCLOUD_LOG"
case "$1 $2 $3" in
  "scheduler jobs describe") [[ -e "$GCLOUD_JOBS/$4" ]] || exit 1 ;;
  "scheduler jobs create") touch "$GCLOUD_JOBS/$5" ;;
esac
"""


def run_script(script: Path, tmp_path: Path, cwd: Path, *args: str, **env: str):
    """Run a script as users do (by its path, from ``cwd``) with the stub gcloud first on PATH: (result, calls)."""
    stub = tmp_path / "bin" / "gcloud"
    if not stub.exists():
        stub.parent.mkdir()
        stub.write_text(STUB_GCLOUD)
        stub.chmod(0o755)
        (tmp_path / "jobs").mkdir()
    log = tmp_path / "gcloud.log"
    log.write_text("")
    variables = {**os.environ, "PATH": f"{stub.parent}:{os.environ['PATH']}", "GCLOUD_LOG": str(log),
                 "GCLOUD_JOBS": str(tmp_path / "jobs"), "PROJECT": "p", "REGION": "r", **env}
    done = subprocess.run([str(script), *args], cwd=cwd, env=variables, capture_output=True, text=True, timeout=60)
    return done, log.read_text().splitlines()


def test_schedule_sh_creates_the_job_then_updates_it_in_place(tmp_path):
    """Rerun after a new image or launch body: the existing job is updated with the same settings (a second create
    would fail, as the job exists)."""
    calls = []
    for _ in range(2):
        done, made = run_script(TEMPLATES / "schedule.sh", tmp_path, tmp_path, "body.json", SCHEDULER_SA="s@p")
        assert done.returncode == 0, done.stderr
        calls.append(made[-1].split(": gcloud ", 1)[1].split())
    created, updated = calls
    assert created[:5] == ["scheduler", "jobs", "create", "http", "mimic-cxr-ed-weekly"]
    assert updated[:5] == ["scheduler", "jobs", "update", "http", "mimic-cxr-ed-weekly"]
    assert "--message-body-from-file=body.json" in updated
    assert [f.replace("--headers=", "--update-headers=") for f in created[5:]] == updated[5:]


@pytest.fixture
def checkout(tmp_path) -> Path:
    """A clean clone of this repository at HEAD, holding the working copy's build.sh (the script under test)."""
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", "--shared", str(ROOT), str(clone)], check=True)
    shutil.copy2(TEMPLATES / "build.sh", clone / "templates" / "build.sh")
    return clone


def test_build_sh_tags_the_checkout_it_builds_whatever_the_callers_folder(checkout, tmp_path):
    """Run from another git repository, the image is still named after the commit it is built from."""
    other = tmp_path / "other"
    other.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=other, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "x"],
                   cwd=other, check=True)
    head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=checkout, capture_output=True, text=True,
                          check=True).stdout.strip()
    done, calls = run_script(checkout / "templates" / "build.sh", tmp_path, other, BUCKET="b")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == f"r-docker.pkg.dev/p/mimic/pipeline:{head}"
    assert f"{checkout}: gcloud builds submit . --tag=r-docker.pkg.dev/p/mimic/pipeline:{head}" in " ".join(calls)
    [submit] = [call for call in calls if "builds submit" in call]
    assert "--timeout=3600s" in submit.split()  # Cloud Build's own default, 10 minutes, is too short for this image


def test_build_sh_refuses_to_name_uncommitted_code_after_head(checkout, tmp_path):
    """Cloud Build uploads the working tree: an image tagged with HEAD must hold HEAD's files, unless TAG names it."""
    (checkout / "beam_pipeline" / "run.py").write_text("changed\n")
    (checkout / "beam_pipeline" / "new_module.py").write_text("new\n")
    done, calls = run_script(checkout / "templates" / "build.sh", tmp_path, tmp_path, BUCKET="b")
    assert done.returncode == 1 and calls == []
    assert " M beam_pipeline/run.py" in done.stderr and "?? beam_pipeline/new_module.py" in done.stderr
    assert "commit them, or set TAG=<name>" in done.stderr
    done, calls = run_script(checkout / "templates" / "build.sh", tmp_path, tmp_path, BUCKET="b", TAG="exp1")
    assert done.returncode == 0 and done.stdout.splitlines()[-1] == "r-docker.pkg.dev/p/mimic/pipeline:exp1"


def test_the_image_bakes_what_the_template_points_at():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "from_pretrained" not in dockerfile  # nothing is downloaded: the default models ship in a package
    assert f"beam_pipeline.kb build {cloud.IMAGE_KB_INDEX}" in dockerfile
    assert "HF_HUB_OFFLINE=1" in dockerfile and "credentials" not in dockerfile.lower().replace("no credentials", "")


def test_cloud_build_uploads_only_what_the_dockerfile_copies(tmp_path):
    """``gcloud builds submit .`` uploads the checkout minus .gcloudignore (gitignore syntax, checked here by git
    itself): MIMIC data downloaded into the checkout as the README shows (physionet.org/), outputs and launch bodies
    must never reach the Cloud Build bucket, while everything the Dockerfile copies must."""
    copied = [name for line in re.findall(r"^COPY (?!--from)(.+) \S+$", (ROOT / "Dockerfile").read_text(), re.M)
              for name in line.split()]
    needed = [str(p.relative_to(ROOT)) for name in copied for p in ([ROOT / name] if (ROOT / name).is_file() else
              sorted(f for f in (ROOT / name).rglob("*") if f.is_file() and "__pycache__" not in f.parts))]
    private = ["physionet.org/files/mimic-iv-ed/2.2/ed/edstays.csv.gz", "out/cxr-ed-v1/runs/x/metadata.json",
               "launch_body.json", ".venv/bin/python", "tests/data/open-data/x.csv", ".demo/output/LATEST",
               "beam_pipeline/__pycache__/run.cpython-311.pyc"]
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    done = subprocess.run(["git", "-c", f"core.excludesFile={ROOT / '.gcloudignore'}", "check-ignore", "--no-index",
                           "--stdin"], cwd=tmp_path, input="\n".join(needed + private), capture_output=True, text=True)
    assert sorted(done.stdout.split()) == sorted(private) and len(needed) > 50


def test_git_ignores_the_data_and_outputs_the_readme_puts_in_the_checkout(tmp_path):
    """The README downloads MIMIC into ./physionet.org, writes out/ and launch_body.json in the checkout: a
    ``git add -A`` there must never stage them."""
    private = ["physionet.org/files/mimic-iv-ed/2.2/ed/edstays.csv.gz", "out/cxr-ed-v1/runs/x/manifest/m.csv",
               "out/cxr-ed-v1/LATEST", "launch_body.json"]
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    done = subprocess.run(["git", "-c", f"core.excludesFile={ROOT / '.gitignore'}", "check-ignore", "--no-index",
                           "--stdin"], cwd=tmp_path, input="\n".join(private + ["beam_pipeline/run.py"]),
                          capture_output=True, text=True)
    assert sorted(done.stdout.split()) == sorted(private)
