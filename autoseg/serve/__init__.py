"""`autoseg serve MODEL`: predictions over HTTP from a model loaded once (needs `pip install 'autoseg[serve]'`).

    autoseg serve model.autoseg [--host 127.0.0.1] [--port 8000] [--workers 2] [--max-queue 8]
                                [--max-request-mb 512] [--timeout 600] [--device auto] [--no-tta]

Endpoints
---------
POST /predict   multipart/form-data, field `file`: one scan, `.nii.gz` or `.nii` (3D; 4D for a
                multi-channel model), or a `.zip` of one case's channel files `{case}_0000.nii.gz`,
                `{case}_0001.nii.gz`, ... (recognised by content, not by name), or a `.zip` of the files
                of one DICOM series (one-channel models, with the dicom extra installed: docs/dicom.md).
                200: the label map itself, in the scan's format and with the scan's header: the same
                bytes `autoseg predict` writes for that scan (`application/gzip` for .nii.gz,
                `Content-Disposition: attachment; filename="{case}.nii.gz"`). For a DICOM series: the
                DICOM SEG `autoseg predict` writes for it (`application/dicom`, "{case}.seg.dcm").
                `?report=true`: 200 JSON instead: {"case_id", "filename", "report": the case report
                (as `{case}_report.json` of autoseg predict), "label_map": the label map file, base64}.

                    curl -sf -F file=@scan.nii.gz http://127.0.0.1:8000/predict -o scan_seg.nii.gz
                    curl -sf -F file=@case.zip "http://127.0.0.1:8000/predict?report=true"

GET /health     {"status": "ok", "queue": requests admitted and not finished, "max_queue": N, ...}
GET /model      the model card as JSON; `?format=md`: as Markdown (what `autoseg info` prints)

Errors are JSON, one line, never a traceback: {"error": "<what, naming the uploaded file>"}.
  400  unreadable or truncated file, NaN/Inf voxels, wrong channel count, channels on different grids,
       not a NIfTI or zip, a zip with unsafe member names or several cases, an empty upload
  413  body over --max-request-mb (Content-Length, and bytes counted while streaming), or a scan or zip
       that would decode to more than 8x that (zip and gzip bombs)
  422  no `file` field, or not multipart/form-data
  503  --max-queue requests already admitted; `Retry-After` (seconds) says when to try again
  504  no answer within --timeout; the work is abandoned and its files removed
  500  anything unexpected (one line; the server goes on)

Every request works in its own folder under `<temp dir>/autoseg-serve-<pid>/`, removed when it ends
(success, error or timeout); a server killed with SIGKILL leaves its folder, and the next server
started with the same temp dir removes it. Nothing is written elsewhere. One line per request is logged
to stderr.

Security: binds to 127.0.0.1 (this machine only) unless --host says otherwise. There is no
authentication and no TLS: to expose it beyond this machine, put a reverse proxy with TLS and
authentication in front.

Python: `serve(model, ServeOptions(...))`; `create_app(predictor, options, temp_root)` returns the
FastAPI application for use in another ASGI server.
"""
from __future__ import annotations

from autoseg.serve.options import ServeOptions
from autoseg.serve.server import serve

__all__ = ["ServeOptions", "create_app", "serve"]


def __getattr__(name: str):
    if name == "create_app":  # imports fastapi: only when asked for
        from autoseg.serve.app import create_app
        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
