"""The business stage's delivery guarantees, by plain calls: resent movements count once, a
month turns final only on every partition's word, an older report after a restart is
ignored, revoked scopes leave nothing half-written, and a flush publishes what changed."""
from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson

from streams.business import BusinessAggregator, decode_scope, empty_summary, encode_scope
from streams.settings import load_settings

SETTINGS = load_settings(env={"VITALS_APP__PARTITIONS": "2", "VITALS_TIME__LATENESS_DAYS": "2"})


def ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def movement(cid: str, at: str, kind: str, old: float, new: float, event_id: str,
             scope: str = "all") -> dict[str, Any]:
    return {"t": "mv", "scope": scope, "cid": cid, "mv": {
        "kind": kind, "amount": new - old, "ts": ts(at), "old_mrr": old, "new_mrr": new,
        "month": at[:7], "event_id": event_id, "month_start_mrr": old}}


def part(p: int, wm: str, n: int = 1, scope: str = "all") -> dict[str, Any]:
    return {"t": "part", "scope": scope, "p": p, "wm": ts(wm),
            "sum": {**empty_summary(), "n": n}}


def flushed(stage: BusinessAggregator) -> dict[str, dict[str, Any]]:
    return {k: orjson.loads(v) for k, v in stage.flush().records}


class Changelog(dict):
    """A scope table as a restarted or new owner recovers it: what was written, encoded."""

    def __setitem__(self, scope: str, state: Any) -> None:
        super().__setitem__(scope, encode_scope(state))

    def get(self, scope: str, default: Any = None) -> Any:
        blob = super().get(scope)
        return default if blob is None else decode_scope(blob)

    def __getitem__(self, scope: str) -> Any:
        return decode_scope(super().__getitem__(scope))


def stage_on(store: Changelog | None = None) -> BusinessAggregator:
    return BusinessAggregator(SETTINGS, Changelog() if store is None else store)


def restarted(stage: BusinessAggregator) -> BusinessAggregator:
    """A new owner of the scopes, on the changelog the old one wrote."""
    return stage_on(stage.store)


def test_a_resent_movement_counts_once_also_after_a_restart() -> None:
    stage = stage_on()
    new = movement("c-1", "2026-03-02T10:00:00", "new", 0.0, 100.0, "e-1")
    stage.apply([new, new])
    assert flushed(stage)["all|2026-03"]["mrr_end"] == 100.0
    again = restarted(stage)
    again.apply([new, movement("c-2", "2026-03-05T10:00:00", "new", 0.0, 50.0, "e-2")])
    assert flushed(again)["all|2026-03"]["mrr_end"] == 150.0


def test_a_month_is_final_only_once_every_partition_is_past_its_end_and_the_lateness() -> None:
    stage = stage_on()
    stage.apply([movement("c-1", "2026-03-02T10:00:00", "new", 0.0, 100.0, "e-1"),
                 part(0, "2026-04-05T00:00:00")])
    march = flushed(stage)["all|2026-03"]
    assert march["final"] is False and march["as_of"] is None   # partition 1 not heard yet
    stage.apply([part(1, "2026-04-02T12:00:00")])   # within the 2 days of lateness
    march = flushed(stage)["all|2026-03"]          # its as_of moved (to its end): published
    assert march["final"] is False and march["as_of"] == "2026-04-01T00:00:00Z"
    stage.apply([part(1, "2026-04-02T18:00:00")])
    assert "all|2026-03" not in flushed(stage)     # March changed in nothing: not published
    assert stage.record(stage._load("all"), "2026-03")["final"] is False
    stage.apply([part(1, "2026-04-03T00:00:00")])
    out = flushed(stage)
    assert out["all|2026-03"]["final"] is True
    assert out["all|2026-03"]["as_of"] == "2026-04-01T00:00:00Z"   # capped at the month's end
    assert out["all|2026-04"]["final"] is False


def test_an_older_report_resent_after_a_restart_does_not_move_the_scope_back() -> None:
    stage = stage_on()
    stage.apply([movement("c-1", "2026-03-02T10:00:00", "new", 0.0, 100.0, "e-1"),
                 part(0, "2026-04-05T00:00:00"), part(1, "2026-04-05T00:00:00")])
    assert flushed(stage)["all|2026-03"]["final"] is True
    again = restarted(stage)
    again.apply([part(1, "2026-03-20T00:00:00")])
    state = again._load("all")
    assert again.as_of(state) == ts("2026-04-05T00:00:00")
    assert again.record(state, "2026-03")["final"] is True


def test_a_correction_to_a_closed_month_is_carried_into_the_open_months() -> None:
    stage = stage_on()
    stage.apply([movement("c-1", "2026-01-10T10:00:00", "new", 0.0, 100.0, "e-1"),
                 part(0, "2026-06-05T00:00:00"), part(1, "2026-06-05T00:00:00")])
    flushed(stage)                       # January leaves the open books (3 months are kept)
    state = stage.store["all"]
    assert "2026-01" in state.closed and "2026-01" not in state.books
    stage.apply([movement("c-2", "2026-01-20T10:00:00", "new", 0.0, 40.0, "e-2")])
    out = flushed(stage)
    assert "all|2026-01" not in out                     # a closed month is not reopened
    assert {k: v["mrr_start"] for k, v in out.items()} == {
        "all|2026-04": 140.0, "all|2026-05": 140.0, "all|2026-06": 140.0}


def test_revoked_scopes_drop_their_unflushed_changes_and_the_new_owner_replays_them() -> None:
    stage = stage_on()
    stage.apply([movement("c-1", "2026-03-02T10:00:00", "new", 0.0, 100.0, "e-1"),
                 movement("c-9", "2026-03-02T10:00:00", "new", 0.0, 7.0, "e-9",
                          scope="segment:smb")])
    flushed(stage)
    late = movement("c-2", "2026-03-03T10:00:00", "new", 0.0, 50.0, "e-2")
    stage.apply([late])
    stage.revoke({"all"})
    assert "all" not in stage.owned
    assert stage.flush().records == []                 # nothing of the revoked change
    owner = restarted(stage)
    owner.apply([late])                                 # not acknowledged: read again
    assert flushed(owner)["all|2026-03"]["mrr_end"] == 150.0      # counted once


def test_a_flush_publishes_the_changed_months_once() -> None:
    stage = stage_on()
    stage.apply([movement("c-1", "2026-03-02T10:00:00", "new", 0.0, 100.0, "e-1"),
                 movement("c-1", "2026-03-20T10:00:00", "expansion", 100.0, 150.0, "e-2")])
    out = stage.flush()
    assert [key for key, _ in out.records] == ["all|2026-03"]
    assert [scope for scope, _ in out.changelog] == ["all"]
    again = stage.flush()
    assert again.records == [] and again.changelog == []


def test_a_months_last_record_is_as_of_its_end_whenever_the_next_month_opened() -> None:
    """The next month opened (a movement of a fast partition) before the slow partition's
    reports passed the month's end: the month's own record must still move to as of its end,
    as it does when the reports come first (make chaos, seed 1, burst + SIGKILL: a February
    left as of 2026-02-19)."""
    def last_february(next_month_first: bool) -> dict[str, Any]:
        stage = stage_on()
        stage.apply([movement("c-1", "2026-02-02T10:00:00", "new", 0.0, 100.0, "e-1"),
                     part(0, "2026-02-19T00:00:00"), part(1, "2026-02-19T00:00:00")])
        march = movement("c-2", "2026-03-01T10:00:00", "new", 0.0, 50.0, "e-2")
        reports = [part(0, "2026-03-01T12:00:00"), part(1, "2026-03-01T12:00:00")]
        records = {}
        for batch in ([march], reports) if next_month_first else (reports, [march]):
            stage.apply(batch)
            records.update(flushed(stage))
        return records["all|2026-02"]

    assert last_february(True) == last_february(False)
    assert last_february(True)["as_of"] == "2026-03-01T00:00:00Z"
