"""Drift benchmark: `drift.check` under real traffic, on the embedded default with one worker,
the real model and a 4-expert rank-8 adapter, checks taken at random moments while jobs run.

Texts no one here wrote: the population is the first paragraph of docstrings in Python's
standard library (its source files, parsed, never imported); the shift is Debian changelog
entries and licence paragraphs from /usr/share. A submitter keeps `--in-flight` jobs of 50–300
texts each running, so most checks land while a job is half done.

- false_alarm_rate: share of `--checks` same-population checks (after the reference is pinned,
  however that falls) that raised any alert;
- detect_obvious: share of `--shift-checks` checks that alerted once a whole window holds only
  shifted jobs; detect_mix30: the same with jobs of 70 % population and 30 % shift texts.
  `*_severe` say how many of those reports were severe.

Usage: python bench/drift.py --json PATH [--checks 20] [--shift-checks 10] [--window 20]
"""

from __future__ import annotations

import argparse
import ast
import gzip
import os
import random
import re
import sys
import sysconfig
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rich.console import Console

from bench.report import report
from ops.drift import check
from producers.client import Client
from producers.local_worker import LocalWorker
from tests.support.deploy import settings_for
from workers.adapters import make_adapter

console = Console(stderr=True)
MODEL = "minilm:bench-v1"
MAX_CHARS = 600  # most within the model's 256 word pieces; the rest are cut (truncate)


def paragraph(text: str) -> str | None:
    first = re.split(r"\n\s*\n", text.strip(), maxsplit=1)[0]
    first = " ".join(first.split())
    return first if 20 <= len(first) <= MAX_CHARS else None


def docstrings() -> list[str]:
    """First paragraphs of the standard library's module, class and function docstrings."""
    root = Path(sysconfig.get_paths()["stdlib"])
    out = []
    for path in sorted(root.rglob("*.py")):
        if {"test", "tests", "site-packages", "idle_test"} & set(path.parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef
                          | ast.AsyncFunctionDef):
                doc = ast.get_docstring(node)
                text = paragraph(doc) if doc else None
                if text:
                    out.append(text)
    return out


def debian_texts() -> list[str]:
    """Debian changelog entries and licence paragraphs (another register entirely)."""
    out = []
    for path in sorted(Path("/usr/share/doc").glob("*/changelog.Debian.gz")):
        with gzip.open(path, "rt", errors="replace") as f:
            entries = f.read().split("\n  * ")[1:]
        for line in entries:
            text = paragraph(line.split("\n -- ")[0])
            if text:
                out.append(text)
    for path in sorted(Path("/usr/share/common-licenses").iterdir()):
        if path.is_file():
            out += [t for t in map(paragraph, re.split(r"\n\s*\n", path.read_text(
                errors="replace"))) if t]
    return out


class Traffic:
    """Keeps `in_flight` jobs running, their texts drawn from the current source."""

    def __init__(self, client: Client, population: list[str], shift: list[str],
                 in_flight: int) -> None:
        self.client, self.population, self.shift = client, population, shift
        self.in_flight = in_flight
        self.mix = 0.0  # share of shift texts in new jobs
        self.running: dict[str, float] = {}  # job id -> mix it was drawn with
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.rng = random.Random(0)
        self.jobs = 0
        self.error: BaseException | None = None

    def texts(self, n: int) -> list[str]:
        return [self.rng.choice(self.shift if self.rng.random() < self.mix
                                else self.population) for _ in range(n)]

    def run(self) -> None:
        try:
            self._feed()
        except BaseException as exc:  # the checks stop on it (`alive`)
            self.error = exc
            raise

    def alive(self) -> None:
        if self.error is not None:
            raise RuntimeError("the traffic thread failed") from self.error

    def _feed(self) -> None:
        while not self.stop.is_set():
            with self.lock:
                ids = list(self.running)
            for job_id in ids:
                if self.client.status(job_id).status.terminal:
                    with self.lock:
                        del self.running[job_id]
            with self.lock:
                room = self.in_flight - len(self.running)
            for _ in range(room):
                self.jobs += 1
                lines = [{"custom_id": f"j{self.jobs}-{i}", "method": "POST",
                          "url": "/v1/embeddings",
                          "body": {"model": MODEL, "input": text, "truncate": True}}
                         for i, text in enumerate(self.texts(self.rng.randint(50, 300)))]
                job = self.client.submit_job(lines)
                with self.lock:
                    self.running[job.id] = self.mix
            self.stop.wait(0.2)

    def switch(self, mix: float) -> None:
        """New jobs draw with `mix`; returns once every job drawn otherwise has ended."""
        self.mix = mix
        while True:
            self.alive()
            with self.lock:
                if all(m == mix for m in self.running.values()):
                    return
            time.sleep(0.5)

    def mid_job(self) -> bool:
        with self.lock:
            return any(self.client.status(j).request_counts.completed > 0
                       for j in self.running)


def checks(traffic: Traffic, client: Client, n: int, gap: tuple[float, float], what: str
           ) -> list[dict]:
    cfg = client.settings
    reports = []
    while len(reports) < n:
        time.sleep(random.uniform(*gap))
        traffic.alive()
        mid = traffic.mid_job()
        r = check.run(client.store, cfg)
        if r["status"] != "compared" or any("insufficient" in c["numbers"]
                                            for c in r["components"]):
            continue  # only checks that ran every test count
        r["mid_job"] = mid
        reports.append(r)
        alerting = [c["component"] for c in r["components"] if c["alert"]]
        console.print(f"{what} check {len(reports)}/{n}: "
                      f"{'SEVERE' if r['severe'] else 'alert' if alerting else 'quiet'} "
                      f"{alerting} mid-job={mid}")
    return reports


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--checks", type=int, default=20)
    parser.add_argument("--shift-checks", type=int, default=10)
    parser.add_argument("--window", type=float, default=20.0, help="BEMQ_DRIFT_WINDOW_SECONDS")
    parser.add_argument("--in-flight", type=int, default=2)
    args = parser.parse_args()

    population, shift = docstrings(), debian_texts()
    if len(population) < 1000 or len(shift) < 1000:
        raise SystemExit(f"too few texts: {len(population)} docstrings, {len(shift)} "
                         "Debian texts (needs /usr/share/doc/*/changelog.Debian.gz)")
    console.print(f"{len(population)} docstring paragraphs, {len(shift)} Debian texts")
    home = Path(tempfile.mkdtemp(prefix="bemq-drift-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("BEMQ_")}
    env.update(BEMQ_HOME=str(home), BEMQ_POLL_INTERVAL="0.1", PYTHONPATH=str(Path.cwd()),
               BEMQ_DRIFT_WINDOW_SECONDS=str(args.window),
               # Windows of seconds, not an hour: keep a tenth of the vectors, not a fiftieth.
               BEMQ_DRIFT_EMBEDDING_RATE="0.1",
               BEMQ_WORKER_SCHEDULE="jobs.reconcile")  # the checks here are the only ones
    cfg = settings_for(env)
    window = args.window
    with Client(cfg) as client:
        path = home / "bench-v1.safetensors"
        path.write_bytes(make_adapter(client.model, experts=4, rank=8, seed=1, b_std=0.05))
        client.add_adapter("bench-v1", path)
        worker = LocalWorker(env, home / "worker.log").start()
        traffic = Traffic(client, population, shift, args.in_flight)
        feeder = threading.Thread(target=traffic.run, name="bemq-bench-traffic", daemon=True)
        try:
            worker.wait_ready(client.store)
            feeder.start()
            while not check.run(client.store, cfg)["status"].startswith("reference pinned"):
                time.sleep(random.uniform(1, 4))
            console.print("reference pinned")
            same = checks(traffic, client, args.checks, (0.25 * window, 0.75 * window), "same")
            found = {}
            for name, mix in (("obvious", 1.0), ("mix30", 0.3)):
                traffic.switch(mix)
                time.sleep(window)  # the window now holds only jobs of this mix
                found[name] = checks(traffic, client, args.shift_checks, (2, 6), name)
        finally:
            traffic.stop.set()
            worker.stop()

    def rate(reports: list[dict], key: str = "alerts") -> float:
        return round(sum(bool(r[key]) for r in reports) / len(reports), 3)

    figures = {
        "false_alarm_rate": rate(same), "checks": len(same),
        "checks_mid_job": sum(r["mid_job"] for r in same),
        "false_severe_rate": rate(same, "severe"),
        "detect_obvious": rate(found["obvious"]),
        "detect_obvious_severe": rate(found["obvious"], "severe"),
        "detect_mix30": rate(found["mix30"]),
        "detect_mix30_severe": rate(found["mix30"], "severe"),
        "window_s": window, "jobs": traffic.jobs,
    }
    report(args.json, figures, "drift checks under real traffic",
           {"false_alarm_rate": "≤ 0.05", "detect_obvious": "≥ 0.9", "detect_mix30": "≥ 0.6"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
