"""The adaptation jobs over HTTP (serving.adaptations), on the admin plane (the admin token):

    POST   /v1/adaptations                multipart: category, images (files, or one .zip), preset, steps,
                                          activate, num_landmarks, names, image_size, path (a server
                                          folder inside --allow-path) -> 202 the job
    GET    /v1/adaptations                every job
    GET    /v1/adaptations/{id}           one job: state, step of steps, validation, version, error
    DELETE /v1/adaptations/{id}           cancel it (its files deleted)
    GET    /v1/adaptations/{id}/events    server-sent events: the job as JSON at each change, until it ends
    GET    /v1/adaptations/{id}/samples.png   the latest samples picture (y, y', reconstruction, points)

A server without the training extra answers 501 (FAILED_PRECONDITION, reason ADAPTATION_UNAVAILABLE).
"""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel

from serving.adaptations import Adaptations
from serving.errors import Reason, ServingError

__all__ = ["AdaptationJob", "add_adaptation_routes"]

Code = grpc.StatusCode
_END = object()


class AdaptationJob(BaseModel):
    id: str
    category: str
    state: str  # queued | running | succeeded | failed | cancelled
    step: int
    steps: int
    phase: str  # while running: starting, training, calibrating, registering
    validation: dict[str, Any]  # held-out scores: consistency, spread (px at 128), background_points, passed
    calibration: dict[str, Any]  # int8: accepted, mean_px, p95_px (an adapter it refuses serves in fp32)
    upload: dict[str, Any]  # images kept, and those skipped by why
    version: str  # the registered version, once succeeded
    activated: bool
    error: str
    options: dict[str, Any]
    created: float
    updated: float


class AdaptationJobs(BaseModel):
    jobs: list[AdaptationJob]


def add_adaptation_routes(app: FastAPI, adaptations: Adaptations | None, admin_plane, errors: dict) -> None:
    # uploads and event streams last minutes: threads of their own, not the ones /v1/detect runs on
    pool = ThreadPoolExecutor(max_workers=32, thread_name_prefix="landmarks-adaptation-http")

    async def in_pool(fn, *args):
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    def jobs() -> Adaptations:
        if adaptations is None:
            raise ServingError(Code.FAILED_PRECONDITION, Reason.ADAPTATION_UNAVAILABLE,
                               "adaptation jobs are off on this server")
        adaptations.require()
        return adaptations

    responses = {k: errors[k] for k in (400, 401, 404) if k in errors} | {
        501: {"description": "FAILED_PRECONDITION: jobs are off, or the server lacks the training extra"}}
    admin = [Depends(admin_plane)]

    @app.post("/v1/adaptations", status_code=202, response_model=AdaptationJob, tags=["adaptation"],
              dependencies=admin, responses=responses | {413: {"description": "the upload is over the limits"}},
              summary="Start a job: a new category (or version) trained from photos, no labels",
              openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
                  "type": "object", "required": ["category", "images"], "properties": {
                      "category": {"type": "string"},
                      "images": {"type": "array", "items": {"type": "string", "format": "binary"}},
                      "preset": {"type": "string", "enum": ["cpu", "quick", "paper", "smoke"]},
                      "steps": {"type": "integer"}, "activate": {"type": "boolean"},
                      "num_landmarks": {"type": "integer"}, "names": {"type": "string"},
                      "image_size": {"type": "integer"},
                      "path": {"type": "string", "description": "a server folder or .zip inside --allow-path"}}}}}}})
    async def start(request: Request):
        service = jobs()
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise ServingError(Code.INVALID_ARGUMENT, Reason.REQUEST_INVALID,
                               "send a multipart/form-data form: category, images (one or more files, or a .zip), "
                               "and optionally preset, steps, activate (curl -F category=mugs -F images=@a.jpg ...)")
        limits = service.limits.upload
        # room for skipped files: past max_images images the job answers 413 itself
        form = await request.form(max_files=2 * limits.max_images + 16, max_fields=16)
        try:
            category, options, files = "", {}, []
            for name, value in form.multi_items():
                if name == "images":
                    if isinstance(value, str):
                        raise ServingError(Code.INVALID_ARGUMENT, Reason.OPTION_INVALID,
                                           "must be files (curl -F images=@photo.jpg), not text", field="images")
                    files.append((value.filename or "", value.file))
                elif isinstance(value, str):
                    if name == "category":
                        category = value
                    elif name in options:
                        raise ServingError(Code.INVALID_ARGUMENT, Reason.OPTION_INVALID, "given twice", field=name)
                    else:
                        options[name] = value
                else:
                    raise ServingError(Code.INVALID_ARGUMENT, Reason.OPTION_INVALID,
                                       "a file where a value was expected; send images in the field 'images'",
                                       field=name)
            if not category:
                raise ServingError(Code.INVALID_ARGUMENT, Reason.CATEGORY_INVALID,
                                   "missing; name the new category, e.g. -F category=mugs", field="category")
            job = await in_pool(service.submit, category, files, options)
        finally:
            await form.close()
        return JSONResponse(job.to_json(), status_code=202,
                            headers={"location": f"/v1/adaptations/{job.id}"})

    @app.get("/v1/adaptations", response_model=AdaptationJobs, tags=["adaptation"], dependencies=admin,
             responses=responses, summary="Every adaptation job, oldest first")
    def list_jobs():
        return {"jobs": [j.to_json() for j in jobs().list()]}

    @app.get("/v1/adaptations/{job_id}", response_model=AdaptationJob, tags=["adaptation"], dependencies=admin,
             responses=responses, summary="One adaptation job")
    def get_job(job_id: str):
        return jobs().get(job_id).to_json()

    @app.delete("/v1/adaptations/{job_id}", response_model=AdaptationJob, tags=["adaptation"], dependencies=admin,
                responses=responses, summary="Cancel a job: its training stops and its files are deleted")
    def cancel_job(job_id: str):
        return jobs().cancel(job_id).to_json()

    @app.get("/v1/adaptations/{job_id}/samples.png", tags=["adaptation"], dependencies=admin, responses=responses,
             response_class=Response, summary="The job's latest samples picture (PNG)")
    def samples(job_id: str):
        return Response(jobs().samples(job_id), media_type="image/png", headers={"cache-control": "no-store"})

    @app.get("/v1/adaptations/{job_id}/events", tags=["adaptation"], dependencies=admin, responses=responses,
             summary="Server-sent events: the job (JSON, as GET returns it) at each change, until it ends")
    def events(job_id: str):
        service = jobs()
        stream = service.watch(job_id)
        first = next(stream)  # NOT_FOUND here, before the stream starts

        async def sse():
            yield _event(first)
            while True:
                job = await in_pool(next, stream, _END)
                if job is _END:
                    return
                yield ": keep-alive\n\n" if job is None else _event(job)

        return StreamingResponse(sse(), media_type="text/event-stream",
                                 headers={"cache-control": "no-store", "x-accel-buffering": "no"})


def _event(job) -> str:
    return f"event: {'end' if job.finished else 'progress'}\ndata: {json.dumps(job.to_json())}\n\n"
