"""Example values the OpenAPI document shows (``Field(examples=...)``): one job, a MagCache run of Wan2.1-1.3B
at 832x480, 81 frames and 50 steps, that every schema showing a part of it describes the same way."""

from __future__ import annotations

JOB_ID = "3f6c1a2e-8b4d-4c1e-9a57-2d0e6f1b9c84"
DELIVERY_ID = "9b2d4e71-5c3a-4f0e-8d16-7a4b2c9e0f53"
WEBHOOK_ID = "msg_2b7e9c1f4a5d4e3b8c6f0a9d1e2f3a4b"
JOB_URL = f"https://api.example.com/jobs/{JOB_ID}"
WEBHOOK_URL = "https://example.com/hooks/skipstep"
MODEL = "wan-1-3b"
PROFILE = "wan2.1-t2v-1.3b"
PROMPT = "a red fox running through snow, cinematic"
HOSTNAME = "gpu-node-1"
WORKER = f"{HOSTNAME}:4127"
CREATED_AT = "2025-06-01T12:00:00Z"
STARTED_AT = "2025-06-01T12:00:04Z"
FINISHED_AT = "2025-06-01T12:01:18Z"

# Both CFG branches: the first 10 steps computed (retention ratio 0.2), then at most 2 reused in a row.
SCHEDULE = "CCCCCCCCCCC.C.C.C.C.C.C.C.C.C.C..C..C..C.C.C.CCCCC"
BRANCH = {"computed": SCHEDULE.count("C"), "skipped": SCHEDULE.count("."), "schedule": SCHEDULE}
# A step that computes both branches takes 2.04 s; one that reuses both, 0.09 s.
STEP_SECONDS = [2.04 if step == "C" else 0.09 for step in SCHEDULE]
DENOISE_SECONDS = round(sum(STEP_SECONDS), 2)
