#!/usr/bin/env bash
# Build the pipeline image with Cloud Build and register the Flex Template spec in your bucket.
#   PROJECT=my-proj REGION=us-central1 BUCKET=my-bucket templates/build.sh
# Optional: TAG (default the checkout's commit), REPOSITORY (default mimic), BUILD_TIMEOUT (default 3600s).
set -euo pipefail
: "${PROJECT:?set PROJECT}" "${REGION:?set REGION}" "${BUCKET:?set BUCKET}"
cd "$(dirname "$0")/.."   # first: the tag must describe this checkout, whatever the caller's folder
REPOSITORY="${REPOSITORY:-mimic}"
if [[ -z "${TAG:-}" ]]; then
  # Cloud Build uploads the working tree (minus .gcloudignore), not HEAD: a tag named after HEAD must hold HEAD's files.
  dirty="$(git status --porcelain --untracked-files=all -- Dockerfile requirements.txt constraints.txt setup.py \
           launcher.py beam_pipeline)"
  if [[ -n "${dirty}" ]]; then
    printf 'build.sh: uncommitted changes in the files the image is built from:\n%s\ncommit them, or set TAG=<name>\n' \
      "${dirty}" >&2
    exit 1
  fi
  TAG="$(git rev-parse --short=12 HEAD)"
fi
IMAGE="${REGION}-docker.pkg.dev/${PROJECT}/${REPOSITORY}/pipeline:${TAG}"

gcloud artifacts repositories describe "${REPOSITORY}" --location="${REGION}" --project="${PROJECT}" >/dev/null 2>&1 \
  || gcloud artifacts repositories create "${REPOSITORY}" --repository-format=docker --location="${REGION}" \
       --project="${PROJECT}"
# Cloud Build stops a build after 10 minutes unless told otherwise; installing torch and pushing a multi-GB image
# can take longer, and a timed-out build leaves no image.
gcloud builds submit . --tag="${IMAGE}" --project="${PROJECT}" --region="${REGION}" --machine-type=e2-highcpu-8 \
  --timeout="${BUILD_TIMEOUT:-3600s}"
gcloud dataflow flex-template build "gs://${BUCKET}/templates/mimic-cxr-ed.json" \
  --image="${IMAGE}" --sdk-language=PYTHON --metadata-file=templates/metadata.json --project="${PROJECT}"
echo "${IMAGE}"
