# Scheduled rerun of the MIMIC-CXR x MIMIC-IV-ED Flex Template (README, "Running on Dataflow").
# Two service accounts with the least privilege each needs:
#   runner    - Dataflow workers and launcher: read inputs and the image, write the output bucket, bill reads of the
#               requester-pays PhysioNet bucket to this project. Its Google identity must also be granted
#               access to the PhysioNet bucket (PhysioNet links it through your credentialed account).
#   scheduler - Cloud Scheduler: may launch Dataflow jobs and act as the runner, nothing else.
# Each run writes OUTPUT/runs/<UTC time>/ and updates OUTPUT/LATEST only after it succeeded; the fixed job name in
# the body makes Dataflow refuse (409) a launch while the previous run is still active.

terraform {
  required_providers {
    google = {
      source  = "hashicorp/google"
      version = ">= 5.0"
    }
  }
}

provider "google" {
  project = var.project
  region  = var.region
}

resource "google_project_service" "apis" {
  for_each = toset(["dataflow.googleapis.com", "cloudscheduler.googleapis.com", "artifactregistry.googleapis.com",
  "storage.googleapis.com"])
  service            = each.value
  disable_on_destroy = false
}

resource "google_service_account" "runner" {
  account_id   = "mimic-cxr-ed-runner"
  display_name = "MIMIC-CXR-ED Dataflow workers"
}

resource "google_service_account" "scheduler" {
  account_id   = "mimic-cxr-ed-scheduler"
  display_name = "MIMIC-CXR-ED Cloud Scheduler"
}

resource "google_project_iam_member" "runner_worker" {
  project = var.project
  role    = "roles/dataflow.worker"
  member  = "serviceAccount:${google_service_account.runner.email}"
}

resource "google_project_iam_member" "runner_billing_for_requester_pays" {
  project = var.project
  role    = "roles/serviceusage.serviceUsageConsumer"
  member  = "serviceAccount:${google_service_account.runner.email}"
}

resource "google_storage_bucket_iam_member" "runner_outputs" {
  bucket = var.bucket
  role   = "roles/storage.objectAdmin"
  member = "serviceAccount:${google_service_account.runner.email}"
}

resource "google_storage_bucket_iam_member" "runner_inputs" {
  bucket = var.inputs_bucket
  role   = "roles/storage.objectViewer"
  member = "serviceAccount:${google_service_account.runner.email}"
}

resource "google_artifact_registry_repository_iam_member" "runner_image" {
  location   = var.region
  repository = var.image_repository
  role       = "roles/artifactregistry.reader"
  member     = "serviceAccount:${google_service_account.runner.email}"
}

resource "google_project_iam_member" "scheduler_launches_jobs" {
  project = var.project
  role    = "roles/dataflow.developer"
  member  = "serviceAccount:${google_service_account.scheduler.email}"
}

resource "google_service_account_iam_member" "scheduler_acts_as_runner" {
  service_account_id = google_service_account.runner.name
  role               = "roles/iam.serviceAccountUser"
  member             = "serviceAccount:${google_service_account.scheduler.email}"
}

resource "google_storage_bucket_iam_member" "scheduler_reads_template" {
  bucket = var.bucket
  role   = "roles/storage.objectViewer"
  member = "serviceAccount:${google_service_account.scheduler.email}"
}

resource "google_cloud_scheduler_job" "rerun" {
  name             = "mimic-cxr-ed-rerun"
  region           = var.region
  schedule         = var.schedule
  time_zone        = var.time_zone
  attempt_deadline = "180s"

  retry_config {
    retry_count = 1
  }

  http_target {
    http_method = "POST"
    uri         = "https://dataflow.googleapis.com/v1b3/projects/${var.project}/locations/${var.region}/flexTemplates:launch"
    headers = {
      "Content-Type" = "application/json"
    }
    body = base64encode(file(var.launch_body_file))

    oauth_token {
      service_account_email = google_service_account.scheduler.email
      scope                 = "https://www.googleapis.com/auth/cloud-platform"
    }
  }

  depends_on = [google_project_service.apis]
}

output "runner_service_account" {
  value = google_service_account.runner.email
}
