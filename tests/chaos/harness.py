"""Runs worker groups over the same pre-filled input and compares their outputs field by field.

A *run* is a group of `vitals worker` processes with an app id and output topics of its own,
reading input topics shared by every run. The reference run is left alone; the others are
disturbed (SIGKILL at seeded random moments, workers joining and leaving). When every run has
worked off its input, the outputs are read back from the topics and compared:

- the last record per key of `vitals.customer`, `vitals.business` and `vitals.feature`;
- every customer's daily series: its day-close records of `vitals.customer`, by day
  (listed apart, `series`, and not yet failing a run: docs/chaos.md);
- the alert transitions per alert id (a resend of the same transition is listed apart);
- the dead letters, by input family, content and code.

Churn-model fields (and `churn_risk_high` transitions) follow model versions that reach each
worker asynchronously, so they are compared apart (`churn_differences`) and do not fail a run
(docs/chaos.md). Everything else must be identical.
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

from tests.integration.conftest import WorkerProcess
from tests.integration.kafka import In, group_lag, read_all

FAMILIES = ("signup", "usage", "feature", "billing", "support")
QUIET_SECONDS = 2.0
OUTPUTS = ("customer", "business", "feature_out", "alerts", "deadletter")
# Fields driven by the churn model (its versions reach workers asynchronously).
CHURN_FIELDS = {"customer": ("churn",), "business": ("churn_model",)}
CHURN_RULES = ("churn_risk_high",)


def input_topic(prefix: str, family: str) -> str:
    return f"{prefix}.events.{family}"


def fill(bootstrap: str, prefix: str, events: list[tuple[str, Any]]) -> int:
    """Pre-fill the shared input topics; returns the number of records."""
    In(bootstrap).send_events(prefix, events)
    return len(events)


@dataclass
class Run:
    """One worker group over the shared input."""
    broker_url: str
    bootstrap: str
    prefix: str
    name: str
    workers: int
    logdir: Path
    store: str = "memory://"
    input_prefix: str = ""          # the shared input topics; the run's own prefix if empty
    extra_env: dict[str, str] = field(default_factory=dict)
    procs: list[WorkerProcess] = field(default_factory=list)
    kills: int = 0
    counters_lost: bool = False   # a worker was killed or stopped: its counters are gone

    @property
    def inputs(self) -> str:
        return self.input_prefix or self.prefix

    @property
    def app_id(self) -> str:
        return f"{self.prefix}-{self.name}"

    def topic(self, output: str) -> str:
        return f"{self.prefix}.{output}.{self.name}"

    def env(self, index: int) -> dict[str, str]:
        env = {f"VITALS_TOPICS__{f.upper()}": input_topic(self.inputs, f) for f in FAMILIES}
        env.update({f"VITALS_TOPICS__{o.upper()}": self.topic(o) for o in OUTPUTS})
        env.update({
            "VITALS_APP__ID": self.app_id,
            "VITALS_TOPICS__REPARTITION": self.topic("internal"),
            "VITALS_TOPICS__BUSINESS_INTERNAL": self.topic("internal-business"),
            "VITALS_APP__STORE": f'"{self.store}"',
            # The production skew (the test overlay widens it for the shared test worker): the
            # simulated bad records include events dated weeks ahead.
            "VITALS_TIME__MAX_SKEW_DAYS": "1.0",
        })
        if self.store.startswith("rocksdb"):
            data = self.logdir / f"{self.app_id}-data-{index}"   # one per run: seeds share logdir
            env["VITALS_APP__DATA_DIR"] = f'"{data}"'
        env.update(self.extra_env)
        return env

    def start(self, count: int | None = None) -> Run:
        for _ in range(self.workers if count is None else count):
            self.add_worker()
        return self

    def add_worker(self) -> WorkerProcess:
        index = len(self.procs)
        worker = WorkerProcess(self.broker_url, self.logdir / f"{self.name}-{index}.log",
                               **self.env(index))
        self.procs.append(worker)
        # Each joining worker makes both groups rebalance; on a loaded 2-core machine the
        # fifth of five took over 2 minutes to be ready.
        worker.start(timeout=300)
        return worker

    def kill_and_restart(self, index: int) -> None:
        worker = self.procs[index]
        worker.kill()
        self.kills += 1
        self.counters_lost = True
        worker.start(timeout=120)

    def stop_worker(self, index: int) -> None:
        """A graceful stop (SIGTERM), as an orchestrator scales down: it must exit 0."""
        started = time.monotonic()
        self.counters_lost = True
        code = self.procs[index].stop()
        if code != 0:
            raise AssertionError(f"{self.name}: a worker stopped with SIGTERM exited {code} "
                                 f"after {time.monotonic() - started:.0f} s:\n"
                                 f"{self.procs[index].log_tail()}")

    def lag(self) -> int:
        ingest = group_lag(self.bootstrap, f"{self.app_id}-ingest",
                           [input_topic(self.inputs, f) for f in FAMILIES])
        stages = group_lag(self.bootstrap, self.app_id,
                           [self.topic("internal"), self.topic("internal-business")])
        return ingest + stages

    def wait_caught_up(self, timeout: float = 300.0) -> float:
        """Until both groups have committed everything; returns the seconds it took."""
        started = time.monotonic()
        deadline = started + timeout
        lag = -1
        while time.monotonic() < deadline:
            for worker in self.procs:
                if worker.proc is not None and worker.proc.poll() not in (None, 0):
                    raise AssertionError(f"{self.name}: a worker exited "
                                         f"{worker.proc.returncode}:\n{worker.log_tail()}")
            lag = self.lag()
            if lag == 0:
                # The embedded broker's end offsets can be a batch short, so the groups'
                # committed offsets may look complete too early: also ask the workers (their
                # lag comes from fetch responses) and wait until they have counted nothing new.
                seen = self._progress()
                time.sleep(QUIET_SECONDS)
                if self.lag() == 0 and self._progress() == seen and seen[1] == 0:
                    return time.monotonic() - started
                continue
            time.sleep(0.5)
        raise AssertionError(f"{self.name} did not catch up in {timeout} s (lag {lag})")

    def _progress(self) -> tuple[float, float]:
        """(events counted, records not yet committed) summed over the running workers."""
        counted = behind = 0.0
        for worker in self.procs:
            if worker.proc is None or worker.proc.poll() is not None:
                continue
            try:
                counted += worker.metric("vitals_events_total")
                behind += worker.metric("vitals_consumer_lag_records")
            except OSError:    # restarting: not settled
                return math.nan, math.nan
        return counted, behind

    def stop(self) -> None:
        for worker in self.procs:
            worker.stop()

    def outputs(self, settle: float = 3.0) -> Outputs:
        time.sleep(settle)  # the last flushes
        return Outputs.read(self.bootstrap, self)

    def counters(self) -> dict[tuple[tuple[str, str], ...], float] | None:
        """`vitals_events_total` per label set, summed over the workers; None when a worker
        was killed or stopped (a process's counters go with it)."""
        if self.counters_lost:
            return None
        from prometheus_client.parser import text_string_to_metric_families

        out: dict[tuple[tuple[str, str], ...], float] = {}
        for worker in self.procs:
            text = worker.get("/metrics")[1].decode()
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    if sample.name == "vitals_events_total":
                        key = tuple(sorted(sample.labels.items()))
                        out[key] = out.get(key, 0.0) + sample.value
        return out


@dataclass
class Outputs:
    latest: dict[str, dict[str, dict[str, Any]]]
    transitions: dict[str, list[tuple[str, str]]]
    resent_transitions: int
    deadletters: set[tuple[Any, ...]]
    resent_deadletters: int
    day_closes: dict[tuple[str, str], dict[str, Any]]   # (customer, as_of) -> its last record
    counters: dict[tuple[tuple[str, str], ...], float] | None = None

    @classmethod
    def read(cls, bootstrap: str, run: Run) -> Outputs:
        latest = {}
        day_closes = {}
        for output in ("customer", "business", "feature_out"):
            records = [(k, v) for k, v in read_all(bootstrap, run.topic(output)) if k is not None]
            latest[output] = dict(records)
            if output == "customer":
                day_closes = {(k, v["as_of"]): v for k, v in records
                              if v["as_of"].endswith("T00:00:00Z")}
        transitions: dict[str, list[tuple[str, str]]] = {}
        resent = 0
        for _key, alert in read_all(bootstrap, run.topic("alerts")):
            seq = transitions.setdefault(alert["alert_id"], [])
            step = (alert["status"], alert["as_of"])
            if step in seq:
                # The same transition sent again: outputs go out before the state that records
                # them, so a crash in between resends them; (alert_id, status, as_of) names it.
                resent += 1
                continue
            seq.append(step)
        deadletters: set[tuple[Any, ...]] = set()
        resent_dl = 0
        for _, dl in read_all(bootstrap, run.topic("deadletter")):
            # Runs with input topics of their own name them apart, and records produced again
            # get other offsets (and, without a key, other partitions): dead letters are
            # compared by input family, content and code.
            source = str(dl["source_topic"]).removeprefix(f"{run.inputs}.")
            ident = (source, dl.get("raw"), dl.get("raw_base64"), dl["error"])
            if ident in deadletters:
                resent_dl += 1
            deadletters.add(ident)
        return cls(latest, transitions, resent, deadletters, resent_dl, day_closes,
                   run.counters())


@dataclass
class Comparison:
    differences: list[str]
    churn_differences: int
    keys: int
    series: list[str]   # daily-series differences: day-close records missing or not the same
    counters: int = 0   # label sets of vitals_events_total compared (0: a worker's were lost)

    @property
    def ok(self) -> bool:
        return not self.differences


def _diff_record(where: str, expected: Any, actual: Any, out: list[str], skip: tuple[str, ...]
                 ) -> int:
    """Field-by-field differences (nested dicts walked); returns differences in skipped fields."""
    skipped = 0
    if isinstance(expected, dict) and isinstance(actual, dict):
        for k in sorted(set(expected) | set(actual)):
            if k in skip:
                skipped += expected.get(k) != actual.get(k)
                continue
            skipped += _diff_record(f"{where}.{k}", expected.get(k, "<missing>"),
                                    actual.get(k, "<missing>"), out, ())
    elif expected != actual:
        out.append(f"{where}: {expected!r} != {actual!r}")
    return skipped


def compare(reference: Outputs, other: Outputs) -> Comparison:
    diffs: list[str] = []
    churn = 0
    keys = 0
    for output, records in reference.latest.items():
        mine = other.latest[output]
        skip = CHURN_FIELDS.get(output, ())
        for key in sorted(set(records) | set(mine)):
            keys += 1
            if key not in mine or key not in records:
                diffs.append(f"{output}[{key}]: only in "
                             f"{'reference' if key in records else 'disturbed run'}")
                continue
            churn += _diff_record(f"{output}[{key}]", records[key], mine[key], diffs, skip)
    missing: dict[str, list[str]] = {}
    series: list[str] = []
    for close in sorted(set(reference.day_closes) | set(other.day_closes)):
        cid, day = close[0], close[1][:10]
        if close not in other.day_closes or close not in reference.day_closes:
            where = "disturbed run" if close in reference.day_closes else "reference"
            missing.setdefault(f"{cid} missing in the {where}", []).append(day)
            continue
        churn += _diff_record(f"day close {cid} {day}", reference.day_closes[close],
                              other.day_closes[close], series, CHURN_FIELDS["customer"])
    series += [f"day closes of {who}: {', '.join(days)}" for who, days in missing.items()]
    for alert_id in sorted(set(reference.transitions) | set(other.transitions)):
        if alert_id.split(":", 1)[0] in CHURN_RULES:
            churn += reference.transitions.get(alert_id) != other.transitions.get(alert_id)
            continue
        expected = reference.transitions.get(alert_id, [])
        actual = other.transitions.get(alert_id, [])
        if expected != actual:
            diffs.append(f"alerts[{alert_id}]: {expected} != {actual}")
    for dl in sorted(reference.deadletters - other.deadletters, key=repr):
        diffs.append(f"deadletter {dl}: only in reference")
    for dl in sorted(other.deadletters - reference.deadletters, key=repr):
        diffs.append(f"deadletter {dl}: only in disturbed run")
    counters = 0
    if reference.counters is not None and other.counters is not None:
        for labels in sorted(set(reference.counters) | set(other.counters)):
            counters += 1
            expected = reference.counters.get(labels, 0.0)
            actual = other.counters.get(labels, 0.0)
            if expected != actual:
                names = ",".join(f'{k}="{v}"' for k, v in labels)
                diffs.append(f"vitals_events_total{{{names}}}: {expected:g} != {actual:g}")
    return Comparison(diffs, churn, keys, series, counters)


def kill_moments(seed: int, kills: int, span: float) -> list[float]:
    """Seeded random moments in (0, span), at least a second apart, in order."""
    rng = random.Random(seed)
    while True:
        moments = sorted(rng.uniform(0.02, 0.95) * span for _ in range(kills))
        if all(b - a >= 1.0 for a, b in pairwise(moments)):
            return moments


def report(name: str, comparison: Comparison, limit: int = 40) -> str:
    lines = [f"{name}: {len(comparison.differences)} differences over {comparison.keys} keys "
             f"and {comparison.counters} counters "
             f"({comparison.churn_differences} churn-model fields apart)"]
    lines += [f"  {d}" for d in comparison.differences[:limit]]
    if len(comparison.differences) > limit:
        lines.append(f"  ... and {len(comparison.differences) - limit} more")
    if comparison.series:
        lines.append(f"  daily series: {len(comparison.series)} differences (not yet failing)")
        lines += [f"    {d}" for d in comparison.series[:limit // 4]]
    return "\n".join(lines)
