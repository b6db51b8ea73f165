"""Throw-away nnU-Net v2 environment used as a reference for benchmarks.

Stdlib only: creates a private venv on demand, installs a CPU torch wheel
first (a bare ``torch`` would pull GBs of CUDA) and then nnunetv2, and runs
nnU-Net console scripts with the nnUNet_* folder variables set.
Note: timm pulls a CUDA torchvision that does not import next to the CPU torch;
fingerprinting and planning never import it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

VENV = Path("/tmp/autoseg-nnunet-venv")
TORCH_SPEC = "torch==2.13.0"
NNUNET_SPEC = "nnunetv2==2.8.1"
_MARKER = VENV / ".autoseg-installed"


def _log(msg: str) -> None:
    print(f"[nnunet_env] {msg}", file=sys.stderr, flush=True)


def _python() -> Path:
    return VENV / "bin" / "python"


def ensure_nnunet() -> Path:
    """Create the venv and install torch + nnunetv2 if needed; return its python."""
    wanted = f"{TORCH_SPEC}\n{NNUNET_SPEC}\n"
    if _MARKER.is_file() and _MARKER.read_text() == wanted and _python().exists():
        return _python()
    if not _python().exists():
        _log(f"creating venv {VENV}")
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    pip = [str(_python()), "-m", "pip", "install", "--quiet"]
    # torch first (the local CPU wheel), then nnunetv2 with torch pinned again so
    # that transitive deps (timm -> torchvision) cannot upgrade it to a CUDA build.
    for specs in ([TORCH_SPEC], [NNUNET_SPEC, TORCH_SPEC]):
        _log(f"pip install {' '.join(specs)}")
        subprocess.run(pip + specs, check=True, stdout=sys.stderr)
    _MARKER.write_text(wanted)
    _log("nnU-Net environment ready")
    return _python()


def nnunet_env(raw, preprocessed, results) -> dict:
    """os.environ copy with nnU-Net's folder variables and the venv on PATH."""
    env = dict(os.environ)
    env["nnUNet_raw"] = str(raw)
    env["nnUNet_preprocessed"] = str(preprocessed)
    env["nnUNet_results"] = str(results)
    env["PATH"] = os.pathsep.join([str(VENV / "bin"), env.get("PATH", "")])
    env["VIRTUAL_ENV"] = str(VENV)
    return env


def run_nnunet(args: list[str], raw, preprocessed, results, **kw) -> subprocess.CompletedProcess:
    """Run an nnU-Net console script (``args[0]``) from the venv; raise on failure."""
    ensure_nnunet()
    for d in (raw, preprocessed, results):
        Path(d).mkdir(parents=True, exist_ok=True)
    cmd = [str(VENV / "bin" / args[0]), *map(str, args[1:])]
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    proc = subprocess.run(cmd, env=nnunet_env(raw, preprocessed, results), **kw)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or "").splitlines()[-30:])
        raise RuntimeError(f"{' '.join(cmd)} failed with exit code {proc.returncode}:\n{tail}")
    return proc


def link_raw_dataset(data: Path, work: Path, preprocessed_name: str = "preprocessed") -> tuple[Path, Path, Path, str]:
    """nnU-Net's three folders under `work`, the dataset linked into raw; returns (raw, preprocessed, results, id)."""
    raw, pre, res = work / "raw", work / preprocessed_name, work / "results"
    for d in (raw, pre, res):
        d.mkdir(parents=True, exist_ok=True)
    link = raw / data.name
    if link.is_symlink() and link.resolve() != Path(data).resolve():
        link.unlink()  # a rerun with other data in the same work folder
    if not link.is_symlink():
        link.symlink_to(Path(data).resolve())
    return raw, pre, res, str(int(data.name[len("Dataset"):len("Dataset") + 3]))


def fingerprint_and_plan_commands(dataset_id: str, workers: int) -> list[list[str]]:
    return [[str(VENV / "bin" / "nnUNetv2_extract_fingerprint"), "-d", dataset_id, "-np", str(workers)],
            [str(VENV / "bin" / "nnUNetv2_plan_experiment"), "-d", dataset_id]]
