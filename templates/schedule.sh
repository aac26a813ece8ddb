#!/usr/bin/env bash
# The gcloud equivalent of templates/terraform: a Cloud Scheduler job that launches the template every Monday.
# Creates the job, or updates it in place when it exists (rerun after a new image or launch body).
#   PROJECT=... REGION=... SCHEDULER_SA=scheduler@PROJECT.iam.gserviceaccount.com templates/schedule.sh launch_body.json
set -euo pipefail
: "${PROJECT:?set PROJECT}" "${REGION:?set REGION}" "${SCHEDULER_SA:?set SCHEDULER_SA}"
BODY="${1:?path to a launch body from python -m beam_pipeline.cloud launch-body}"
JOB="mimic-cxr-ed-weekly"
FLAGS=(--project="${PROJECT}" --location="${REGION}" --schedule="${SCHEDULE:-0 3 * * 1}"
  --time-zone="${TIME_ZONE:-Etc/UTC}" --attempt-deadline=180s
  --uri="https://dataflow.googleapis.com/v1b3/projects/${PROJECT}/locations/${REGION}/flexTemplates:launch"
  --http-method=POST --message-body-from-file="${BODY}"
  --oauth-service-account-email="${SCHEDULER_SA}" --oauth-token-scope=https://www.googleapis.com/auth/cloud-platform
  --max-retry-attempts=1)
if gcloud scheduler jobs describe "${JOB}" --project="${PROJECT}" --location="${REGION}" >/dev/null 2>&1; then
  gcloud scheduler jobs update http "${JOB}" "${FLAGS[@]}" --update-headers=Content-Type=application/json
else
  gcloud scheduler jobs create http "${JOB}" "${FLAGS[@]}" --headers=Content-Type=application/json
fi
