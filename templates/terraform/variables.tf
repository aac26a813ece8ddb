variable "project" {
  description = "Project that runs the job and pays for requester-pays reads."
  type        = string
}

variable "region" {
  description = "Dataflow and Cloud Scheduler region, e.g. us-central1 (the PhysioNet buckets are US multi-region)."
  type        = string
}

variable "bucket" {
  description = "Your bucket: template spec, temp files and outputs (name only, no gs://)."
  type        = string
}

variable "inputs_bucket" {
  description = "The bucket holding your copy of MIMIC-IV and MIMIC-IV-ED (name only); often the same as bucket."
  type        = string
}

variable "image_repository" {
  description = "Artifact Registry repository id holding the pipeline image (templates/build.sh creates 'mimic')."
  type        = string
  default     = "mimic"
}

variable "launch_body_file" {
  description = "Request body from: python -m beam_pipeline.cloud launch-body ... > launch_body.json (validated)."
  type        = string
}

variable "schedule" {
  description = "Cron schedule of the rerun."
  type        = string
  default     = "0 3 * * 1"
}

variable "time_zone" {
  description = "Time zone of the schedule."
  type        = string
  default     = "Etc/UTC"
}
