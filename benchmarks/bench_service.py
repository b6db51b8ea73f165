"""Per-scan latency of `autoseg serve` (model loaded once) against one-scan cold runs of `autoseg predict`
and nnU-Net v2's `nnUNetv2_predict`, on the CPU, Hippocampus, TTA on, side by side in one run.

    .venv/bin/python benchmarks/bench_service.py [--scans 20] [--clients 4] [--cold-repeats 3]
        [--work /tmp/autoseg-bench-service] [--data ../shared/data/Dataset004_Hippocampus]

Models: as bench_predict.py's Hippocampus part (its helpers are imported, not copied): autoseg's
3d_fullres fold-0 model copied from the training benchmark when there (else trained here for
--train-iterations), exported here to one package file; nnU-Net's fold-0 model trained here for as many
iterations. Scans: the first --scans validation cases of fold 0 (sorted).

Measured, in this order (nothing else of the benchmark runs at the same time):
  (b) cold autoseg: `autoseg predict -m model.autoseg` on a folder with the first scan only; wall time of
      the whole command (start-up, package loading, one case), median of --cold-repeats runs;
  (c) cold nnU-Net: `nnUNetv2_predict` on the same folder (-npp 1 -nps 1, as bench_predict.py), same way;
      the two tools alternate run by run;
  (a) warm service: `autoseg serve model.autoseg --device cpu` (TTA on) started once; --warmup scans posted
      untimed, then each of the --scans scans POSTed one at a time (one keep-alive client) and the time from
      sending the request to the last byte of the label map taken; median (and p90) reported;
  (d) throughput: --clients concurrent clients post --throughput-scans scans (the scans in turn) as fast as
      answers come; scans/s = scans / wall time.
Checks: every answer is 200 and in its scan's geometry; the service's label map for the first scan is
byte-identical to cold `autoseg predict`'s (same package, same settings). Target: (a) median <= 1/5 of
(c). Also recorded: the server's start-up time to its first /health answer and its peak memory (summed
PSS of its process tree, sampled every 0.5 s). Printed: the CPU's avx2 / avx512f / avx512_bf16 / amx
flags. Results go to WORK/results-service.json, command logs to WORK/logs/.
"""
from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_predict import (ENDING, TRAIN_WORK, Bench, _link_inputs, autoseg_model, autoseg_version,  # noqa: E402
                           check_outputs, predict, train_nnunet_checkpointed, warm_up)
from measure import tree_rss_kb  # noqa: E402
from autoseg.model.device import cpu_info  # noqa: E402
from nnunet_env import NNUNET_SPEC, VENV, ensure_nnunet  # noqa: E402
from nnunet_train import CONFIG  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TARGET = 1 / 5  # warm service latency / nnU-Net's cold single-scan wall
READY_S = 300


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def export_package(bench: Bench, a_model: dict, package: Path) -> Path:
    """autoseg's fold-0 model as one package file (rewritten every run: it is seconds)."""
    bench.run([sys.executable, "-m", "autoseg", "export", Path(a_model["models"]).parent, "-o", package,
               "--config", CONFIG, "--folds", "0"], "export")
    return package


def cold_autoseg(bench: Bench, package: Path, inputs: Path, out: Path, name: str) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    return bench.run([sys.executable, "-m", "autoseg", "predict", "-i", inputs, "-o", out, "-m", package,
                      "--device", "cpu", "-q"], name)


class Service:
    """`autoseg serve` in its own process, its memory sampled until stopped."""

    def __init__(self, package: Path, logs: Path, clients: int):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = logs / "service.log"
        self.cmd = [sys.executable, "-m", "autoseg", "serve", str(package), "--port", str(self.port),
                    "--device", "cpu", "--max-queue", str(max(8, 2 * clients)), "--timeout", "3600"]
        self.peak_kb = 0
        self._stop = threading.Event()

    def start(self) -> float:
        """Seconds until /health answers."""
        import httpx

        start = time.perf_counter()
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        threading.Thread(target=self._sample, daemon=True).start()
        while time.perf_counter() - start < READY_S:
            if self.proc.poll() is not None:
                raise RuntimeError(f"autoseg serve exited with {self.proc.returncode}:\n"
                                   f"{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=5).status_code == 200:
                    return time.perf_counter() - start
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"autoseg serve not answering after {READY_S} s (log: {self.log})")

    def _sample(self) -> None:
        while not self._stop.is_set() and self.proc.poll() is None:
            self.peak_kb = max(self.peak_kb, tree_rss_kb(self.proc.pid))
            self._stop.wait(0.5)

    def stop(self) -> None:
        self._stop.set()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def post(client, url: str, scan: Path, out: Path | None = None) -> float:
    """Seconds from sending `scan` to the last byte of its label map; raises on anything but 200."""
    data = scan.read_bytes()  # read before the clock starts: the client's disk is not the service's time
    start = time.perf_counter()
    r = client.post(f"{url}/predict", files={"file": (scan.name, data)})
    seconds = time.perf_counter() - start
    if r.status_code != 200:
        raise RuntimeError(f"POST {scan.name}: {r.status_code} {r.text[:300]}")
    if out is not None:
        out.write_bytes(r.content)
    return seconds


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/autoseg-bench-service"))
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "Dataset004_Hippocampus")
    parser.add_argument("--scans", type=int, default=20, help="validation scans timed one at a time (default 20)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed requests before the timed ones (default 2)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients for throughput (default 4)")
    parser.add_argument("--throughput-scans", type=int, default=40,
                        help="scans posted by the concurrent clients together (default 40)")
    parser.add_argument("--cold-repeats", type=int, default=3, help="cold single-scan runs per tool (median)")
    parser.add_argument("--train-iterations", type=int, default=20,
                        help="training iterations where a model is trained here (default 20)")
    parser.add_argument("--no-reuse", dest="reuse_train_model", action="store_false",
                        help=f"train autoseg's model here instead of copying it from {TRAIN_WORK}")
    parser.add_argument("--nnunet-npp", type=int, default=1, help="nnUNetv2_predict -npp (default 1)")
    parser.add_argument("--nnunet-nps", type=int, default=1, help="nnUNetv2_predict -nps (default 1)")
    parser.add_argument("--timeout", type=float, default=2400, help="limit per command in seconds")
    args = parser.parse_args()
    if args.scans < 1 or args.clients < 1 or args.cold_repeats < 1 or args.throughput_scans < 1:
        sys.exit("bench_service: --scans, --clients, --cold-repeats and --throughput-scans must be at least 1")
    data, work = args.data, args.work
    if not (data / "dataset.json").is_file():
        sys.exit(f"bench_service: {data}: no dataset.json (pass --data)")
    import httpx

    work.mkdir(parents=True, exist_ok=True)
    cpu = cpu_info()
    print(f"CPU: {cpu['model']}, {cpu['cpus']} logical CPUs; flags: "
          + ", ".join(f"{f} {'yes' if v else 'no'}" for f, v in cpu["flags"].items()), flush=True)
    ensure_nnunet()
    bench = Bench(args)
    version = autoseg_version()
    print(f"autoseg {version}; {NNUNET_SPEC} in {VENV}", flush=True)

    a_model = autoseg_model(bench, data, work / "autoseg", args.train_iterations, "hippocampus",
                            TRAIN_WORK / "autoseg-speed-auto-model" if args.reuse_train_model else None)
    n_model = train_nnunet_checkpointed(bench, data, work / "nnunet", a_model["train_ids"],
                                        sorted(a_model["val_ids"])[:2], args.train_iterations, "hippocampus")
    package = export_package(bench, a_model, work / "model.autoseg")
    cases = sorted(a_model["val_ids"])[:args.scans]
    scans = {c: data / "imagesTr" / f"{c}_0000{ENDING}" for c in cases}
    one = _link_inputs(work / "input-one", data / "imagesTr", cases[:1])
    predictions = work / "predictions"
    warm_up(bench)

    # (b), (c): cold single-scan runs, the tools alternating
    cold: dict[str, list[dict]] = {"autoseg": [], "nnU-Net": []}
    for rep in range(args.cold_repeats):
        m = cold_autoseg(bench, package, one, predictions / "cold-autoseg", f"cold-autoseg-run{rep + 1}")
        check_outputs("autoseg", predictions / "cold-autoseg", cases[:1], scans)
        cold["autoseg"].append(m)
        m2 = predict(bench, "nnU-Net", one, predictions / "cold-nnunet", True, a_model, n_model,
                     f"cold-nnunet-run{rep + 1}", 0.5)
        check_outputs("nnU-Net", predictions / "cold-nnunet", cases[:1], scans)
        cold["nnU-Net"].append(m2)
        print(f"cold run {rep + 1}: autoseg predict {m['wall_s']:.2f} s, nnUNetv2_predict {m2['wall_s']:.2f} s",
              flush=True)

    # (a), (d): the warm service
    service = Service(package, bench.logs, args.clients)
    startup_s = service.start()
    print(f"autoseg serve ready after {startup_s:.2f} s on {service.url}", flush=True)
    served = predictions / "service"
    shutil.rmtree(served, ignore_errors=True)
    served.mkdir(parents=True)
    try:
        with httpx.Client(timeout=args.timeout) as client:
            for i in range(args.warmup):
                post(client, service.url, scans[cases[i % len(cases)]])
            latencies = {}
            for case in cases:
                latencies[case] = post(client, service.url, scans[case], served / f"{case}{ENDING}")
        check_outputs("autoseg serve", served, cases, scans)
        if (served / f"{cases[0]}{ENDING}").read_bytes() != (predictions / "cold-autoseg" /
                                                             f"{cases[0]}{ENDING}").read_bytes():
            raise RuntimeError(f"{cases[0]}: the service's label map differs from autoseg predict's")
        order = [cases[i % len(cases)] for i in range(args.throughput_scans)]

        def client_loop(share: list[str]) -> list[float]:
            with httpx.Client(timeout=args.timeout) as c:
                return [post(c, service.url, scans[case]) for case in share]

        start = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            concurrent = [s for f in [pool.submit(client_loop, order[k::args.clients]) for k in range(args.clients)]
                          for s in f.result()]
        throughput_wall = time.perf_counter() - start
    finally:
        service.stop()

    warm = list(latencies.values())
    med = {"service_s": statistics.median(warm), "service_p90_s": percentile(warm, 0.9),
           "autoseg_cold_s": statistics.median(m["wall_s"] for m in cold["autoseg"]),
           "nnunet_cold_s": statistics.median(m["wall_s"] for m in cold["nnU-Net"])}
    ratios = {"service / nnU-Net cold": med["service_s"] / med["nnunet_cold_s"],
              "service / autoseg cold": med["service_s"] / med["autoseg_cold_s"],
              "autoseg cold / nnU-Net cold": med["autoseg_cold_s"] / med["nnunet_cold_s"]}
    throughput = {"clients": args.clients, "scans": len(order), "wall_s": throughput_wall,
                  "scans_per_s": len(order) / throughput_wall, "latency_median_s": statistics.median(concurrent),
                  "single_client_scans_per_s": 1 / med["service_s"]}
    met = ratios["service / nnU-Net cold"] <= TARGET
    print(f"\nHippocampus, CPU, TTA on; {len(cases)} scans one at a time after {args.warmup} warm-up request(s); "
          f"cold runs: median of {args.cold_repeats}")
    print(f"{'':34}{'seconds per scan':>18}")
    print(f"{'(a) autoseg serve, warm (median)':34}{med['service_s']:18.3f}   p90 {med['service_p90_s']:.3f}")
    print(f"{'(b) autoseg predict, cold':34}{med['autoseg_cold_s']:18.3f}")
    print(f"{'(c) nnUNetv2_predict, cold':34}{med['nnunet_cold_s']:18.3f}")
    for name, value in ratios.items():
        print(f"ratio {name:28}{value:18.3f}")
    print(f"throughput, {args.clients} clients: {throughput['scans_per_s']:.2f} scans/s ({len(order)} scans in "
          f"{throughput_wall:.1f} s, median latency {throughput['latency_median_s']:.3f} s); one client: "
          f"{throughput['single_client_scans_per_s']:.2f} scans/s")
    print(f"service: ready after {startup_s:.1f} s, peak memory {service.peak_kb / 1024:.0f} MB")
    summary = (f"warm service / nnU-Net cold single scan: {ratios['service / nnU-Net cold']:.3f} "
               f"(target <= {TARGET:.3f}: {'met' if met else 'NOT met'})")
    print(summary)
    result = {"version": version, "cpu": cpu, "cases": cases, "warmup": args.warmup,
              "cold_repeats": args.cold_repeats, "nnunet_npp": args.nnunet_npp, "nnunet_nps": args.nnunet_nps,
              "autoseg_model": {k: v for k, v in a_model.items() if k not in ("train_ids", "val_ids")},
              "nnunet_model": {k: v for k, v in n_model.items() if k != "env"},
              "package": str(package), "cold": cold, "latencies_s": latencies, "medians": med, "ratios": ratios,
              "throughput": throughput, "service_startup_s": startup_s,
              "service_peak_mb": service.peak_kb / 1024, "target": TARGET, "target_met": met, "summary": summary}
    (work / "results-service.json").write_text(json.dumps(result, indent=1))
    print(f"results: {work / 'results-service.json'}")


if __name__ == "__main__":
    main()
