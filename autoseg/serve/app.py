"""The FastAPI application of `autoseg serve` (the HTTP API is described in autoseg/serve/__init__.py).

One request, from admission to answer:

  admitted (or 503 when max_queue requests are already in) -> its own temp folder -> the upload streamed
  there, its bytes counted (413 over the limit) -> recognised and unzipped -> read, checked and
  preprocessed in a `prepare` thread -> the networks in the single `network` thread (the Predictor's lock
  serializes them anyway: one case at a time per device) -> restored and written in an `export` thread
  -> the label map's bytes (or the JSON report) answered, the temp folder removed.

The whole request has `timeout_s`; past it the client gets 504 and the work is abandoned: stages not yet
started are skipped, a running one finishes, its result is dropped and the folder removed after it.
A request counts against max_queue until its folder is gone, so abandoned work still holds its place
while it runs. The event loop never waits on files or networks: /health answers during predictions.
"""
from __future__ import annotations

import asyncio
import base64
import json
import math
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from autoseg import __version__
from autoseg.dicom import dicom_available
from autoseg.errors import AutosegError
from autoseg.inference.predictor import Predictor
from autoseg.inference.predict import write_case_seg
from autoseg.inference.report import InputFile
from autoseg.jsonio import json_safe, to_dict
from autoseg.model.prediction import OutputFiles
from autoseg.serve.options import ServeOptions
from autoseg.serve.uploads import DRAIN_BYTES, Problem, UploadedCase, drain, open_upload, receive, too_large

EMA_WEIGHT = 0.3  # weight of the newest network time in the running estimate behind Retry-After
MAX_RETRY_AFTER_S = 3600
DICOM_SERVED = dicom_available()  # a zip of a DICOM series is answered with a SEG where the dicom extra is installed
MEDIA_TYPES = {".nii.gz": "application/gzip", ".seg.dcm": "application/dicom"}

PREDICT_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file"],
    "properties": {"file": {"type": "string", "format": "binary",
                            "description": "a .nii.gz/.nii scan (3D, or 4D for multi-channel models) or a .zip of "
                                           "one case's channel files {case}_0000.nii.gz, {case}_0001.nii.gz, ..."}}}}}}}


class Abandoned(Exception):
    """The request timed out; the stages still to come are skipped."""


@dataclass(eq=False)
class Job:
    work: Path
    cancelled: bool = False


@dataclass
class Result:
    body: bytes
    media_type: str
    filename: str
    network_s: float | None = None
    headers: dict[str, str] = field(default_factory=dict)


class ServiceState:
    """What every request shares: the predictor, the thread pools, the admission counter."""

    def __init__(self, predictor: Predictor, options: ServeOptions, temp_root: Path):
        self.predictor = predictor
        self.options = options
        self.temp_root = Path(temp_root)
        self.active = 0  # admitted and not yet cleaned up
        self.network_s = 1.0  # running estimate of one case's network time
        self.jobs: set[Job] = set()
        self.tasks: set[asyncio.Task] = set()
        self.prepare_pool = ThreadPoolExecutor(options.workers, thread_name_prefix="serve-prepare")
        self.network_pool = ThreadPoolExecutor(1, thread_name_prefix="serve-network")
        self.export_pool = ThreadPoolExecutor(options.workers, thread_name_prefix="serve-export")

    def retry_after(self) -> int:
        return int(min(MAX_RETRY_AFTER_S, max(1, math.ceil(self.network_s * self.active))))

    def shutdown(self) -> None:
        """Skip every stage not yet started, wait for the running ones (they may write into their folders)."""
        for job in list(self.jobs):
            job.cancelled = True
        for pool in (self.prepare_pool, self.network_pool, self.export_pool):
            pool.shutdown(wait=True, cancel_futures=True)


def _stage(job: Job, fn, *args):
    if job.cancelled:
        raise Abandoned()
    return fn(*args)


def one_line(error: BaseException) -> str:
    text = str(error).strip()
    detail = text.splitlines()[0][:200] if text else ""
    return f"{type(error).__name__}{': ' + detail if detail else ''}"


def _card(predictor: Predictor) -> tuple[dict, str]:
    """The model card as JSON and Markdown (a training folder has no card: what its plan says instead)."""
    from autoseg.model.package import format_card, is_package, read_package

    models = predictor.models
    if is_package(models.source):
        card = read_package(models.source).card
        data = json_safe(to_dict(card))
        data["package_sha256"] = models.package_sha256
        return data, format_card(card) + f"\npackage sha256: {models.package_sha256}\n"
    plan = models.plan
    data = {"dataset_name": getattr(plan, "dataset_name", ""),
            "configurations": [m.configuration for m in models.models],
            "folds": list(models.models[0].folds), "labels": dict(plan.labels),
            "channel_names": dict(plan.channel_names), "source": models.source, "package_sha256": None}
    lines = [f"# autoseg model (training folder {models.source})", "",
             f"- configuration(s): {' + '.join(data['configurations'])}", f"- folds: {', '.join(data['folds'])}",
             f"- input channels: {', '.join(f'{k}: {v}' for k, v in data['channel_names'].items())}",
             f"- labels: {', '.join(f'{v} {k}' for k, v in sorted(data['labels'].items(), key=lambda kv: kv[1]))}"]
    return data, "\n".join(lines) + "\n"


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": " ".join(message.split())}, status_code=status, headers=headers)


class RequestLog:
    """ASGI middleware: one stderr line per request (client, method, path, status, bytes, seconds, error),
    and a one-line JSON 500 instead of any traceback."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        seen = {"status": None, "bytes": 0, "error": b""}

        async def logged_send(message):
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
            elif message["type"] == "http.response.body":
                body = message.get("body", b"")
                seen["bytes"] += len(body)
                if seen["status"] is not None and seen["status"] >= 400 and len(seen["error"]) < 4096:
                    seen["error"] += body
            await send(message)

        try:
            await self.app(scope, receive, logged_send)
        except Exception as e:  # noqa: BLE001 - the client gets one line, the log one line, never a traceback
            seen["error"] = b""
            print(f"autoseg serve: internal error: {one_line(e)}", file=sys.stderr, flush=True)
            if seen["status"] is None:
                await error_response(500, f"internal error ({one_line(e)})")(scope, receive, logged_send)
        finally:
            client = scope.get("client") or ("-", 0)
            query = f"?{scope['query_string'].decode('latin-1')}" if scope.get("query_string") else ""
            line = (f"{time.strftime('%Y-%m-%d %H:%M:%S')} {client[0]} {scope['method']} {scope['path']}{query} "
                    f"{seen['status'] or '-'} {seen['bytes']} B {time.perf_counter() - start:.3f} s")
            if seen["error"]:
                try:
                    line += f" - {json.loads(seen['error'])['error']}"
                except Exception:  # noqa: BLE001 - not our JSON; the status says enough
                    pass
            print(line, file=sys.stderr, flush=True)


def create_app(predictor: Predictor, options: ServeOptions | None = None,
               temp_root: str | Path | None = None) -> FastAPI:
    """The application around a loaded Predictor. temp_root: where request folders go (made if missing;
    default: a new folder under the system temp dir)."""
    options = options or ServeOptions()
    if temp_root is None:
        temp_root = tempfile.mkdtemp(prefix="autoseg-serve-app-")
    Path(temp_root).mkdir(parents=True, exist_ok=True)
    state = ServiceState(predictor, options, Path(temp_root))
    card_json, card_md = _card(predictor)

    @asynccontextmanager
    async def lifespan(app):
        yield
        await asyncio.to_thread(state.shutdown)

    app = FastAPI(title="autoseg", version=__version__, lifespan=lifespan,
                  description="3D segmentation with one loaded autoseg model. No authentication: keep it on "
                              "loopback or behind a reverse proxy with TLS and auth.")
    app.state.service = state
    app.add_middleware(RequestLog)

    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem):
        return error_response(exc.status, exc.message, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        return error_response(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        first = errors[0] if errors else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return error_response(422, f"{where}: {first.get('msg', 'invalid request')}")

    @app.get("/health")
    async def health():
        return {"status": "ok", "queue": state.active, "max_queue": options.max_queue, "workers": options.workers,
                "device": str(predictor.settings.device), "mirroring": predictor.settings.mirror}

    @app.get("/model")
    async def model(format: str = "json"):
        if format == "md":
            return PlainTextResponse(card_md, media_type="text/markdown; charset=utf-8")
        if format != "json":
            raise Problem(422, f"format={format}: expected json or md")
        return card_json

    @app.post("/predict", openapi_extra=PREDICT_BODY)
    async def predict(request: Request, report: bool = False):
        limit = options.max_request_bytes
        declared = request.headers.get("content-length")
        declared = int(declared) if declared is not None and declared.isdigit() else None
        if declared is not None and declared > limit:
            if declared <= DRAIN_BYTES:
                await drain(request.stream().__aiter__())
            raise too_large(limit)
        if state.active >= options.max_queue:
            if declared is None or declared <= DRAIN_BYTES:
                await drain(request.stream().__aiter__())
            raise Problem(503, f"busy: {state.active} request(s) in the queue (--max-queue {options.max_queue}); "
                               f"retry later", {"Retry-After": str(state.retry_after())})
        loop = asyncio.get_running_loop()
        deadline = loop.time() + options.timeout_s
        state.active += 1
        job = Job(Path(tempfile.mkdtemp(prefix="req-", dir=state.temp_root)))
        state.jobs.add(job)
        task = None
        try:
            try:
                async with asyncio.timeout_at(deadline):
                    upload = await receive(request.headers.get("content-type"), request.stream(), job.work, limit)
            except TimeoutError:
                raise Problem(504, f"the upload took longer than this server's timeout of {options.timeout_s:g} s "
                                   f"(--timeout)") from None
            except ClientDisconnect:
                raise Problem(400, "the client disconnected during the upload") from None
            task = asyncio.ensure_future(_process(state, job, upload, report))
        finally:
            if task is None:  # nothing runs in the background: clean up now
                await _release(state, job)
        task.add_done_callback(lambda t: _finished(state, job, t))
        try:
            result = await asyncio.wait_for(asyncio.shield(task), max(0.0, deadline - loop.time()))
        except TimeoutError:
            job.cancelled = True
            raise Problem(504, f"no answer within this server's timeout of {options.timeout_s:g} s (--timeout); "
                               f"the request was abandoned") from None
        headers = dict(result.headers)
        if result.media_type != "application/json":
            headers["Content-Disposition"] = f'attachment; filename="{result.filename}"'
        return Response(result.body, media_type=result.media_type, headers=headers)

    return app


async def _process(state: ServiceState, job: Job, upload, report: bool) -> Result:
    """The work of one request in the thread pools; AutosegError and Problem become one-line 4xx."""
    loop = asyncio.get_running_loop()
    predictor, options = state.predictor, state.options
    uploaded: UploadedCase | None = None
    try:
        uploaded = await loop.run_in_executor(state.prepare_pool, _stage, job, open_upload, upload, job.work,
                                              predictor.num_channels, options.max_unpacked_bytes,
                                              predictor.channel_names if DICOM_SERVED else None)
        prepared = await loop.run_in_executor(state.prepare_pool, _stage, job, predictor.prepare_files,
                                              uploaded.case)
        logits = await loop.run_in_executor(state.network_pool, _stage, job, predictor.infer, prepared)
        state.network_s += EMA_WEIGHT * (prepared.timings.get("network_s", state.network_s) - state.network_s)
        return await loop.run_in_executor(state.export_pool, _stage, job, _export, predictor, uploaded, prepared,
                                          logits, job.work, report)
    except (Problem, Abandoned):
        raise
    except AutosegError as e:
        message = uploaded.show(str(e)) if uploaded is not None else str(e)
        raise Problem(400, message.replace(str(state.temp_root), "<upload>")) from None
    except Exception as e:  # noqa: BLE001 - one line for the client and the log, the server goes on
        raise Problem(500, f"{upload.filename}: prediction failed ({one_line(e)})".replace(
            str(state.temp_root), "<upload>")) from None


def _export(predictor: Predictor, uploaded: UploadedCase, prepared, logits, work: Path, report: bool) -> Result:
    """Restore and write the label map exactly as `autoseg predict` does; its bytes, or the JSON report."""
    out = work / "out"
    out.mkdir()
    path = out / uploaded.label_name
    if uploaded.kind == "dicom":  # the label map autoseg predict writes, as the SEG it writes
        segmentation, _ = predictor.finish(prepared, logits, None, report=False)
        write_case_seg(predictor, uploaded.case, segmentation, path)
    else:
        segmentation, _ = predictor.finish(prepared, logits, OutputFiles(path), report=False)
    del logits
    body = path.read_bytes()
    media_type = MEDIA_TYPES.get(uploaded.ending, "application/octet-stream")
    network_s = prepared.timings.get("network_s")
    if not report:
        return Result(body, media_type, uploaded.label_name, network_s)
    prepared.timings["total_s"] = sum(prepared.timings.values())
    case_report = predictor.case_report(prepared, segmentation, uploaded.case.case_id, uploaded.label_name)
    if uploaded.kind == "dicom":
        case_report.output, case_report.dicom_seg = "", uploaded.label_name
        case_report.source_series = [s.series_uid for s in uploaded.case.series]
    case_report.inputs = [InputFile(uploaded.show(f.path), f.sha256) for f in case_report.inputs]
    case_report.warnings = [uploaded.show(w) for w in case_report.warnings]
    document = {"case_id": uploaded.case.case_id, "filename": uploaded.label_name,
                "report": json_safe(to_dict(case_report)), "label_map": base64.b64encode(body).decode("ascii")}
    return Result(json.dumps(document).encode(), "application/json", f"{uploaded.case.case_id}.json", network_s)


def _finished(state: ServiceState, job: Job, task: asyncio.Task) -> None:
    if not task.cancelled():
        task.exception()  # retrieved: an abandoned request's error is not worth a warning
    cleanup = asyncio.ensure_future(_release(state, job))
    state.tasks.add(cleanup)
    cleanup.add_done_callback(state.tasks.discard)


async def _release(state: ServiceState, job: Job) -> None:
    """Remove the request's folder (in a thread: it may be large), then give back its queue place."""
    try:
        await asyncio.to_thread(shutil.rmtree, job.work, True)
    finally:
        state.jobs.discard(job)
        state.active -= 1
