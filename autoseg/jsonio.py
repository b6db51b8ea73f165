"""Typed dataclasses <-> JSON, atomic writes, and JSON Schema derived from the same type hints.

One mechanism serves plans, fingerprints and case properties, so the schema committed
in plans/ can never drift from the classes: tests regenerate it and compare.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import types
import typing
from pathlib import Path
from typing import Any, TypeVar, get_args, get_origin, get_type_hints

from autoseg.errors import AutosegError

T = TypeVar("T")


TEMP_PREFIX = ".tmp-"


NAME_MAX = 255  # bytes in one file name on every file system autoseg writes to (ext4, xfs, tmpfs, NFS)


def temp_path(path: str | os.PathLike) -> Path:
    """The temp name beside `path` that atomic writes use: TEMP_PREFIX, the pid, then the name, so cleanup can
    find it and writers see the same ending. A name too long to take the prefix gets a short stand-in (hash +
    ending) instead: a final name that fits must not fail for its temp file's sake."""
    path = Path(path)
    tmp = path.with_name(f"{TEMP_PREFIX}{os.getpid()}-{path.name}")
    if len(os.fsencode(tmp.name)) <= NAME_MAX:
        return tmp
    digest = hashlib.sha256(os.fsencode(path.name)).hexdigest()[:16]
    ending = "".join(path.suffixes[-2:])
    if len(ending) > 16:  # dots inside a long name are not an ending
        ending = path.suffix if len(path.suffix) <= 16 else ""
    return path.with_name(f"{TEMP_PREFIX}{os.getpid()}-{digest}{ending}")


def remove_dead_temps(path: str | os.PathLike) -> None:
    """Remove the temp files a killed writer of `path` left (`.tmp-<pid>-<name>` whose process is gone); a
    live writer's are kept. For single outputs that are rewritten in place, such as a model package."""
    path = Path(path)
    prefix_length = len(TEMP_PREFIX)
    for tmp in path.parent.glob(f"{TEMP_PREFIX}*-{path.name}"):
        pid = tmp.name[prefix_length:].split("-", 1)[0]
        if pid.isdigit() and not process_alive(int(pid)):
            tmp.unlink(missing_ok=True)


def process_alive(pid: int) -> bool:
    """Whether a process with this id exists (another user's counts): temp files of the living are kept."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temp path beside `path` (same ending, so writers pick the same format); on
    success it is renamed over `path`, on failure removed. A killed process leaves at most a
    TEMP_PREFIX file, never a half-written target.

    An OSError on the way out names the final file (a bare `f.write` error names none, and the temp
    name means nothing to the user), so the one line the CLI prints (autoseg.output_location) says
    which output could not be written. Writers that hide the OS error in a RuntimeError (torch.save,
    ITK) get it back when the folder turns out to be full or unwritable."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        if e.filename is None or e.filename == str(tmp):
            e.filename = str(path)
        raise
    except RuntimeError as e:
        from autoseg.output_location import diagnose_write_failure  # the failure path only; it imports us

        code = diagnose_write_failure(path.parent)
        if code is None:
            raise
        raise OSError(code, os.strerror(code), str(path)) from e
    finally:
        tmp.unlink(missing_ok=True)


def fsync_file(path: str | os.PathLike) -> None:
    """Flush a file that another library wrote and closed (nibabel, ITK) to the disk before it is renamed
    into place, so a crash of the machine cannot leave a final name over missing data."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make the renames in `folder` durable (best effort: some file systems refuse fsync on a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def json_safe(obj):
    """NaN and infinities are not JSON: null in their place, recursively through dicts and lists."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def write_json_atomic(path: str | os.PathLike, obj: Any, compact: bool = False) -> None:
    """Indented for documents people read; compact (and much faster) for large machine files."""
    if dataclasses.is_dataclass(obj):
        obj = to_dict(obj)
    text = json.dumps(obj, separators=(",", ":")) if compact else json.dumps(obj, indent=2)
    write_text_atomic(path, text + "\n")


_PLAIN_TYPES = {int, float, str}


def to_dict(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        if set(map(type, obj)) <= _PLAIN_TYPES:  # C-speed check: class locations are lists of 10^5 ints
            return list(obj)
        if all(type(v) is list and all(type(x) in (int, float) for x in v) for v in obj):
            return [list(v) for v in obj]
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): to_dict(v) for k, v in obj.items()}
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):  # numpy scalars
        return obj.item()
    return obj


_PLAIN = {
    int: lambda v: type(v) is int,
    float: lambda v: type(v) in (int, float),
    str: lambda v: type(v) is str,
}


def _is_union(tp) -> bool:
    return get_origin(tp) in (typing.Union, types.UnionType)


def _convert(value: Any, tp: Any, where: str) -> Any:
    if tp is Any:
        return value
    if _is_union(tp):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, where)
            except AutosegError as e:
                errors.append(str(e))
        raise AutosegError(errors[0] if errors else f"{where}: unexpected null")
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise AutosegError(f"{where}: expected an object, got {type(value).__name__}")
        return _from_dict(tp, value, where)
    if origin in (list, tuple):
        if not isinstance(value, list):
            raise AutosegError(f"{where}: expected a list, got {type(value).__name__}")
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise AutosegError(f"{where}: expected {len(args)} items, got {len(value)}")
            return tuple(_convert(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        if item in _PLAIN and all(_PLAIN[item](v) for v in value):  # fast path: long coordinate lists
            out = [float(v) for v in value] if item is float else list(value)
            return tuple(out) if origin is tuple else out
        inner = get_args(item)[0] if get_origin(item) is list and get_args(item) else None
        if inner in _PLAIN and all(type(v) is list and all(_PLAIN[inner](x) for x in v) for v in value):
            return [[float(x) for x in v] if inner is float else v for v in value]
        out = [_convert(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise AutosegError(f"{where}: expected an object, got {type(value).__name__}")
        _, vt = get_args(tp) or (str, Any)
        return {k: _convert(v, vt, f"{where}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise AutosegError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise AutosegError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise AutosegError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise AutosegError(f"{where}: expected a string, got {value!r}")
        return value
    if get_origin(tp) is typing.Literal:
        if value not in get_args(tp):
            raise AutosegError(f"{where}: expected one of {list(get_args(tp))}, got {value!r}")
        return value
    raise TypeError(f"unsupported type {tp!r} at {where}")


def _from_dict(cls, data: dict, where: str):
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise AutosegError(f"{where}: unknown field(s) {', '.join(unknown)}")
    kwargs = {}
    for name, f in fields.items():
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise AutosegError(f"{where}: missing field '{name}'")
            continue
        kwargs[name] = _convert(data[name], hints[name], f"{where}.{name}")
    return cls(**kwargs)


def from_dict(cls: type[T], data: dict, where: str = "$") -> T:
    return _from_dict(cls, data, where)


def load_versioned(cls: type[T], path: str | os.PathLike, version: int, remedy: str = "") -> T:
    """Read a JSON document written by `write_json_atomic` and check its version field; `remedy` tells
    the user how to get a current one (e.g. "rerun autoseg plan")."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise AutosegError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AutosegError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise AutosegError(f"{path}: expected a JSON object")
    found = data.get("version")
    if found != version:
        older = isinstance(found, int) and found < version
        raise AutosegError(f"{path}: {cls.__name__} version {found!r} is not supported (expected {version})"
                           + ("; it was written by an older autoseg" if older else "")
                           + (f": {remedy}" if remedy else ""))
    return from_dict(cls, data, where=str(path))


def json_schema(cls, title: str | None = None) -> dict:
    """JSON Schema (draft 2020-12) for a dataclass, from its type hints."""
    defs: dict[str, dict] = {}
    _schema_for(cls, defs)
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": title or cls.__name__}
    schema.update(defs.pop(cls.__name__))
    if defs:
        schema["$defs"] = dict(sorted(defs.items()))
    return schema


def _schema_for(tp, defs: dict) -> dict:
    if tp is Any:
        return {}
    if _is_union(tp):
        return {"anyOf": [_schema_for(a, defs) for a in get_args(tp)]}
    if tp is type(None):
        return {"type": "null"}
    if dataclasses.is_dataclass(tp):
        name = tp.__name__
        if name not in defs:
            defs[name] = {}  # placeholder breaks recursion
            hints = get_type_hints(tp)
            props, required = {}, []
            for f in dataclasses.fields(tp):
                props[f.name] = _schema_for(hints[f.name], defs)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                    required.append(f.name)
            doc = (tp.__doc__ or "").strip().splitlines()
            entry = {"type": "object"}
            if doc and not doc[0].startswith(name + "("):
                entry["description"] = doc[0]
            entry.update({"properties": props, "required": required, "additionalProperties": False})
            defs[name] = entry
        return {"$ref": f"#/$defs/{name}"}
    origin = get_origin(tp)
    if origin in (list, tuple):
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            return {"type": "array", "prefixItems": [_schema_for(a, defs) for a in args],
                    "minItems": len(args), "maxItems": len(args)}
        return {"type": "array", "items": _schema_for(args[0], defs) if args else {}}
    if origin is dict:
        _, vt = get_args(tp) or (str, Any)
        return {"type": "object", "additionalProperties": _schema_for(vt, defs)}
    if origin is typing.Literal:
        return {"enum": list(get_args(tp))}
    return {float: {"type": "number"}, int: {"type": "integer"}, bool: {"type": "boolean"},
            str: {"type": "string"}}[tp]
