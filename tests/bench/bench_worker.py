#!/usr/bin/env python
"""Throughput and state-size benchmark of one worker on the embedded broker (not a pytest test).

    python tests/bench/bench_worker.py [--events N] [--customers C] [--json]

In one run, on one embedded (Tansu, in-memory) broker:

1. generates N events in event-time order (default 600,000): C customers (default 2,000), each
   with a signup, then 5 users active every day with ~20 usage/feature events each (~100 events
   per customer per day), for as many days as it takes (3 at the defaults);
2. produces them once to events.signup / events.usage / events.feature (timed, not counted);
3. baseline: a plain aiokafka consumer (no group, all partitions from the beginning) reads and
   orjson-parses all of them;
4. starts the real worker (`python -m streams.cli worker`, default settings, app id `bench`) and
   times it from its first consumed input (first commit of group `bench-ingest`, or the first
   counted event, whichever is seen first) until every event is counted in vitals_events_total,
   a flush has run after that, and the groups `bench-ingest` (input topics) and `bench`
   (vitals.internal.events) have no lag;
5. reports the worker's peak RSS (VmHWM), its RSS growth per customer, and the serialized
   customer state (latest record per key of `bench-customers-changelog`).

Progress goes to stderr; the result table (and with --json a JSON object) to stdout. With
`--profile FILE` the worker is sampled by py-spy during the timed window (collapsed stacks in
FILE, a summary on stderr); that slows it down, so the numbers of such a run are marked.

    python tests/bench/bench_worker.py --rate N [--seconds S] [--warmup W]

is the live mode instead: W events produced at once and applied first, then N events/s for S
seconds produced while the worker runs; it prints the distribution of
vitals_processing_delay_seconds (input record timestamp to the broker's acknowledgement of the
customer records) over that window, read from /metrics before and after it.
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402  (installed with river)
import orjson  # noqa: E402

DAY = 86_400
START = 1_767_571_200  # 2026-01-05T00:00:00Z, a Monday
APP_ID = "bench"
USERS_PER_CUSTOMER = 5
EVENTS_PER_USER_DAY = 20
SIGNUP_TOPIC, USAGE_TOPIC, FEATURE_TOPIC = "events.signup", "events.usage", "events.feature"
INTERNAL_TOPIC = "vitals.internal.events"
CUSTOMER_TOPIC = "vitals.customer"
CHANGELOG_TOPIC = f"{APP_ID}-customers-changelog"
INPUT_TOPICS = ["events.signup", "events.usage", "events.feature", "events.billing",
                "events.support"]

SEGMENTS = (("smb", 0.5), ("mid_market", 0.25), ("solo", 0.15), ("enterprise", 0.10))
PLANS = {"smb": ("team", "pro"), "mid_market": ("business", "business_plus"),
         "solo": ("starter",), "enterprise": ("enterprise",)}
CHANNELS = ("organic", "paid_search", "referral", "outbound_sales", "partner")
ACTIONS = ("login", "dashboard_viewed", "report_created", "message_sent", "search",
           "record_updated", "file_uploaded", "comment_added", "integration_connected")
FEATURES = ("exports", "sso", "api", "alerts", "scheduled_reports", "templates", "automations",
            "audit_log")
FEATURE_SHARE = 0.3


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- 1. events -----------------------------------------------------------------------------

def _uuid(rng: random.Random) -> str:
    h = f"{rng.getrandbits(128):032x}"
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:]}"


def _iso(ts: float) -> str:
    t = time.gmtime(ts)
    ms = int(round((ts - math.floor(ts)) * 1000)) % 1000
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', t)}.{ms:03d}Z"


def generate(customers: int, total: int, seed: int = 42
             ) -> tuple[list[tuple[str, bytes, bytes]], int]:
    """(topic, key, value) in event-time order, exactly `total` of them; returns (events, days)."""
    rng = random.Random(seed)
    cids = [f"cus_{i:06d}" for i in range(customers)]
    out: list[tuple[str, bytes, bytes]] = []
    dumps = orjson.dumps
    seg_names = [s for s, _ in SEGMENTS]
    seg_weights = [w for _, w in SEGMENTS]
    # Signups during the first hour of day 0; activity starts after it.
    for i, cid in enumerate(cids):
        if len(out) >= total:
            return out, 0
        seg = rng.choices(seg_names, seg_weights)[0]
        ts = START + i * 3600.0 / customers + rng.random()
        event = {"event_id": _uuid(rng), "customer_id": cid, "ts": _iso(ts), "segment": seg,
                 "plan": rng.choice(PLANS[seg]), "seats": rng.randint(5, 12),
                 "cac": round(rng.uniform(200, 5000), 2), "currency": "USD",
                 "channel": rng.choice(CHANNELS)}
        out.append((SIGNUP_TOPIC, cid.encode(), dumps(event)))
    users = [f"usr_{i:06d}_{u}" for i in range(customers) for u in range(USERS_PER_CUSTOMER)]
    cid_of_user = [cids[i] for i in range(customers) for _ in range(USERS_PER_CUSTOMER)]
    nrng = np.random.default_rng(seed)
    day = 0
    while len(out) < total:
        day_start = START + day * DAY
        first = 3600.0 if day == 0 else 0.0
        # ~20 events per user (uniform 14..26), at uniform times of the day, sorted by time.
        counts = nrng.integers(EVENTS_PER_USER_DAY - 6, EVENTS_PER_USER_DAY + 7, len(users))
        who = np.repeat(np.arange(len(users)), counts)
        offsets = first + nrng.random(len(who)) * (DAY - first)
        order = np.argsort(offsets, kind="stable")
        who, ms_of_day = who[order].tolist(), (offsets[order] * 1000).astype(np.int64).tolist()
        n = len(who)
        is_feature = (nrng.random(n) < FEATURE_SHARE).tolist()
        names = nrng.integers(0, 1 << 30, n).tolist()
        quantity = nrng.integers(1, 4, n).tolist()
        ids = nrng.bytes(16 * n).hex()
        date = time.strftime("%Y-%m-%d", time.gmtime(day_start))
        for i in range(n):
            if len(out) >= total:
                break
            sec, ms = divmod(ms_of_day[i], 1000)
            mins, sec = divmod(sec, 60)
            iso = f"{date}T{mins // 60:02d}:{mins % 60:02d}:{sec:02d}.{ms:03d}Z"
            h = ids[32 * i:32 * i + 32]
            event_id = f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:]}"
            u = who[i]
            cid = cid_of_user[u]
            if is_feature[i]:
                event = {"event_id": event_id, "customer_id": cid, "user_id": users[u],
                         "ts": iso, "feature": FEATURES[names[i] % len(FEATURES)]}
                topic = FEATURE_TOPIC
            else:
                event = {"event_id": event_id, "customer_id": cid, "user_id": users[u],
                         "ts": iso, "action": ACTIONS[names[i] % len(ACTIONS)],
                         "quantity": quantity[i]}
                topic = USAGE_TOPIC
            out.append((topic, cid.encode(), dumps(event)))
        day += 1
    return out, day


# -- helpers: broker, topics, lags ---------------------------------------------------------

def worker_env(broker_url: str, web_port: int, data_dir: str, config: str | None,
               extra: list[str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VITALS_")}
    env.update({"VITALS_APP__BROKER": broker_url, "VITALS_APP__SESSION_TIMEOUT_SECONDS": "6",
                "VITALS_APP__WEB_PORT": str(web_port), "VITALS_APP__ID": APP_ID,
                "VITALS_APP__DATA_DIR": data_dir, "VITALS_APP__LOG_LEVEL": "warn"})
    if config:
        env["VITALS_CONFIG"] = config
    for item in extra:
        key, _, value = item.partition("=")
        env[key] = value
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def create_topics(env: dict[str, str], bootstrap: str) -> Any:
    from streams.settings import load_settings
    from streams.topics import ensure_topics

    settings = load_settings(env=env)
    asyncio.run(ensure_topics(settings, bootstrap))
    return settings


def _partitions(consumer: Any, topic: str) -> list[int]:
    meta = consumer.list_topics(topic, timeout=10)
    return sorted(meta.topics[topic].partitions)


def end_offsets(bootstrap: str, topic: str, timeout: float = 30.0) -> dict[int, int]:
    """Per partition, the offset after the last record, as fetch responses tell it.

    Not from ListOffsets: Tansu 0.6 (the embedded broker) answers it with the base offset of
    the last record batch (+1), short of the real end by the size of that batch.
    """
    from confluent_kafka import Consumer, KafkaError, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-ends",
                  "enable.auto.commit": False, "enable.partition.eof": True})
    try:
        parts = _partitions(c, topic)
        approx = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                  for p in parts}
        c.assign([TopicPartition(topic, p, max(0, approx[p] - 1)) for p in parts])
        ends: dict[int, int] = {}
        deadline = time.monotonic() + timeout
        while len(ends) < len(parts) and time.monotonic() < deadline:
            for msg in c.consume(10_000, 0.5):
                err = msg.error()
                if err is not None and err.code() == KafkaError._PARTITION_EOF:
                    ends[msg.partition()] = msg.offset()
        if len(ends) < len(parts):
            raise RuntimeError(f"no end offsets for {topic} in {timeout:.0f} s")
        return ends
    finally:
        c.close()


class Lags:
    """Lag of a consumer group against known end offsets, from one long-lived client."""

    def __init__(self, bootstrap: str, group: str, topics: list[str]) -> None:
        from confluent_kafka import Consumer, TopicPartition

        self.consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                                  "enable.auto.commit": False})
        self.tps = [TopicPartition(t, p) for t in topics for p in _partitions(self.consumer, t)]
        self.ends: dict[tuple[str, int], int] = {}

    def committed_total(self) -> int:
        return sum(max(0, tp.offset) for tp in self.consumer.committed(self.tps, timeout=10))

    def lag(self) -> int:
        return sum(max(0, self.ends.get((tp.topic, tp.partition), 0) - max(0, tp.offset))
                   for tp in self.consumer.committed(self.tps, timeout=10))

    def close(self) -> None:
        self.consumer.close()


def topic_size(bootstrap: str, topic: str) -> int:
    """Records in a topic (nothing is ever deleted from the in-memory broker)."""
    return sum(end_offsets(bootstrap, topic).values())


# -- 2. produce ----------------------------------------------------------------------------

def produce(bootstrap: str, events: list[tuple[str, bytes, bytes]]
            ) -> tuple[float, dict[tuple[str, int], int]]:
    """Seconds taken, and the end offset of every partition written (from delivery reports)."""
    from confluent_kafka import Producer

    errors: list[Any] = []
    ends: dict[tuple[str, int], int] = {}

    def on_delivery(err: Any, msg: Any) -> None:
        if err is not None:
            errors.append(err)
            return
        tp = (msg.topic(), msg.partition())
        if msg.offset() + 1 > ends.get(tp, 0):
            ends[tp] = msg.offset() + 1

    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 50, "batch.size": 1 << 20,
                  "batch.num.messages": 100_000, "queue.buffering.max.messages": 1_000_000,
                  "queue.buffering.max.kbytes": 1 << 20, "partitioner": "murmur2_random",
                  "acks": "all", "message.max.bytes": 8 << 20})
    t0 = time.perf_counter()
    for i, (topic, key, value) in enumerate(events):
        while True:
            try:
                p.produce(topic, value, key, on_delivery=on_delivery)
                break
            except BufferError:
                p.poll(0.05)
        if i % 20_000 == 0:
            p.poll(0)
    left = p.flush(300)
    elapsed = time.perf_counter() - t0
    if left or errors:
        raise RuntimeError(f"produce failed: {left} undelivered, errors {errors[:3]}")
    return elapsed, ends


# -- 3. baseline ---------------------------------------------------------------------------

async def _baseline(bootstrap: str, topics: list[str], total: int, batch: int) -> tuple[float, int]:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                                enable_auto_commit=False, auto_offset_reset="earliest",
                                max_partition_fetch_bytes=4 << 20)
    await consumer.start()
    try:
        await consumer.topics()
        tps = [TopicPartition(t, p) for t in topics
               for p in sorted(consumer.partitions_for_topic(t) or ())]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        loads = orjson.loads
        n = 0
        t0 = time.perf_counter()
        deadline = t0 + 300
        while n < total and time.perf_counter() < deadline:
            records = await consumer.getmany(timeout_ms=100, max_records=batch)
            for messages in records.values():
                for msg in messages:
                    loads(msg.value)
                n += len(messages)
        return time.perf_counter() - t0, n
    finally:
        await consumer.stop()


def baseline(bootstrap: str, topics: list[str], total: int, batch: int) -> tuple[float, int]:
    return asyncio.run(_baseline(bootstrap, topics, total, batch))


# -- 4. worker -----------------------------------------------------------------------------

def proc_status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM in bytes."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    name, value = line.split(":", 1)
                    out[name] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return out


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (its threads included), in seconds."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError):
        return 0.0


def machine_busy_seconds() -> float:
    """CPU seconds spent busy by the whole machine (all cores), from /proc/stat."""
    try:
        with open("/proc/stat") as fh:
            fields = [int(x) for x in fh.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return [int(x) for x in fh.read().split()]
    except OSError:
        return []


@dataclass
class WorkerRun:
    spawned: float = 0.0
    ready: float | None = None
    first: float | None = None
    applied: float | None = None
    flushed: float | None = None
    done: float | None = None
    rss_ready: int = 0
    rss_base: int = 0
    rss_peak: int = 0
    rss_end: int = 0
    cpu_window: float = 0.0
    broker_cpu_window: float = 0.0
    bench_cpu_window: float = 0.0
    machine_cpu_window: float = 0.0
    events_counted: float = 0.0
    outcomes: dict[str, float] = field(default_factory=dict)
    flushes: int = 0
    children: list[int] = field(default_factory=list)
    profile: str | None = None
    # (seconds since first consumed, events counted, RSS MiB, worker CPU % over the last step)
    timeline: list[tuple[float, float, float, float]] = field(default_factory=list)


class Worker:
    def __init__(self, env: dict[str, str], port: int, log_path: Path) -> None:
        self.env = env
        self.port = port
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "streams.cli", "worker"],
                                         cwd=ROOT, env=self.env, stdout=out,
                                         stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def health(self) -> tuple[bool, int]:
        try:
            status, body = self.get("/healthz")
        except OSError:
            return False, -1
        try:
            flushes = int(orjson.loads(body).get("flushes", -1))
        except (orjson.JSONDecodeError, AttributeError):
            flushes = -1
        return status == 200, flushes

    def events(self) -> tuple[float, dict[str, float]]:
        """Sum of vitals_events_total and its split by outcome (plain text scan, cheap)."""
        try:
            text = self.get("/metrics")[1].decode()
        except OSError:
            return -1.0, {}
        total = 0.0
        outcomes: dict[str, float] = Counter()
        for line in text.splitlines():
            if line.startswith("vitals_events_total{"):
                labels, value = line.rsplit(" ", 1)
                v = float(value)
                total += v
                outcome = labels.split('outcome="', 1)[1].split('"', 1)[0]
                outcomes[outcome] += v
        return total, dict(outcomes)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class _Watch:
    """What run_worker keeps between two polls of one worker."""
    worker: Worker
    bootstrap: str
    broker_pid: int
    input_ends: dict[tuple[str, int], int]
    total: int
    run: WorkerRun
    ingest_lags: Lags | None = None
    internal_lags: Lags | None = None
    cpu0: float = 0.0
    broker_cpu0: float = 0.0
    cpu_last: float = 0.0
    bench_cpu0: float = 0.0
    machine0: float = 0.0
    applied_flushes: int = -1
    last_progress: float = 0.0
    prev_rss: int = 0

    def check(self, now: float, deadline: float, timeout: float) -> None:
        worker, run, total = self.worker, self.run, self.total
        if now > deadline:
            raise RuntimeError(f"worker did not finish in {timeout:.0f} s "
                               f"({run.events_counted:.0f}/{total} events counted):\n"
                               f"{worker.log_tail()}")
        if not worker.alive():
            raise RuntimeError(f"worker exited {worker.proc.returncode}:\n{worker.log_tail()}")

    def note_ready(self, now: float, ready: bool, mem: dict[str, int]) -> None:
        run = self.run
        if ready and run.ready is None:
            run.ready = now
            run.rss_ready = mem.get("VmRSS", 0)
            log(f"worker ready (healthz 200) {now - run.spawned:.1f} s after start, "
                f"RSS {run.rss_ready / 2**20:.0f} MiB")

    def note_start(self, now: float, counted: float, mem: dict[str, int]) -> None:
        """The first poll at which the worker has consumed: the measured window opens."""
        run = self.run
        started = counted > 0
        if not started:
            try:
                if self.ingest_lags is None:
                    self.ingest_lags = Lags(self.bootstrap, f"{APP_ID}-ingest", INPUT_TOPICS)
                started = self.ingest_lags.committed_total() > 0
            except Exception:  # topics or group not there yet
                started = False
        if started:
            run.first = now
            run.rss_base = self.prev_rss or mem.get("VmRSS", 0)
            self.cpu0 = cpu_seconds(self.worker.pid)
            self.broker_cpu0 = cpu_seconds(self.broker_pid)
            self.bench_cpu0, self.machine0 = cpu_seconds(os.getpid()), machine_busy_seconds()
            self.cpu_last = self.cpu0
            log(f"worker consuming {now - run.spawned:.1f} s after start")

    def drained(self, flushes: int) -> bool:
        """Both consumer groups at the end of their topics: the measured window closes."""
        run = self.run
        if self.ingest_lags is None:
            self.ingest_lags = Lags(self.bootstrap, f"{APP_ID}-ingest", INPUT_TOPICS)
        self.ingest_lags.ends = self.input_ends
        if self.internal_lags is None:
            # Every event is counted: the internal topic is complete.
            self.internal_lags = Lags(self.bootstrap, APP_ID, [INTERNAL_TOPIC])
            self.internal_lags.ends = {(INTERNAL_TOPIC, p): end for p, end
                                       in end_offsets(self.bootstrap, INTERNAL_TOPIC).items()}
        if self.ingest_lags.lag() != 0 or self.internal_lags.lag() != 0:
            return False
        run.done = time.perf_counter()
        run.cpu_window = cpu_seconds(self.worker.pid) - self.cpu0
        run.broker_cpu_window = cpu_seconds(self.broker_pid) - self.broker_cpu0
        run.bench_cpu_window = cpu_seconds(os.getpid()) - self.bench_cpu0
        run.machine_cpu_window = machine_busy_seconds() - self.machine0
        run.flushes = flushes
        return True

    def sample(self, now: float, counted: float, mem: dict[str, int]) -> None:
        """One timeline point a second, one progress line every 5 s."""
        run = self.run
        if run.first is None:
            return
        if not run.timeline or now - run.first >= run.timeline[-1][0] + 1.0:
            cpu = cpu_seconds(self.worker.pid)
            last_t = run.timeline[-1][0] if run.timeline else 0.0
            run.timeline.append((round(now - run.first, 2), counted,
                                 round(mem.get("VmRSS", 0) / 2**20, 1),
                                 round(100 * (cpu - self.cpu_last) / max(now - run.first - last_t,
                                                                         1e-3), 0)))
            self.cpu_last = cpu
        if now - self.last_progress > 5:
            self.last_progress = now
            el = now - run.first
            log(f"worker: {counted:,.0f}/{self.total:,} events counted, {el:.0f} s, "
                f"{counted / max(el, 0.5):,.0f}/s, RSS {mem.get('VmRSS', 0) / 2**20:.0f} MiB")

    def close(self) -> None:
        for lags in (self.ingest_lags, self.internal_lags):
            if lags is not None:
                lags.close()


def run_worker(worker: Worker, bootstrap: str, total: int, input_ends: dict[tuple[str, int], int],
               broker_pid: int, timeout: float, interval: float, profile: str | None
               ) -> WorkerRun:
    run = WorkerRun()
    run.spawned = time.perf_counter()
    worker.start()
    watch = _Watch(worker, bootstrap, broker_pid, input_ends, total, run)
    spy: subprocess.Popen[bytes] | None = None
    deadline = run.spawned + timeout
    try:
        while True:
            now = time.perf_counter()
            watch.check(now, deadline, timeout)
            mem = proc_status(worker.pid)
            run.rss_peak = max(run.rss_peak, mem.get("VmHWM", 0))
            ready, flushes = worker.health()
            watch.note_ready(now, ready, mem)
            counted, outcomes = worker.events()
            if run.first is None:
                watch.note_start(now, counted, mem)
                if profile and run.first is not None:
                    spy = _profiler(worker, profile)   # the timed window only, not the start
            watch.prev_rss = mem.get("VmRSS", 0)
            run.events_counted, run.outcomes = max(counted, 0), outcomes
            if run.first is not None and run.applied is None and counted >= total:
                run.applied = now
                watch.applied_flushes = flushes
                log(f"all {total} events counted after {now - run.first:.1f} s")
            if run.applied is not None and run.flushed is None \
                    and flushes > watch.applied_flushes:
                run.flushed = now
            if run.flushed is not None and watch.drained(flushes):
                break
            watch.sample(now, counted, mem)
            time.sleep(interval)
        mem = proc_status(worker.pid)
        run.rss_peak = max(run.rss_peak, mem.get("VmHWM", 0))
        run.rss_end = mem.get("VmRSS", 0)
        run.children = children(worker.pid)
    finally:
        if spy is not None and _stop_profiler(spy):
            run.profile = profile
        watch.close()
    return run


def _profiler(worker: Worker, profile: str) -> subprocess.Popen[bytes]:
    """py-spy sampling the worker into `profile` (raw format)."""
    return subprocess.Popen(
        [str(Path(sys.executable).with_name("py-spy")), "record", "--nonblocking",
         "--format", "raw", "-r", "100", "-o", profile, "-p", str(worker.pid)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _stop_profiler(spy: subprocess.Popen[bytes]) -> bool:
    """Stops py-spy (it writes its file on SIGINT); whether it did in time."""
    spy.send_signal(signal.SIGINT)
    try:
        spy.wait(30)
        return True
    except subprocess.TimeoutExpired:
        spy.kill()
        return False


# -- 5. state size -------------------------------------------------------------------------

def deep_size(obj: Any, seen: set[int] | None = None) -> int:
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    size = sys.getsizeof(obj)
    if isinstance(obj, dict):
        size += sum(deep_size(k, seen) + deep_size(v, seen) for k, v in obj.items())
    elif isinstance(obj, (list, tuple, set, frozenset)):
        size += sum(deep_size(v, seen) for v in obj)
    elif hasattr(obj, "__slots__"):
        for name in obj.__slots__:
            if hasattr(obj, name):
                size += deep_size(getattr(obj, name), seen)
    return size


def changelog_sizes(bootstrap: str, topic: str) -> dict[str, Any]:
    """Latest record per key of a changelog: average sizes, and what a record is made of."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-changelog",
                  "enable.auto.commit": False, "fetch.max.bytes": 64 << 20})
    try:
        parts = _partitions(c, topic)
        ends = end_offsets(bootstrap, topic)
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts if ends[p] > 0])
        todo = {p for p in parts if ends[p] > 0}
        latest: dict[bytes, bytes] = {}
        records = total_bytes = 0
        deadline = time.monotonic() + 120
        while todo and time.monotonic() < deadline:
            for msg in c.consume(10_000, 1.0):
                if msg.error():
                    continue
                records += 1
                value = msg.value() or b""
                total_bytes += len(value)
                latest[msg.key()] = value
                if msg.offset() + 1 >= ends[msg.partition()]:
                    todo.discard(msg.partition())
    finally:
        c.close()
    if not latest:
        return {"keys": 0, "records": records, "bytes": total_bytes}
    from streams.state import decode_state

    values = list(latest.values())
    parts_size: Counter[str] = Counter()
    seen_ids = 0
    mem = 0
    for value in values:
        data = orjson.loads(value)
        for name in ("seen", "act"):
            parts_size[name] += len(orjson.dumps(data.get(name)))
        seen = data.get("seen", {})
        seen_ids += (len(seen.get("l", "")) + sum(len(t) for _, t in seen.get("d", ()))) * 3 // 4 // 8
        mem += deep_size(decode_state(value))
    n = len(values)
    return {"keys": n, "records": records, "bytes": total_bytes,
            "avg_value_bytes": sum(map(len, values)) / n,
            "avg_seen_bytes": parts_size["seen"] / n, "avg_activity_bytes": parts_size["act"] / n,
            "avg_seen_ids": seen_ids / n, "avg_python_object_bytes": mem / n}


# -- profile summary -----------------------------------------------------------------------

#: Stages of the worker for --profile, in the order they are tried: a sample belongs to the
#: first stage one of whose patterns occurs in its stack (function names as py-spy shows them).
STAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("startup (imports, settings; before consumption)",
     ("(<frozen importlib", "load_settings (", "build_app (")),
    ("/metrics and /healthz answers (this script polls them)",
     ("(faust/web/", "Metrics.exposition (")),
    ("flush: state -> changelog value (encode)",
     ("encode_state (", "_StateCodec._dumps (", "CustomerState.to_dict (")),
    ("dedup (seen event ids)", ("SeenIds.", "(streams/dedup.py")),
    ("day close: evaluate, snapshots, features",
     ("CustomerProcessor._close_day (", "CustomerProcessor._close_customers (",
      "CustomerProcessor._advance (")),
    ("producer (aiokafka sender, Faust producer buffer)",
     ("(aiokafka/producer/", "(faust/transport/producer.py", "Producer.send (faust/",
      "Topic.send_soon (", "Topic.publish_message (", "Sender.")),
    ("flush: in-day records, output encode, delivery bookkeeping",
     ("Delivery.flush (", "CustomerProcessor.flush (", "flush_customers (")),
    ("processor: apply events (activity, features, onboarding, revenue)",
     ("CustomerProcessor.apply (",)),
    ("Faust agent: loop, orjson.loads of internal batches",
     ("apply_customer_events (",)),
    ("ingest: TimeAligner and partition bookkeeping",
     ("TimeAligner.", "_IdleBound", "IngestService._throttle (", "IngestService._empty_at (",
      "IngestService._track_assignment (")),
    ("ingest: parse + validate (orjson, EventValidator, hash)", ("Ingest.read (",)),
    ("ingest: route + serialize internal batches", ("Ingest.route (", "IngestService._publish (")),
    ("ingest: aiokafka fetch + record decode", ("IngestService._poll_loop (",)),
    ("other stages (business, features, churn learner)",
     ("_stage_agent.", "learn_churn (", "_business_agent", "_feature_agent")),
    ("Faust consumer (fetch thread, stream dispatch, commits)",
     ("(faust/", "(mode/threads.py")),
    ("Kafka client I/O outside a stage (fetch responses, commits)", ("(aiokafka/",)),
    ("event loop: waiting in select", ("EpollSelector.select (",)),
)
OTHER_STAGE = "other"


def _collapsed_stacks(path: str) -> Iterator[tuple[str, int]]:
    """(stack, samples) of each line of py-spy's collapsed output."""
    with open(path) as fh:
        for line in fh:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if stack:
                yield stack, int(count)


def stage_breakdown(path: str) -> list[tuple[str, int, float]]:
    """(stage, samples, share) from py-spy's collapsed stacks, in STAGES order, then other."""
    counts: Counter[str] = Counter()
    total = 0
    for stack, n in _collapsed_stacks(path):
        total += n
        for stage, patterns in STAGES:
            if any(p in stack for p in patterns):
                counts[stage] += n
                break
        else:
            counts[OTHER_STAGE] += n
    names = [s for s, _ in STAGES] + [OTHER_STAGE]
    return [(s, counts[s], counts[s] / total if total else math.nan) for s in names]


def format_stages(rows: list[tuple[str, int, float]]) -> str:
    lines = ["worker CPU samples by stage (first matching stage of each stack):",
             "  share  samples  stage"]
    lines += [f"  {100 * share:5.1f}  {n:7d}  {stage}" for stage, n, share in rows]
    return "\n".join(lines)


def summarize_profile(path: str, top: int = 25) -> str:
    """Top functions by self and by inclusive samples, from py-spy's collapsed stacks."""
    self_n: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for stack, n in _collapsed_stacks(path):
        total += n
        frames = [f.strip() for f in stack.split(";")]
        frames = [f for f in frames if f and not f.startswith("process ")
                  and not f.startswith("thread ")]
        if frames:
            self_n[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    lines = [f"py-spy: {total} samples"]
    lines.append("  self%  function")
    for f, n in self_n.most_common(top):
        lines.append(f"  {100 * n / total:5.1f}  {f}")
    lines.append("  incl%  function")
    for f, n in incl.most_common(top * 2):
        lines.append(f"  {100 * n / total:5.1f}  {f}")
    return "\n".join(lines)


# -- live mode: end-to-end latency at a paced rate ------------------------------------------

DELAY_METRIC = "vitals_processing_delay_seconds"


def read_histogram(worker: Worker, name: str = DELAY_METRIC) -> tuple[list[tuple[float, float]],
                                                                      float, float]:
    """A histogram of the worker's /metrics: (cumulative (le, count) by le, count, sum)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = worker.get("/metrics")[1].decode()
    buckets: dict[float, float] = {}
    count = total = 0.0
    for family in text_string_to_metric_families(text):
        if family.name != name:
            continue
        for sample in family.samples:
            if sample.name == f"{name}_bucket":
                le = float(sample.labels["le"])
                buckets[le] = buckets.get(le, 0.0) + sample.value
            elif sample.name == f"{name}_count":
                count += sample.value
            elif sample.name == f"{name}_sum":
                total += sample.value
    if not buckets:
        raise RuntimeError(f"no histogram {name} in the worker's /metrics")
    return sorted(buckets.items()), count, total


def histogram_quantile(cumulative: list[tuple[float, float]], q: float) -> float:
    """As Prometheus' histogram_quantile: linear within the bucket that holds the quantile;
    the highest finite bound if it falls in the +Inf bucket; nan without observations."""
    total = cumulative[-1][1]
    if total <= 0:
        return math.nan
    rank = q * total
    lower, below = 0.0, 0.0
    for le, cum in cumulative:
        if cum >= rank:
            if math.isinf(le):
                return lower
            inside = cum - below
            return le if inside <= 0 else lower + (le - lower) * (rank - below) / inside
        lower, below = le, cum
    return lower


def paced_produce(bootstrap: str, events: list[tuple[str, bytes, bytes]], rate: float,
                  every_second: Callable[[float, int], None] | None = None
                  ) -> tuple[float, int]:
    """Produces `events` at `rate` per second (in slices of a few ms), each record stamped by
    the producer when it is handed over; returns (seconds taken, records delivered).
    `every_second(elapsed, sent)` is called about once a second."""
    from confluent_kafka import Producer

    errors: list[Any] = []
    delivered = 0

    def on_delivery(err: Any, msg: Any) -> None:
        nonlocal delivered
        if err is not None:
            errors.append(err)
        else:
            delivered += 1

    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "acks": "all",
                  "partitioner": "murmur2_random", "queue.buffering.max.messages": 1_000_000})
    n = len(events)
    sent = 0
    t0 = time.perf_counter()
    last_log = t0
    while sent < n:
        now = time.perf_counter()
        due = min(n, int((now - t0) * rate) + 1)
        while sent < due:
            topic, key, value = events[sent]
            try:
                p.produce(topic, value, key, on_delivery=on_delivery)
            except BufferError:
                p.poll(0.01)
                continue
            sent += 1
        p.poll(0)
        if now - last_log >= 1.0:
            last_log = now
            if every_second is not None:
                every_second(now - t0, sent)
        if sent < n:
            time.sleep(max(0.0, t0 + (sent + 1) / rate - time.perf_counter()))
    elapsed = time.perf_counter() - t0
    left = p.flush(120)
    if left or errors:
        raise RuntimeError(f"paced produce failed: {left} undelivered, errors {errors[:3]}")
    return elapsed, delivered


def wait_applied(worker: Worker, target: float, flushes_after: int, timeout: float
                 ) -> tuple[float, int]:
    """Until `target` events are counted and `flushes_after` more flushes have run since
    (the records reflecting them are acknowledged and observed); returns (counted, flushes)."""
    deadline = time.monotonic() + timeout
    counted, flushes, reached = 0.0, -1, None
    while time.monotonic() < deadline:
        if not worker.alive():
            code = worker.proc.returncode if worker.proc else None
            raise RuntimeError(f"worker exited {code}:\n{worker.log_tail()}")
        counted, _ = worker.events()
        _, flushes = worker.health()
        if reached is None and counted >= target:
            reached = flushes
        if reached is not None and flushes >= reached + flushes_after:
            return counted, flushes
        time.sleep(0.1)
    raise RuntimeError(f"worker counted {counted:,.0f} of {target:,.0f} events in {timeout:.0f} s:"
                       f"\n{worker.log_tail()}")


def live(args: argparse.Namespace) -> int:
    """--rate: warm up on a backlog, then produce at a steady rate while the worker runs and
    report the distribution of vitals_processing_delay_seconds over that window."""
    from streams.broker import EmbeddedBroker, free_port

    warm = max(args.warmup, args.customers)   # the signups at least
    timed = int(args.rate * args.seconds)
    tmp = Path(tempfile.mkdtemp(prefix="vitals-bench-live-"))
    result: dict[str, Any] = {"mode": "live", "rate": args.rate, "seconds": args.seconds,
                              "customers": args.customers, "warmup_events": warm,
                              "profiled": False}
    try:
        gc.disable()
        try:
            events, days = generate(args.customers, warm + timed, args.seed)
        finally:
            gc.enable()
        gc.freeze()
        log(f"generated {len(events):,} events over {days} days: {warm:,} warm-up, "
            f"{timed:,} at {args.rate:,.0f}/s for {args.seconds:.0f} s")
        with EmbeddedBroker(log_path=tmp / "tansu.log") as broker:
            bootstrap = broker.address
            port = free_port()
            env = worker_env(broker.url, port, str(tmp / "state"), args.config, args.env)
            settings = create_topics(env, bootstrap)
            result.update(order_grace_seconds=settings.ingest.order_grace_seconds,
                          emit_interval_seconds=settings.emit.interval_seconds,
                          emit_max_delay_seconds=settings.emit.max_delay_seconds)
            produce(bootstrap, events[:warm])
            assert broker.process is not None
            broker_pid = broker.process.pid
            worker = Worker(env, port, tmp / "worker.log")
            worker.start()
            try:
                wait_applied(worker, warm, 2, args.timeout)
                log(f"warm-up: {warm:,} events applied and flushed")
                before = read_histogram(worker)
                cpu0, broker0 = cpu_seconds(worker.pid), cpu_seconds(broker_pid)
                bench0, machine0 = cpu_seconds(os.getpid()), machine_busy_seconds()
                timeline: list[dict[str, float]] = []

                def sample(elapsed: float, sent: int) -> None:
                    counted, _ = worker.events()
                    _, flushes = worker.health()
                    _, count, total_s = read_histogram(worker)
                    timeline.append({"t": round(elapsed, 1), "produced": sent,
                                     "applied": counted - warm, "flushes": flushes,
                                     "delay_count": count - before[1],
                                     "delay_sum": round(total_s - before[2], 2)})
                    if len(timeline) % 5 == 0:
                        log(f"live: {elapsed:.0f} s, produced {sent:,}, applied "
                            f"{counted - warm:,.0f}, flushes {flushes}, delay observations "
                            f"{count - before[1]:.0f}")

                spy = _profiler(worker, args.profile) if args.profile else None
                try:
                    produced_s, delivered = paced_produce(bootstrap, events[warm:], args.rate,
                                                          sample)
                finally:
                    if spy is not None:
                        _stop_profiler(spy)
                t_end = time.perf_counter()
                result["timeline"] = timeline
                cpu1, broker1 = cpu_seconds(worker.pid), cpu_seconds(broker_pid)
                bench1, machine1 = cpu_seconds(os.getpid()), machine_busy_seconds()
                counted, _ = wait_applied(worker, warm + timed, 2, args.timeout)
                drain_s = time.perf_counter() - t_end
                after = read_histogram(worker)
            finally:
                code = worker.stop()
        window = produced_s
        cum = [(le, c1 - c0) for (le, c1), (_, c0) in zip(after[0], before[0], strict=True)]
        count, total_s = after[1] - before[1], after[2] - before[2]
        result.update(
            worker_exit_code=code, produced=delivered, produce_seconds=produced_s,
            achieved_rate=timed / produced_s, drain_seconds=drain_s, counted=counted,
            worker_cpu_share=(cpu1 - cpu0) / window,
            worker_cpu_us_per_event=1e6 * (cpu1 - cpu0) / timed,
            broker_cpu_share=(broker1 - broker0) / window,
            bench_cpu_share=(bench1 - bench0) / window,
            other_cpu_share=max(0.0, (machine1 - machine0) - (cpu1 - cpu0) - (broker1 - broker0)
                                - (bench1 - bench0)) / window,
            delay_buckets=[[le if math.isfinite(le) else "+Inf", c] for le, c in cum],
            delay_count=count, delay_mean=total_s / count if count else math.nan,
            delay_p50=histogram_quantile(cum, 0.5), delay_p90=histogram_quantile(cum, 0.9),
            delay_p99=histogram_quantile(cum, 0.99))
        if args.profile:
            result["profiled"] = True
            print(summarize_profile(args.profile), file=sys.stderr)
            _print_stages(result, args.profile)
        print_live(result)
        if args.json:
            print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
        return 0
    finally:
        _keep_and_remove(args.keep, tmp)


def _keep_and_remove(keep: str | None, tmp: Path) -> None:
    """Copy the broker's and the worker's logs to `keep` (if given), then remove the run's files."""
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        for name in ("tansu.log", "worker.log"):
            if (tmp / name).exists():
                shutil.copy(tmp / name, Path(keep) / name)
    shutil.rmtree(tmp, ignore_errors=True)


def _print_stages(result: dict[str, Any], profile: str) -> None:
    stages = stage_breakdown(profile)
    result["profile_stages"] = [[s, n, share] for s, n, share in stages]
    print(format_stages(stages), file=sys.stderr)


def print_live(r: dict[str, Any]) -> None:
    print()
    print(f"live{' [py-spy attached]' if r['profiled'] else ''}: {r['rate']:,.0f} events/s requested for {r['seconds']:.0f} s, "
          f"{r['achieved_rate']:,.0f}/s produced ({r['produced']:,} events after "
          f"{r['warmup_events']:,} of warm-up); all counted and flushed "
          f"{r['drain_seconds']:.1f} s after the last was produced")
    print(f"worker CPU {100 * r['worker_cpu_share']:.0f}% of a core "
          f"({r['worker_cpu_us_per_event']:.1f} us/event); broker "
          f"{100 * r['broker_cpu_share']:.0f}%, this script {100 * r['bench_cpu_share']:.0f}%, "
          f"others on the machine {100 * r['other_cpu_share']:.0f}%")
    print(f"settings: ingest.order_grace_seconds {r['order_grace_seconds']}, "
          f"emit.interval_seconds {r['emit_interval_seconds']}, "
          f"emit.max_delay_seconds {r['emit_max_delay_seconds']}")
    print(f"{DELAY_METRIC} over the window ({r['delay_count']:.0f} observations: the oldest "
          "input record of each customer partition per flush):")
    print(f"  {'le (s)':>8}  {'in bucket':>9}  {'cumulative':>10}")
    below = 0.0
    for le, cum in r["delay_buckets"]:
        le_s = le if isinstance(le, str) else f"{le:g}"
        print(f"  {le_s:>8}  {cum - below:>9.0f}  {cum:>10.0f}")
        below = cum
    print(f"  p50 {r['delay_p50']:.2f} s, p90 {r['delay_p90']:.2f} s, p99 {r['delay_p99']:.2f} s "
          f"(interpolated within buckets); mean {r['delay_mean']:.2f} s")


# -- main ----------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=600_000, help="input events (default 600,000)")
    ap.add_argument("--customers", type=int, default=2_000, help="customers (default 2,000)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--json", action="store_true", help="also print the results as JSON")
    ap.add_argument("--config", help="VITALS_CONFIG overlay for the worker (default: none)")
    ap.add_argument("--env", action="append", default=[], metavar="VITALS_X__Y=V",
                    help="extra environment for the worker (repeatable)")
    ap.add_argument("--skip-baseline", action="store_true")
    ap.add_argument("--profile", metavar="FILE",
                    help="sample the worker with py-spy into FILE (collapsed stacks)")
    ap.add_argument("--timeout", type=float, default=600.0, help="worker phase limit, seconds")
    ap.add_argument("--poll", type=float, default=0.25, help="metrics poll interval, seconds")
    ap.add_argument("--keep", metavar="DIR", help="keep broker and worker logs in DIR")
    ap.add_argument("--rate", type=float, metavar="N",
                    help="live mode: after a warm-up, produce N events/s while the worker runs "
                         "and report the latency histogram (no throughput run)")
    ap.add_argument("--seconds", type=float, default=60.0, help="live mode: paced seconds")
    ap.add_argument("--warmup", type=int, default=50_000,
                    help="live mode: events produced and applied before the paced window")
    args = ap.parse_args(argv)
    if args.rate:
        return live(args)

    from streams.broker import EmbeddedBroker, free_port

    tmp = Path(tempfile.mkdtemp(prefix="vitals-bench-"))
    result: dict[str, Any] = {"events": args.events, "customers": args.customers,
                              "profiled": bool(args.profile)}
    t_all = time.perf_counter()
    try:
        t0 = time.perf_counter()
        gc.disable()  # millions of young tuples: the collector would rescan them over and over
        try:
            events, days = generate(args.customers, args.events, args.seed)
        finally:
            gc.enable()
        gc.freeze()  # nor rescan them later
        gen_s = time.perf_counter() - t0
        total = len(events)
        per_topic = Counter(topic for topic, _, _ in events)
        avg_bytes = sum(len(v) for _, _, v in events) / total
        result.update(days=days, generate_seconds=gen_s, avg_event_bytes=avg_bytes,
                      per_topic=dict(per_topic))
        log(f"generated {total:,} events ({dict(per_topic)}) over {days} days, "
            f"avg {avg_bytes:.0f} B, in {gen_s:.1f} s")

        with EmbeddedBroker(log_path=tmp / "tansu.log") as broker:
            bootstrap = broker.address
            port = free_port()
            env = worker_env(broker.url, port, str(tmp / "state"), args.config, args.env)
            settings = create_topics(env, bootstrap)
            log(f"broker {broker.url} (pid {broker.process.pid}); topics created")

            produce_s, input_ends = produce(bootstrap, events)
            result.update(produce_seconds=produce_s, produce_events_per_s=total / produce_s)
            log(f"produced {total:,} events in {produce_s:.1f} s ({total / produce_s:,.0f}/s)")
            stored = sum(input_ends.values())
            if stored != total:
                raise RuntimeError(f"broker holds {stored} input events, produced {total}")
            del events

            if not args.skip_baseline:
                base_s, base_n = baseline(bootstrap, sorted(per_topic), total,
                                          settings.ingest.batch_max_events)
                if base_n != total:
                    raise RuntimeError(f"baseline read {base_n} of {total} events")
                result.update(baseline_seconds=base_s, baseline_events_per_s=total / base_s)
                log(f"baseline: {total:,} events read+parsed in {base_s:.2f} s "
                    f"({total / base_s:,.0f}/s)")

            worker = Worker(env, port, tmp / "worker.log")
            try:
                run = run_worker(worker, bootstrap, total, input_ends, broker.process.pid, args.timeout,
                                 args.poll, args.profile)
            finally:
                code = worker.stop()
            assert run.first is not None and run.done is not None and run.applied is not None
            window = run.done - run.first
            result.update(
                worker_exit_code=code,
                worker_start_to_ready_seconds=(run.ready - run.spawned) if run.ready else None,
                worker_start_to_first_seconds=run.first - run.spawned,
                worker_seconds=window,
                worker_events_per_s=total / window,
                worker_applied_seconds=run.applied - run.first,
                worker_applied_events_per_s=total / (run.applied - run.first),
                worker_flushed_seconds=(run.flushed or run.done) - run.first,
                worker_from_ready_events_per_s=(total / (run.done - run.ready)
                                                if run.ready and run.ready < run.done else None),
                worker_cpu_seconds=run.cpu_window,
                worker_cpu_share=run.cpu_window / window,
                worker_cpu_us_per_event=1e6 * run.cpu_window / total,
                broker_cpu_share=run.broker_cpu_window / window,
                bench_cpu_share=run.bench_cpu_window / window,
                # Everything else on the machine (other jobs): a noise indicator.
                other_cpu_share=max(0.0, run.machine_cpu_window - run.cpu_window
                                    - run.broker_cpu_window - run.bench_cpu_window) / window,
                cores=os.cpu_count(),
                outcomes=run.outcomes,
                timeline=run.timeline,
                flushes=run.flushes,
                worker_children=run.children,
                rss_ready_bytes=run.rss_ready,
                rss_base_bytes=run.rss_base,
                rss_peak_bytes=run.rss_peak,
                rss_end_bytes=run.rss_end,
                # As asked: (peak - RSS when healthz first answered 200) / customers. Mostly
                # fetch and producer buffers at this size, see the README.
                rss_growth_per_customer_bytes=(run.rss_peak - run.rss_ready) / args.customers,
                rss_growth_from_base_per_customer_bytes=(run.rss_peak - run.rss_base)
                / args.customers,
            )
            if "baseline_events_per_s" in result:
                result["ratio_worker_to_baseline"] = (result["worker_events_per_s"]
                                                      / result["baseline_events_per_s"])
            log(f"worker: {total:,} events in {window:.2f} s ({total / window:,.0f}/s), "
                f"exit {code}")

            sizes = changelog_sizes(bootstrap, CHANGELOG_TOPIC)
            result["changelog"] = sizes
            result["internal_messages"] = topic_size(bootstrap, INTERNAL_TOPIC)
            result["customer_records"] = topic_size(bootstrap, CUSTOMER_TOPIC)
            if sizes.get("keys") != args.customers:
                log(f"warning: changelog has {sizes.get('keys')} keys, "
                    f"expected {args.customers}")
        if run.profile:
            summary = summarize_profile(run.profile)
            result["profile_file"] = run.profile
            print(summary, file=sys.stderr)
            _print_stages(result, run.profile)
        result["total_seconds"] = time.perf_counter() - t_all
        print_table(result)
        if args.json:
            print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
        return 0
    finally:
        _keep_and_remove(args.keep, tmp)


def print_table(r: dict[str, Any]) -> None:
    mib = 2 ** 20
    cl = r.get("changelog", {})
    rows = [
        ("input events", f"{r['events']:,} ({r['customers']:,} customers x {r['days']} days, "
                         f"avg {r['avg_event_bytes']:.0f} B)"),
        ("produce (not counted)", f"{r['produce_seconds']:.1f} s, "
                                  f"{r['produce_events_per_s']:,.0f} events/s"),
    ]
    if "baseline_events_per_s" in r:
        rows.append(("baseline: aiokafka read+parse",
                     f"{r['baseline_events_per_s']:,.0f} events/s ({r['baseline_seconds']:.2f} s)"))
    rows += [
        ("worker: end to end", f"{r['worker_events_per_s']:,.0f} events/s "
                               f"({r['worker_seconds']:.2f} s)"
                               + (" [py-spy attached]" if r["profiled"] else "")),
        ("  all events counted after", f"{r['worker_applied_seconds']:.2f} s "
                                       f"({r['worker_applied_events_per_s']:,.0f} events/s)"),
        ("  start -> ready / consuming", f"{r['worker_start_to_ready_seconds'] or float('nan'):.1f} s"
                                        f" / {r['worker_start_to_first_seconds']:.1f} s"),
        ("  worker CPU", f"{100 * r['worker_cpu_share']:.0f}% of a core, "
                         f"{r['worker_cpu_us_per_event']:.1f} us/event; broker "
                         f"{100 * r['broker_cpu_share']:.0f}%, others on the machine "
                         f"{100 * r['other_cpu_share']:.0f}% ({r['cores']} cores)"),
        ("  outcomes", ", ".join(f"{k} {v:,.0f}" for k, v in sorted(r["outcomes"].items()) if v)),
    ]
    if "ratio_worker_to_baseline" in r:
        rows.append(("ratio worker / baseline", f"{r['ratio_worker_to_baseline']:.3f}"))
    rows += [
        ("worker RSS ready / base / peak", f"{r['rss_ready_bytes'] / mib:.0f} / "
                                            f"{r['rss_base_bytes'] / mib:.0f} / "
                                            f"{r['rss_peak_bytes'] / mib:.0f} MiB (VmHWM)"),
        ("RSS growth per customer", f"{r['rss_growth_per_customer_bytes']:,.0f} B "
                                    "((peak - ready) / customers); "
                                    f"{r['rss_growth_from_base_per_customer_bytes']:,.0f} B "
                                    "from base"),
    ]
    if cl.get("keys"):
        rows += [
            ("state per customer (serialized)", f"{cl['avg_value_bytes']:,.0f} B avg "
                                                f"(seen ids {cl['avg_seen_bytes']:,.0f} B for "
                                                f"{cl['avg_seen_ids']:.0f} ids, activity "
                                                f"{cl['avg_activity_bytes']:,.0f} B)"),
            ("state per customer (Python objects)", f"{cl['avg_python_object_bytes']:,.0f} B"),
            ("changelog written", f"{cl['records']:,} records, {cl['bytes'] / mib:,.0f} MiB "
                                  f"({cl['bytes'] / r['events']:,.0f} B per input event)"),
        ]
    rows.append(("vitals.customer records", f"{r['customer_records']:,}; internal messages "
                                            f"{r['internal_messages']:,}; flushes {r['flushes']}"))
    rows.append(("total bench time", f"{r['total_seconds']:.0f} s"))
    width = max(len(k) for k, _ in rows)
    print()
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


if __name__ == "__main__":
    sys.exit(main())
