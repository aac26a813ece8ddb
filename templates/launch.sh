#!/usr/bin/env bash
# Launch the Flex Template once, with the same validated request body the scheduler sends. The job name is the
# scheduled job's (JOB_NAME overrides it), so Dataflow refuses this launch while another run of it is active: two
# jobs writing one output at once could delete each other's unfinished run folders.
#   PROJECT=my-proj REGION=us-central1 BUCKET=my-bucket IMAGE=... SERVICE_ACCOUNT=runner@my-proj.iam.gserviceaccount.com \
#   templates/launch.sh --param mimic_ed_root=gs://my-bucket/mimic-iv-ed/2.2 --param mimic_iv_root=gs://my-bucket/mimiciv/2.2
set -euo pipefail
: "${PROJECT:?set PROJECT}" "${REGION:?set REGION}" "${BUCKET:?set BUCKET}" "${IMAGE:?set IMAGE}"
: "${SERVICE_ACCOUNT:?set SERVICE_ACCOUNT}"
cd "$(dirname "$0")/.."
BODY="$(mktemp)"
trap 'rm -f "${BODY}"' EXIT
.venv/bin/python -m beam_pipeline.cloud launch-body --project="${PROJECT}" --region="${REGION}" --bucket="${BUCKET}" \
  --image="${IMAGE}" --service_account="${SERVICE_ACCOUNT}" --job_name="${JOB_NAME:-mimic-cxr-ed}" \
  "$@" > "${BODY}"
curl --fail-with-body -sS -X POST \
  -H "Authorization: Bearer $(gcloud auth print-access-token)" -H "Content-Type: application/json" \
  --data @"${BODY}" \
  "https://dataflow.googleapis.com/v1b3/projects/${PROJECT}/locations/${REGION}/flexTemplates:launch"
