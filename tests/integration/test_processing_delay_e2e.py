"""vitals_processing_delay_seconds through the real worker: events whose customer records come
out are observed with a delay between 0 and the time the test itself saw them take."""
from __future__ import annotations

import time

from tests.integration.helpers import signup, usage


def test_processing_delay_is_observed_within_the_time_the_outputs_took(
        worker, produce, customers_out, period) -> None:
    count = "vitals_processing_delay_seconds_count"
    before_count = worker.metric(count)
    before_sum = worker.metric("vitals_processing_delay_seconds_sum")
    cid = f"delay-{int(period)}"
    sent_at = time.time()
    produce.send("events.signup", signup(cid, period + 5, segment="smb"))
    produce.send("events.usage", usage(cid, "u1", period + 10))
    produce.flush()
    customers_out.wait_for(lambda o: o.latest.get(cid, {}).get("activity", {}).get("mau") == 1)
    deadline = time.monotonic() + 10
    while worker.metric(count) <= before_count and time.monotonic() < deadline:
        time.sleep(0.2)
    took = time.time() - sent_at
    observations = worker.metric(count) - before_count
    assert observations >= 1, "no processing delay observed for a flush that published records"
    # Each observation is the oldest event of one partition's messages in one flush: at least
    # 0, and at most the time from the first send to now (plus the clocks' ms resolution).
    mean = (worker.metric("vitals_processing_delay_seconds_sum") - before_sum) / observations
    assert 0 <= mean <= took + 0.01, (mean, took)
    assert worker.metric("vitals_processing_delay_seconds_bucket", le="+Inf") >= \
        worker.metric(count)
