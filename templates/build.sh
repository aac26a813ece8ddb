#!/usr/bin/env bash
# Build the pipeline image with Cloud Build and register the Flex Template spec in your bucket.
#   PROJECT=my-proj REGION=us-central1 BUCKET=my-bucket templates/build.sh
set -euo pipefail
: "${PROJECT:?set PROJECT}" "${REGION:?set REGION}" "${BUCKET:?set BUCKET}"
REPOSITORY="${REPOSITORY:-mimic}"
TAG="${TAG:-$(git rev-parse --short HEAD)}"
IMAGE="${REGION}-docker.pkg.dev/${PROJECT}/${REPOSITORY}/pipeline:${TAG}"
cd "$(dirname "$0")/.."

gcloud artifacts repositories describe "${REPOSITORY}" --location="${REGION}" --project="${PROJECT}" >/dev/null 2>&1 \
  || gcloud artifacts repositories create "${REPOSITORY}" --repository-format=docker --location="${REGION}" \
       --project="${PROJECT}"
gcloud builds submit . --tag="${IMAGE}" --project="${PROJECT}" --region="${REGION}" --machine-type=e2-highcpu-8
gcloud dataflow flex-template build "gs://${BUCKET}/templates/mimic-cxr-ed.json" \
  --image="${IMAGE}" --sdk-language=PYTHON --metadata-file=templates/metadata.json --project="${PROJECT}"
echo "${IMAGE}"
