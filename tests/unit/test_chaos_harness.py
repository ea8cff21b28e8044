"""The chaos harness's runs share the input topics only."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from streams.settings import load_settings
from tests.chaos.harness import Run


def test_two_runs_share_no_topic_but_the_input() -> None:
    """A run that read another run's internal topics (feature contributions, catalog and
    partition watermarks, churn model) would be compared with itself in part: the reference's
    contributions would fill in for the disturbed run's, and a difference could not show."""
    def topics(name: str) -> dict[str, str]:
        run = Run("kafka://127.0.0.1:9", "127.0.0.1:9", "cx", name, 1, Path("/tmp"))
        settings = load_settings(env=run.env(0))
        return {f.name: getattr(settings.topics, f.name)
                for f in dataclasses.fields(settings.topics)
                if isinstance(getattr(settings.topics, f.name), str)}

    ref, other = topics("ref"), topics("s1")
    inputs = {"signup", "usage", "feature", "billing", "support"}
    assert {k for k in ref if ref[k] == other[k]} == inputs
