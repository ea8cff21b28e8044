"""The `vitals` command: worker, demo, simulate, replay, config check (CONTRACT.md §5)."""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import orjson
from pythonjsonlogger.json import JsonFormatter

from streams.kafka_config import KafkaStartupError
from streams.settings import Settings, SettingsError, load_settings

log = logging.getLogger("vitals")
LEVELS = {"crit": logging.CRITICAL, "error": logging.ERROR, "warn": logging.WARNING,
          "info": logging.INFO, "debug": logging.DEBUG}
#: Loggers of this project; `app.log_level` applies to them. Libraries (Faust, mode, aiokafka,
#: aiohttp) log at WARNING and above unless the level is "debug".
OWN_LOGGERS = ("streams", "models")
#: The command line's own lines (broker and web address, why the worker stopped) are shown
#: from INFO at any level but "crit" and "error".
CLI_LOGGER = "vitals"


class JsonLogFormatter(JsonFormatter):
    """One JSON object a line: ts (RFC 3339, UTC, with Z), level, logger, msg, then extras."""

    def __init__(self) -> None:
        super().__init__(["asctime", "levelname", "name", "message"],
                         rename_fields={"asctime": "ts", "levelname": "level", "name": "logger",
                                        "message": "msg"})

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        ts = datetime.fromtimestamp(record.created, UTC)
        return ts.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def configure_logging(level: str, stream: IO[str] | None = None) -> None:
    """Every log record of the process (ours, Faust's, mode's, aiokafka's) as JSON lines."""
    from streams.exporters.web import MalformedRequestFilter

    lvl = LEVELS[level]
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonLogFormatter())
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(lvl if lvl == logging.DEBUG else max(lvl, logging.WARNING))
    for name in OWN_LOGGERS:
        logging.getLogger(name).setLevel(lvl)
    logging.getLogger(CLI_LOGGER).setLevel(min(lvl, logging.INFO) if lvl < logging.ERROR
                                           else lvl)
    server = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, MalformedRequestFilter) for f in server.filters):
        server.addFilter(MalformedRequestFilter())
    logging.captureWarnings(True)


class VersionAction(argparse.Action):
    """`--version`: the package version and the commit (see metrics.build_info)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS,
                 **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS,
                         help="print the version and commit, then exit")

    def __call__(self, parser: argparse.ArgumentParser, *args: Any) -> None:
        from streams.exporters.metrics import build_info

        version, commit = build_info()
        print(f"vitals {version} (commit {commit})")
        parser.exit()


@contextlib.contextmanager
def broker_url(settings: Settings) -> Iterator[str]:
    """The configured broker, or the embedded one for as long as the context lasts."""
    if settings.app.broker != "embedded":
        yield settings.app.broker
        return
    from streams.broker import EmbeddedBroker

    with EmbeddedBroker(port=settings.app.embedded_port) as broker:
        log.info("embedded broker: %s", broker.url)
        yield broker.url


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    import faust

    from streams.app import build_app
    from streams.topics import bootstrap_servers, ensure_topics

    # The worker allocates many short-lived dicts per event; the default GC thresholds made the
    # collector a measurable share of the CPU (tests/bench/README.md). Costs some peak RSS.
    gc.set_threshold(100_000, 50, 100)
    with broker_url(settings) as url:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        loop.run_until_complete(ensure_topics(settings, bootstrap_servers(url)))
        service = build_app(settings, url)
        log.info("vitals worker: broker %s, web http://%s:%d", url, settings.app.web_host,
                 settings.app.web_port)
        # Logging stays as configure_logging set it (JSON lines), not mode's own format.
        worker = faust.Worker(service.app, loop=loop, quiet=True, redirect_stdouts=False,
                              override_logging=False)
        worker.spinner = None  # a terminal spinner writes escape codes between the JSON lines
        code = 0
        try:
            worker.execute_from_commandline()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        # Non-zero when one of the worker's services died, whatever the shutdown returned.
        code = service.health.exit_code(code)
        if not service.health.live:
            log.error("worker stopped with status %d: %s", code, service.health.reason)
    return code


def cmd_simulate(settings: Settings, args: argparse.Namespace) -> int:
    from streams.produce import Progress, produce
    from streams.simulator import config_from_args, generate, to_jsonl_line

    items = generate(config_from_args(args))
    if args.out:
        count = 0
        progress = Progress(f"simulate -> {args.out}")
        with open(args.out, "wb") as fh:
            for family, event in items:
                fh.write(to_jsonl_line(family, event))
                count += 1
                progress.update(count)
        progress.done(count)
        return 0
    from streams.topics import bootstrap_servers, ensure_topics

    broker = args.broker or settings.app.broker
    if broker == "embedded":
        print("simulate: give --out FILE or --broker kafka://host:port "
              "(an embedded broker would vanish with this command)", file=sys.stderr)
        return 2
    bootstrap = bootstrap_servers(broker)
    asyncio.run(ensure_topics(settings, bootstrap))
    topic_of = {fam: name for name, fam in settings.topics.input_topics().items()}
    asyncio.run(produce(bootstrap, topic_of, items, rate=args.rate, compress=args.compress,
                        progress=Progress("simulate"), client_kwargs=_client_kwargs(settings)))
    return 0


def _client_kwargs(settings: Settings) -> dict[str, Any]:
    """TLS/SASL keyword arguments of the `[kafka]` settings, for the producers."""
    from streams.kafka_config import aiokafka_kwargs

    return aiokafka_kwargs(settings.kafka)


def cmd_topics_plan(settings: Settings, args: argparse.Namespace) -> int:
    """Print the `kafka-topics.sh --create` commands of every topic the service needs."""
    from streams.topics import plan_commands, topic_specs

    specs = topic_specs(settings)
    print(f"# {len(specs)} topics of app.id={settings.app.id!r}, replication factor "
          f"{settings.topics.replication_factor}; then set app.create_topics = false")
    for line in plan_commands(settings, args.bootstrap_server, args.command_name,
                              args.command_config):
        print(line)
    return 0


def read_jsonl(path: str | os.PathLike[str]) -> Iterator[tuple[str, Any]]:
    """Lines of a JSONL file -> (family, event); `raw` lines carry bytes to send verbatim."""
    from streams.events import FAMILIES, route_by_shape

    with open(path, "rb") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise SystemExit(f"{path}:{number}: not JSON ({exc})") from None
            family = obj.pop("family", None) if isinstance(obj, dict) else None
            if family is None and isinstance(obj, dict):
                family = route_by_shape(obj)
            if family not in FAMILIES:
                raise SystemExit(f"{path}:{number}: cannot tell the event family "
                                 f"(add a 'family' field)")
            if isinstance(obj, dict) and set(obj) == {"raw"}:
                yield family, obj["raw"].encode()
            else:
                yield family, obj


def cmd_replay(settings: Settings, args: argparse.Namespace) -> int:
    from streams.produce import Progress, produce
    from streams.topics import bootstrap_servers, ensure_topics

    broker = args.broker or settings.app.broker
    if broker == "embedded":
        print("replay: give --broker kafka://host:port", file=sys.stderr)
        return 2
    total = sum(1 for line in open(args.file, "rb") if line.strip())
    bootstrap = bootstrap_servers(broker)
    asyncio.run(ensure_topics(settings, bootstrap))
    topic_of = {fam: name for name, fam in settings.topics.input_topics().items()}
    sent = asyncio.run(produce(bootstrap, topic_of, read_jsonl(args.file), rate=args.rate,
                               progress=Progress(f"replay {Path(args.file).name}", total),
                               client_kwargs=_client_kwargs(settings)))
    print(f"replayed {sent} events from {args.file}", file=sys.stderr)
    return 0


def cmd_config_check(settings: Settings, args: argparse.Namespace) -> int:
    print(f"# settings valid; read from: {', '.join(settings.sources)}")
    sys.stdout.write(orjson.dumps(settings.as_dict(), option=orjson.OPT_INDENT_2).decode())
    print()
    return 0


def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    from streams.demo import run_demo

    return run_demo(settings, args)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vitals", description=__doc__)
    p.add_argument("--config", help="TOML file merged over config/default.toml")
    p.add_argument("--version", action=VersionAction)
    sub = p.add_subparsers(dest="command", required=True)

    sub.add_parser("worker", help="run a worker (embedded broker unless one is configured)")

    def sim_options(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--seed", type=int, default=7)
        sp.add_argument("--customers", type=int, default=200)
        sp.add_argument("--days", type=int, default=90)
        sp.add_argument("--start", help="simulated start time, RFC 3339 (default 2026-01-01)")
        sp.add_argument("--bad-fraction", type=float, default=0.0)
        sp.add_argument("--duplicate-fraction", type=float, default=0.0)
        sp.add_argument("--rate", type=float, help="cap on events per second")
        sp.add_argument("--compress", type=float,
                        help="time compression: simulated seconds per wall-clock second")

    sim = sub.add_parser("simulate", help="produce seeded synthetic events")
    sim_options(sim)
    sim.add_argument("--out", help="write JSONL here instead of producing")
    sim.add_argument("--broker", help="kafka://host:port")

    rep = sub.add_parser("replay", help="produce events from a JSONL file, in order")
    rep.add_argument("file")
    rep.add_argument("--broker", help="kafka://host:port")
    rep.add_argument("--rate", type=float, help="cap on events per second")

    demo = sub.add_parser("demo", help="embedded broker + worker + simulator, live summary")
    sim_options(demo)
    demo.add_argument("--duration", type=float, default=0,
                      help="seconds to run (0 = until Ctrl-C)")
    demo.set_defaults(compress=None, customers=300, days=120)  # days of history, then live

    topics = sub.add_parser("topics", help="Kafka topics of the service")
    topics_sub = topics.add_subparsers(dest="topics_command", required=True)
    plan = topics_sub.add_parser("plan", help="print kafka-topics.sh commands that create every "
                                              "topic (for app.create_topics = false)")
    plan.add_argument("--bootstrap-server", default="BROKER:9092")
    plan.add_argument("--command-config", help="client properties file (TLS/SASL) to pass on")
    plan.add_argument("--command", dest="command_name", default="kafka-topics.sh")

    cfg = sub.add_parser("config", help="configuration")
    cfg_sub = cfg.add_subparsers(dest="config_command", required=True)
    cfg_sub.add_parser("check", help="validate and print the effective settings")
    return p


COMMANDS = {"worker": cmd_worker, "simulate": cmd_simulate, "replay": cmd_replay,
            "demo": cmd_demo, "topics": cmd_topics_plan}


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        settings = load_settings(args.config)
    except SettingsError as exc:
        print(f"vitals: invalid configuration: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.app.log_level)
    if args.command == "config":
        return cmd_config_check(settings, args)
    try:
        return COMMANDS[args.command](settings, args)
    except KeyboardInterrupt:
        return 130
    except KafkaStartupError as exc:
        print(f"vitals: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
