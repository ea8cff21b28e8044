"""Every Kafka topic of the service: their creation, the check that they exist, the plan.

Output topics keyed by entity (customer, feature, scope, alert) are compacted: consumers want
the latest record per key. Creating them up front means the first consumer of an output topic
never races the first record. Faust's table changelogs are listed here too, so that one list
serves creation, the `app.create_topics = false` check and `vitals topics plan`.
"""
from __future__ import annotations

import asyncio
import logging
import shlex
import time
from collections.abc import Iterable
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, for_code
from aiokafka.partitioner import murmur2

from streams.kafka_config import (
    KafkaStartupError,
    aiokafka_kwargs,
    describe_client_error,
    probe,
    quiet_aiokafka,
)
from streams.settings import Settings

log = logging.getLogger(__name__)


def bootstrap_servers(broker_url: str) -> str:
    """kafka://a:9092,b:9092 (or kafka://a:9092;kafka://b:9092) -> a:9092,b:9092"""
    parts = broker_url.replace(";", ",").split(",")
    return ",".join(p.strip().removeprefix("kafka://") for p in parts if p.strip())


class Partitioner:
    """Kafka's default partitioner (murmur2), so Faust's table routing finds our keys."""

    def __init__(self, partitions: int, cache_size: int = 200_000) -> None:
        self.partitions = partitions
        self.cache_size = cache_size
        self._cache: dict[str, int] = {}

    def __call__(self, key: str) -> int:
        p = self._cache.get(key)
        if p is None:
            if len(self._cache) >= self.cache_size:
                self._cache.clear()
            p = self._cache[key] = (murmur2(key.encode()) & 0x7FFFFFFF) % self.partitions
        return p


MODEL_MESSAGE_BYTES = 8 << 20   # = the producer's max request size (streams/app.py)

# Faust tables of the worker (streams/app.py) -> partitions (None = app.partitions). Their
# changelog topics are "<app.id>-<table>-changelog", compacted.
TABLES: dict[str, int | None] = {"customers": None, "clocks": None, "scopes": None,
                                 "churn_learner": 1, "features": None}

_TOPIC_EXISTS = 36
_INVALID_REPLICATION_FACTOR = 38


def changelog_topic(app_id: str, table: str) -> str:
    return f"{app_id}-{table}-changelog"


def topic_specs(settings: Settings) -> list[NewTopic]:
    """Every topic the service reads or writes, with partitions, replication and configs."""
    t = settings.topics
    rf = t.replication_factor
    compact = {"cleanup.policy": "compact"}
    specs = [NewTopic(name, t.input_partitions, rf) for name in t.input_topics()]
    specs.append(NewTopic(t.repartition, settings.app.partitions, rf))
    specs.append(NewTopic(t.business_internal, settings.app.partitions, rf))
    specs.append(NewTopic(t.feature_internal, settings.app.partitions, rf))
    # One partition each: one learner for the whole service, one model every worker reads.
    specs.append(NewTopic(t.churn_examples, 1, rf))
    # A forest model snapshot is several MB (Kafka's default message limit is 1 MB).
    specs.append(NewTopic(t.churn_model, 1, rf, topic_configs={
        **compact, "max.message.bytes": str(MODEL_MESSAGE_BYTES)}))
    specs.append(NewTopic(t.feature_catalog, 1, rf, topic_configs=compact))
    for name in (t.customer, t.feature_out, t.business, t.alerts):
        specs.append(NewTopic(name, settings.app.partitions, rf, topic_configs=compact))
    specs.append(NewTopic(t.deadletter, settings.app.partitions, rf))
    for table, partitions in TABLES.items():
        specs.append(NewTopic(changelog_topic(settings.app.id, table),
                              partitions or settings.app.partitions, rf, topic_configs=compact))
    return specs


def plan_commands(settings: Settings, bootstrap: str = "BROKER:9092",
                  command: str = "kafka-topics.sh",
                  command_config: str | None = None) -> list[str]:
    """`kafka-topics.sh --create` lines for a platform team that creates topics itself."""
    lines = []
    for spec in topic_specs(settings):
        args = [command, "--bootstrap-server", bootstrap]
        if command_config:
            args += ["--command-config", command_config]
        args += ["--create", "--if-not-exists", "--topic", spec.name,
                 "--partitions", str(spec.num_partitions),
                 "--replication-factor", str(spec.replication_factor)]
        for key, value in sorted(spec.topic_configs.items()):
            args += ["--config", f"{key}={value}"]
        lines.append(" ".join(shlex.quote(a) for a in args))
    return lines


def check_topics(specs: Iterable[NewTopic], existing: dict[str, int],
                 configs: dict[str, dict[str, str]] | None = None) -> list[str]:
    """What is missing or different: `existing` maps topic -> partitions, `configs` topic ->
    the configs the broker reported (cleanup.policy, max.message.bytes; a config it did not
    report is not judged)."""
    problems = []
    configs = configs or {}
    for spec in specs:
        if spec.name not in existing:
            problems.append(f"{spec.name} missing (partitions: {spec.num_partitions})")
            continue
        if existing[spec.name] != spec.num_partitions:
            problems.append(f"{spec.name} has {existing[spec.name]} partitions, "
                            f"needs {spec.num_partitions}")
        reported = configs.get(spec.name, {})
        policy = spec.topic_configs.get("cleanup.policy", "delete")
        have = reported.get("cleanup.policy")
        if have is not None and set(have.split(",")) != set(policy.split(",")):
            problems.append(f"{spec.name} has cleanup.policy={have}, needs {policy}")
        need_bytes = spec.topic_configs.get("max.message.bytes")
        have_bytes = reported.get("max.message.bytes")
        if need_bytes and have_bytes and int(have_bytes) < int(need_bytes):
            problems.append(f"{spec.name} has max.message.bytes={have_bytes}, "
                            f"needs {need_bytes} or more")
    return problems


async def ensure_topics(settings: Settings, bootstrap: str) -> None:
    """Probe the broker, then create the missing topics (existing ones are left as they are)
    or, with `app.create_topics = false`, check them. Every failure is a KafkaStartupError
    with a one-line message, raised within about kafka.connect_timeout_seconds."""
    k = settings.kafka
    await probe(bootstrap, k)
    specs = topic_specs(settings)
    deadline = time.monotonic() + k.connect_timeout_seconds
    timeout_ms = int(k.connect_timeout_seconds * 1000)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=timeout_ms,
                                **aiokafka_kwargs(k))
    try:
        try:
            with quiet_aiokafka():
                await asyncio.wait_for(admin.start(), k.connect_timeout_seconds)
        except Exception as exc:
            raise KafkaStartupError(f"cannot use Kafka ({k.security_protocol}) at {bootstrap}: "
                                    f"{describe_client_error(exc, k)}") from None
        while True:
            try:
                existing = await _partition_counts(admin, [s.name for s in specs])
                if not settings.app.create_topics:
                    configs = await _cleanup_policies(admin, [s.name for s in specs
                                                              if s.name in existing])
                    problems = check_topics(specs, existing, configs)
                    if problems:
                        raise KafkaStartupError(
                            f"app.create_topics is false and {len(problems)} topic(s) at "
                            f"{bootstrap} are missing or differ: {'; '.join(problems)} "
                            f"(`vitals topics plan` prints the commands to create them)")
                    return
                missing = [s for s in specs if s.name not in existing]
                if missing:
                    brokers = len((await admin.describe_cluster()).get("brokers", []))
                    rf = settings.topics.replication_factor
                    if brokers and rf > brokers:
                        raise KafkaStartupError(
                            f"topics.replication_factor = {rf} but the cluster at {bootstrap} "
                            f"has {brokers} broker(s), so {len(missing)} missing topic(s) "
                            f"cannot be created: lower topics.replication_factor, or create "
                            f"the topics yourself (`vitals topics plan`) and set "
                            f"app.create_topics = false")
                    await _create(admin, missing, bootstrap, rf)
                return
            except KafkaStartupError:
                raise
            except KafkaError as exc:
                if time.monotonic() > deadline:
                    raise KafkaStartupError(
                        f"cannot create or check topics at {bootstrap}: "
                        f"{describe_client_error(exc, k)}") from None
                log.warning("topic check failed (%s), retrying", exc)
                await asyncio.sleep(0.5)
    finally:
        await admin.close()


async def _partition_counts(admin: AIOKafkaAdminClient, names: list[str]) -> dict[str, int]:
    """Topic -> partition count, for the topics of `names` that exist."""
    listed = set(await admin.list_topics())
    wanted = [n for n in names if n in listed]
    if not wanted:
        return {}
    out = {}
    for topic in await admin.describe_topics(wanted):
        if topic.get("error_code", 0) == 0:
            out[topic["topic"]] = len(topic["partitions"])
    return out


async def _cleanup_policies(admin: AIOKafkaAdminClient,
                            names: list[str]) -> dict[str, dict[str, str]]:
    """Topic -> {"cleanup.policy": ..., "max.message.bytes": ...} as the broker reports them."""
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    if not names:
        return {}
    try:
        responses = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, n,
                            configs={"cleanup.policy": None, "max.message.bytes": None})
             for n in names])
    except KafkaError as exc:
        log.warning("the broker did not describe topic configs (%s): cleanup.policy of the "
                    "existing topics not checked", exc)
        return {}
    out: dict[str, dict[str, str]] = {}
    for response in responses:
        for resource in response.to_object().get("resources", []):
            values = {c["config_names"]: c["config_value"]
                      for c in resource.get("config_entries", [])
                      if c.get("config_value") is not None}
            out[resource["resource_name"]] = values
    return out


async def _create(admin: AIOKafkaAdminClient, specs: list[NewTopic], bootstrap: str,
                  rf: int) -> None:
    for spec in specs:
        response: Any = await admin.create_topics([spec])
        for name, code, *rest in response.topic_errors:
            if code in (0, _TOPIC_EXISTS):
                continue
            message = rest[0] if rest and rest[0] else for_code(code).__name__
            if code == _INVALID_REPLICATION_FACTOR:
                raise KafkaStartupError(
                    f"the cluster at {bootstrap} refused replication factor {rf} for {name} "
                    f"({message}): set topics.replication_factor to at most its broker count")
            raise KafkaStartupError(f"cannot create topic {name} at {bootstrap}: {message} "
                                    f"(the principal needs CREATE on the cluster or topic)")
        log.info("created topic %s", spec.name)
