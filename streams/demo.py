"""`vitals demo`: embedded broker + worker + simulator, with a live summary from /metrics.

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
from datetime import UTC, datetime
from typing import Any

import orjson

from streams.broker import EmbeddedBroker
from streams.settings import Settings

DEMO_SESSION_TIMEOUT = 6.0  # Tansu completes a group's first join after half of it
SUMMARY_EVERY = 3.0


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
                  sent: int, elapsed: float) -> list[str]:
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
        f"  events/s      {rate:10,.0f}      produced {sent:,}   processed {total:,.0f}",
        "  outcomes      " + "  ".join(f"{k} {v:,.0f}" for k, v in sorted(by_outcome.items())),
        f"  watermark     {watermark} UTC",
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


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    from streams.broker import _die_with_parent as die

    die()


def run_demo(settings: Settings, args: argparse.Namespace) -> int:
    from streams.produce import produce
    from streams.simulator import config_from_args, generate
    from streams.topics import bootstrap_servers, ensure_topics

    # Ctrl-C and SIGTERM stop the demo even when it was started with SIGINT ignored
    # (background jobs of a non-interactive shell inherit that).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    with EmbeddedBroker(port=settings.app.embedded_port) as broker:
        env = {**os.environ, "VITALS_APP__BROKER": broker.url,
               "VITALS_APP__SESSION_TIMEOUT_SECONDS": str(DEMO_SESSION_TIMEOUT),
               "VITALS_APP__PRODUCER_BATCH_BYTES": "1"}  # the embedded broker is Tansu
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
            compress = args.compress or 86400 / 5  # one simulated day every 5 seconds
            return asyncio.run(_run(settings, args, bootstrap, topic_of, compress, worker,
                                    generate(config_from_args(args)), produce))
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
               topic_of: dict[str, str], compress: float, worker: subprocess.Popen[bytes],
               items: Any, produce: Any) -> int:
    start = time.monotonic()
    state = {"sent": 0}
    stop = asyncio.Event()

    class Counting:
        def update(self, done: int, force: bool = False) -> None:
            state["sent"] = done

        def done(self, count: int) -> None:
            state["sent"] = count

    producer = asyncio.create_task(produce(bootstrap, topic_of, items, compress=compress,
                                           progress=Counting(), should_stop=stop.is_set))
    tty = sys.stdout.isatty()
    last_total, last_t = 0.0, time.monotonic()
    try:
        while True:
            await asyncio.sleep(SUMMARY_EVERY)
            if worker.poll() is not None:
                print(f"demo: worker exited with {worker.returncode}", file=sys.stderr)
                return 1
            metrics = await asyncio.to_thread(scrape, settings.app.web_port)
            total = sum(v for _, v in metrics.get("vitals_events_total", []))
            now = time.monotonic()
            rate = (total - last_total) / max(1e-9, now - last_t)
            last_total, last_t = total, now
            lines = summary_lines(metrics, rate, state["sent"], now - start)
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
        stop.set()
        if not producer.done():
            producer.cancel()
        try:
            await producer
        except (asyncio.CancelledError, Exception):
            pass
