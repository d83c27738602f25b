"""The API, one router per resource. Routes that only read or write the database are plain
functions (FastAPI runs them in its thread pool, off the event loop); routes that ask the
scheduler are async and run on the loop, which the scheduler owns."""

from __future__ import annotations

from fastapi import APIRouter

from fleet.api.routes import artifacts, blobs, events, hosts, jobs, matrix, queues, results, system, users

ROUTERS: list[APIRouter] = [system.router, blobs.router, jobs.router, results.router, artifacts.router,
                            hosts.router, events.router, users.router, matrix.router,
                            queues.router]
