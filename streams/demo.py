"""`vitals demo`: embedded broker + worker + simulator, with a live summary from /metrics.

The simulated company's history ends now: a quarter of it (`--days`) is sent at full speed
first, so that every figure (finished months, the churn model, retention impact) has data
within two minutes, and the simulation then goes on live, each event sent at its own time.
The worker runs as a child process, exactly as `vitals worker` would, and the summary reads
only what Prometheus would scrape, so the demo shows the service as an operator sees it.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from typing import Any

import orjson

from streams.broker import EmbeddedBroker
from streams.settings import Settings

DEMO_SESSION_TIMEOUT = 6.0  # Tansu completes a group's first join after half of it
SUMMARY_EVERY = 3.0
LIVE_DAYS = 30             # simulated days after now, sent live
# Retention impact compares customers paying at D - W with D: with W = 90 days a quarter of
# history gives no customer paying at D - W yet, so the demo judges it over 30 days.
DEMO_RETENTION_WINDOW_DAYS = 30
BAR_WIDTH = 30
FIRST_MODEL_DAY = 40       # history days sent before waiting for the first model (see _run)
CALIBRATED_MODEL_DAY = 80  # ... and before waiting for its calibrated probabilities
MODEL_WAIT_SECONDS = 60.0
DAY = 86400.0
Scraped = dict[str, list[tuple[dict[str, str], float]]]


def scrape(port: int) -> dict[str, list[tuple[dict[str, str], float]]]:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name].append((sample.labels, sample.value))
    return out


def summary_lines(metrics: dict[str, list[tuple[dict[str, str], float]]], rate: float,
                  sent: int, elapsed: float, history: dict[str, Any] | None = None
                  ) -> list[str]:
    total = sum(v for _, v in metrics.get("vitals_events_total", []))
    by_outcome: dict[str, float] = defaultdict(float)
    for labels, v in metrics.get("vitals_events_total", []):
        by_outcome[labels["outcome"]] += v
    wm = metrics.get("vitals_watermark_timestamp_seconds")
    watermark = (datetime.fromtimestamp(wm[0][1], UTC).strftime("%Y-%m-%d %H:%M")
                 if wm else "-")
    segments: dict[str, float] = defaultdict(float)
    for labels, v in metrics.get("vitals_customers", []):
        segments[labels["segment"]] += v
    stick = {labels["segment"]: v for labels, v in metrics.get("vitals_stickiness_ratio", [])}
    dead = sum(v for _, v in metrics.get("vitals_deadletter_total", []))
    lines = [
        f"customer-vitals demo — {elapsed:5.0f} s   (Ctrl-C to stop)",
        *progress_lines(wm[0][1] if wm else None, history or {}, ingest_backlog(metrics)),
        f"  events/s      {rate:10,.0f}      produced {sent:,}   processed {total:,.0f}",
        "  outcomes      " + "  ".join(f"{k} {v:,.0f}" for k, v in sorted(by_outcome.items())),
        f"  watermark     {watermark} UTC",
        freshness_line(metrics),
        f"  dead letters  {dead:,.0f}",
        "  segment        customers   avg stickiness",
    ]
    for segment in sorted(segments):
        lines.append(f"    {segment:<12} {segments[segment]:9,.0f}   {stick.get(segment, 0):.3f}")
    risk: dict[str, float] = defaultdict(float)
    for labels, v in metrics.get("vitals_churn_risk_customers", []):
        risk[labels["risk"]] += v
    version = metrics.get("vitals_churn_model_version")
    auc = metrics.get("vitals_churn_model_auc")
    learnt = metrics.get("vitals_churn_model_labelled")
    lines.append(f"  churn model   version {version[0][1]:.0f}" if version and version[0][1]
                 else "  churn model   waiting for the first labelled snapshots")
    if learnt:
        lines[-1] += f", {learnt[0][1]:,.0f} learnt" + (f", AUC {auc[0][1]:.3f}" if auc else "")
    if risk:
        lines.append("  churn risk    " + "  ".join(f"{k} {risk[k]:,.0f}"
                                                   for k in ("high", "medium", "low") if k in risk))
    adoption = metrics.get("vitals_feature_adoption_ratio", [])
    if adoption:
        lines.append("  adoption      " + "  ".join(f"{labels['feature']} {v:.0%}"
                                                   for labels, v in sorted(
                                                       adoption, key=lambda x: -x[1])))
    return lines


def freshness_line(metrics: Scraped) -> str:
    """The ingest's offset lag and the mean processing delay so far (arrival to output)."""
    backlog = ingest_backlog(metrics)
    count = sum(v for _, v in metrics.get("vitals_processing_delay_seconds_count", []))
    total = sum(v for _, v in metrics.get("vitals_processing_delay_seconds_sum", []))
    delay = f"{total / count:,.1f} s" if count else "-"
    lag = "-" if backlog is None else f"{backlog:,.0f} records"
    return f"  freshness     input lag {lag}, mean processing delay {delay}"


def ingest_backlog(metrics: Scraped) -> float | None:
    """Input records not yet consumed (the ingest group's offset lag), None before known."""
    lags = [v for labels, v in metrics.get("vitals_consumer_lag_records", [])
            if labels.get("group", "").endswith("-ingest")]
    return sum(lags) if lags else None


def progress_lines(watermark: float | None, history: dict[str, Any],
                   backlog: float | None = None) -> list[str]:
    """The history's progress bar (by the worker's watermark), then the live phase."""
    start, end = history.get("start"), history.get("end")
    if start is None or end is None:
        return []
    done = 0.0 if watermark is None or watermark <= 0 else (watermark - start) / (end - start)
    done = min(1.0, max(0.0, done))
    sent = history.get("sent_until")
    produced = (f"   produced to {datetime.fromtimestamp(sent, UTC):%Y-%m-%d}"
                if sent is not None and sent < end else "")
    # In event time the watermark reaches the end only with the next live event of every
    # partition: the history is done once all of it was sent and consumed.
    if done >= 1.0 or (sent is not None and sent >= end and backlog == 0):
        return [f"  history       {(end - start) / DAY:.0f} days worked off; live since "
                f"{datetime.fromtimestamp(end, UTC):%H:%M:%S} UTC"]
    if history.get("waiting"):
        produced += f"   waiting for {history['waiting']}"
    filled = int(done * BAR_WIDTH)
    return [f"  history       [{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {done:4.0%} of "
            f"{(end - start) / DAY:.0f} days{produced}"]


def demo_config(args: argparse.Namespace, now: float) -> Any:
    """The simulation: `--days` of history ending now (from `--start` when given), then
    LIVE_DAYS more, sent live."""
    from streams.simulator import SimConfig

    if args.start:
        start = datetime.fromisoformat(args.start).astimezone(UTC)
    else:  # UTC midnight, so that simulated days are the service's days
        start = datetime.fromtimestamp((now // DAY - args.days) * DAY, UTC)
    history = max(1, int((now - start.timestamp()) // DAY) + 1)
    return SimConfig(seed=args.seed, customers=args.customers, start=start,
                     days=history + LIVE_DAYS, bad_fraction=args.bad_fraction,
                     duplicate_fraction=args.duplicate_fraction)


async def send_events(bootstrap: str, topic_of: dict[str, str], items: Iterable[Any],
                      live_from: float, pace: float, state: dict[str, Any],
                      clock: Callable[[], float] = time.time,
                      pauses: list[tuple[float, Callable[[], Awaitable[Any]]]] | None = None
                      ) -> int:
    """Events before `live_from` at full speed, then each at its own time (`pace` times
    faster: 1 = real time). Keeps state["sent"] and state["sent_until"] (event time).

    `pauses`: (event time, wait), each wait awaited once, before the first event at or after
    its time, once everything sent before it is delivered."""
    from aiokafka import AIOKafkaProducer

    from streams.produce import _event_time, _key

    pending = sorted(pauses or [], key=lambda p: p[0])
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=10,
                                max_batch_size=1 << 20, max_request_size=8 << 20)
    await producer.start()
    try:
        for family, event in items:
            topic = topic_of[family]
            if isinstance(event, (bytes, bytearray)):
                await producer.send(topic, bytes(event))
            else:
                ts = _event_time(event)
                while pending and ts is not None and ts >= pending[0][0]:
                    await producer.flush()
                    await pending.pop(0)[1]()
                if ts is not None and ts > live_from:
                    wait = live_from + (ts - live_from) / pace - clock()
                    if wait > 0:
                        await producer.flush()
                        await asyncio.sleep(wait)
                await producer.send(topic, orjson.dumps(event), key=_key(event))
                if ts is not None:
                    state["sent_until"] = ts
            state["sent"] += 1
            if state["sent"] % 5000 == 0:
                await asyncio.sleep(0)  # let the summary run
        await producer.flush()
    finally:
        await producer.stop()
    return int(state["sent"])


def _has_model(metrics: Scraped) -> bool:
    return any(v >= 1 for _, v in metrics.get("vitals_churn_model_version", []))


def _has_risk_bands(metrics: Scraped) -> bool:
    """Customers in risk bands: the model publishes calibrated probabilities."""
    return sum(v for _, v in metrics.get("vitals_churn_risk_customers", [])) > 0


async def _wait_for(port: int, worker: subprocess.Popen[bytes], ready: Callable[[Scraped], bool],
                    timeout: float = MODEL_WAIT_SECONDS) -> bool:
    """Until the worker's /metrics satisfy `ready` (True), or the timeout passes (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and worker.poll() is None:
        try:
            metrics = await asyncio.to_thread(scrape, port)
        except OSError:
            metrics = {}
        if ready(metrics):
            return True
        await asyncio.sleep(0.5)
    return False


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    from streams.broker import _die_with_parent as die

    die()


def run_demo(settings: Settings, args: argparse.Namespace) -> int:
    from streams.simulator import generate
    from streams.topics import bootstrap_servers, ensure_topics

    # Ctrl-C and SIGTERM stop the demo even when it was started with SIGINT ignored
    # (background jobs of a non-interactive shell inherit that).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    with EmbeddedBroker(port=settings.app.embedded_port) as broker:
        env = {**os.environ, "VITALS_APP__BROKER": broker.url,
               "VITALS_APP__SESSION_TIMEOUT_SECONDS": str(DEMO_SESSION_TIMEOUT),
               "VITALS_APP__PRODUCER_BATCH_BYTES": "1",  # the embedded broker is Tansu
               "VITALS_FEATURES__RETENTION_WINDOW_DAYS": str(DEMO_RETENTION_WINDOW_DAYS)}
        if not settings.features.configured:  # a gauge series per simulated feature
            from streams.simulator import DEFAULT_FEATURES
            env["VITALS_FEATURES__CONFIGURED"] = orjson.dumps(list(DEFAULT_FEATURES)).decode()
        if args.config:
            env["VITALS_CONFIG"] = args.config
        print(f"demo: broker {broker.url}; starting worker "
              f"(metrics on http://{settings.app.web_host}:{settings.app.web_port}/metrics)",
              file=sys.stderr)
        worker = subprocess.Popen([sys.executable, "-m", "streams.cli", "worker"], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  preexec_fn=_die_with_parent)
        try:
            _wait_ready(settings.app.web_port, worker)
            bootstrap = bootstrap_servers(broker.url)
            asyncio.run(ensure_topics(settings, bootstrap))
            topic_of = {fam: name for name, fam in settings.topics.input_topics().items()}
            now = time.time()
            config = demo_config(args, now)
            history = {"start": config.start.timestamp(), "end": now}
            return asyncio.run(_run(settings, args, bootstrap, topic_of, worker,
                                    generate(config), history))
        except KeyboardInterrupt:
            print("\ndemo: stopping", file=sys.stderr)
            return 0
        finally:
            _stop(worker)


def _raise_keyboard_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _wait_ready(port: int, worker: subprocess.Popen[bytes], timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            err = worker.stderr.read().decode(errors="replace") if worker.stderr else ""
            raise SystemExit(f"demo: worker exited with {worker.returncode}\n{err[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise SystemExit("demo: worker did not become ready")


def _stop(worker: subprocess.Popen[bytes]) -> None:
    if worker.poll() is None:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(20)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(5)


async def _run(settings: Settings, args: argparse.Namespace, bootstrap: str,
               topic_of: dict[str, str], worker: subprocess.Popen[bytes],
               items: Any, history: dict[str, Any]) -> int:
    start = time.monotonic()
    state: dict[str, Any] = {"sent": 0, "sent_until": None}
    history["sent_until"] = None
    # The churn model learns from snapshots labelled 33 days later, and publishes a probability
    # only once its raw scores were calibrated on such labels: a history sent at full speed
    # would be worked off before the first model exists. So the history waits twice, each
    # time until the worker shows the model's next step (or MODEL_WAIT_SECONDS pass).
    def wait(what: str, ready: Callable[[Scraped], bool]) -> Callable[[], Awaitable[bool]]:
        async def waiting() -> bool:
            history["waiting"] = what
            try:
                ready_in_time = await _wait_for(settings.app.web_port, worker, ready)
            finally:
                history["waiting"] = None
            if not ready_in_time:
                print(f"demo: no sign of {what} after {MODEL_WAIT_SECONDS:.0f} s; the history "
                      "goes on (the churn figures may come later)", file=sys.stderr)
            return ready_in_time
        return waiting

    pauses = [(at, waiting) for at, waiting in (
        (history["start"] + FIRST_MODEL_DAY * DAY, wait("the first churn model", _has_model)),
        (history["start"] + CALIBRATED_MODEL_DAY * DAY,
         wait("the churn model's calibration", _has_risk_bands))) if at < history["end"]]
    producer = asyncio.create_task(send_events(bootstrap, topic_of, items, history["end"],
                                               args.compress or 1.0, state, pauses=pauses))
    tty = sys.stdout.isatty()
    last_total, last_t = 0.0, time.monotonic()
    try:
        while True:
            await asyncio.sleep(SUMMARY_EVERY)
            if worker.poll() is not None:
                print(f"demo: worker exited with {worker.returncode}", file=sys.stderr)
                return 1
            if producer.done() and producer.exception() is not None:
                print(f"demo: producing failed: {producer.exception()!r}", file=sys.stderr)
                return 1
            metrics = await asyncio.to_thread(scrape, settings.app.web_port)
            total = sum(v for _, v in metrics.get("vitals_events_total", []))
            now = time.monotonic()
            rate = (total - last_total) / max(1e-9, now - last_t)
            last_total, last_t = total, now
            history["sent_until"] = state["sent_until"]
            lines = summary_lines(metrics, rate, state["sent"], now - start, history)
            if producer.done():
                lines.append("  simulation finished; figures stay live until Ctrl-C")
            if tty:
                sys.stdout.write("\x1b[H\x1b[J" + "\n".join(lines) + "\n")
            else:
                sys.stdout.write("\n".join(lines) + "\n\n")
            sys.stdout.flush()
            if args.duration and now - start >= args.duration:
                return 0
    finally:
        if not producer.done():
            producer.cancel()
        try:
            await producer
        except (asyncio.CancelledError, Exception):
            pass
