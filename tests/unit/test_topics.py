"""streams.topics: every topic with its replication factor, Faust's changelogs included; the
check of existing topics; the `vitals topics plan` commands."""
from __future__ import annotations

import shlex

import pytest

from streams.settings import load_settings
from streams.topics import TABLES, changelog_topic, check_topics, plan_commands, topic_specs


def test_every_topic_gets_the_replication_factor() -> None:
    s = load_settings(env={"VITALS_TOPICS__REPLICATION_FACTOR": "3"})
    specs = topic_specs(s)
    assert {spec.replication_factor for spec in specs} == {3}
    names = [spec.name for spec in specs]
    assert len(names) == len(set(names))
    assert set(s.topics.input_topics()) <= set(names)
    assert set(s.topics.output_topics()) <= set(names)
    for table in ("customers", "clocks", "scopes", "churn_learner", "features"):
        assert f"vitals-{table}-changelog" in names


def test_changelogs_match_the_faust_tables_of_the_app() -> None:
    """The list in topics.py must name exactly the changelogs Faust declares for build_app."""
    from streams.app import build_app

    s = load_settings(env={"VITALS_APP__ID": '"appx"', "VITALS_APP__PARTITIONS": "6"})
    service = build_app(s, "kafka://127.0.0.1:9092")
    specs = {spec.name: spec for spec in topic_specs(s)}
    faust_changelogs = {}
    for table in service.app.tables.values():
        topic = table.changelog_topic
        faust_changelogs[topic.get_topic_name()] = (topic.partitions, topic.compacting)
    assert set(faust_changelogs) == {changelog_topic("appx", t) for t in TABLES}
    for name, (partitions, compacting) in faust_changelogs.items():
        assert compacting
        assert specs[name].num_partitions == partitions
        assert specs[name].topic_configs == {"cleanup.policy": "compact"}


def test_agent_topics_of_the_app_are_all_in_the_list() -> None:
    from streams.app import build_app

    s = load_settings(env={})
    service = build_app(s, "kafka://127.0.0.1:9092")
    names = {spec.name for spec in topic_specs(s)}
    for agent in service.app.agents.values():
        for topic in agent.channel.topics:
            assert topic in names, topic


def test_plan_prints_a_create_command_per_topic() -> None:
    s = load_settings(env={"VITALS_TOPICS__REPLICATION_FACTOR": "3"})
    lines = plan_commands(s, "kafka-1:9093", command_config="client.properties")
    specs = topic_specs(s)
    assert len(lines) == len(specs)
    by_topic = {}
    for line in lines:
        argv = shlex.split(line)
        assert argv[0] == "kafka-topics.sh" and "--create" in argv
        assert argv[argv.index("--bootstrap-server") + 1] == "kafka-1:9093"
        assert argv[argv.index("--command-config") + 1] == "client.properties"
        assert argv[argv.index("--replication-factor") + 1] == "3"
        by_topic[argv[argv.index("--topic") + 1]] = argv
    customer = by_topic["vitals.customer"]
    assert customer[customer.index("--partitions") + 1] == "4"
    assert "cleanup.policy=compact" in customer
    model = by_topic["vitals.internal.churn-model"]
    assert "max.message.bytes=8388608" in model and model[model.index("--partitions") + 1] == "1"
    assert not any(a.startswith("cleanup.policy") for a in by_topic["events.usage"])
    assert "cleanup.policy=compact" in by_topic["vitals-customers-changelog"]


def test_topics_plan_command(capsys: pytest.CaptureFixture[str],
                             monkeypatch: pytest.MonkeyPatch) -> None:
    from streams.cli import main

    monkeypatch.setenv("VITALS_TOPICS__REPLICATION_FACTOR", "2")
    assert main(["topics", "plan", "--bootstrap-server", "k:9092"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("# 21 topics") and "replication factor 2" in out[0]
    assert all("--replication-factor 2" in line for line in out[1:])
    assert len(out) == 22


def test_check_lists_missing_and_different_topics() -> None:
    s = load_settings(env={})
    specs = topic_specs(s)
    existing = {spec.name: spec.num_partitions for spec in specs}
    assert check_topics(specs, existing) == []
    del existing["vitals.alerts"]
    existing["events.usage"] = 1
    problems = check_topics(specs, existing, {
        "vitals.customer": {"cleanup.policy": "delete"}, "vitals.business": {},
        "vitals.internal.churn-model": {"cleanup.policy": "compact",
                                        "max.message.bytes": "1048588"},
        "vitals.internal.feature-catalog": {"cleanup.policy": "compact,delete"},
        "vitals.deadletter": {"cleanup.policy": "delete", "max.message.bytes": "1048588"}})
    assert problems == [
        "events.usage has 1 partitions, needs 4",
        "vitals.internal.churn-model has max.message.bytes=1048588, needs 8388608 or more",
        "vitals.internal.feature-catalog has cleanup.policy=compact,delete, needs compact",
        "vitals.customer has cleanup.policy=delete, needs compact",
        "vitals.alerts missing (partitions: 4)"]
