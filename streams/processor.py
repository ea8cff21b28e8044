"""The customer stage: applies batches of validated events to per-customer state.

Kept free of Faust so that its logic is tested by plain calls; `streams/agents.py` feeds it
from the stream and `streams/delivery.py` sends its flushes to the changelog and the topics.
Writes are coalesced: a batch only marks customers dirty, and `flush()` (once per emit
interval) hands back one changelog record and at most one output record per customer.
"""
from __future__ import annotations

import copy
import functools
import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson

from models.activity import DAY_SECONDS, day_of, last_day
from models.features import (
    BASE_HISTORY_DAYS,
    FeatureContribution,
    ReleaseInputs,
    SentContribution,
    after_release_fix_day,
)
from models.revenue import CHURN, SUBSCRIPTION_KINDS, Movement, month_of, monthly_churn_rate
from streams import events as ev
from streams.batches import AHEAD_OF_INPUT
from streams.business import add_to_summary, empty_summary
from streams.churn import ChurnScorer, example_value, remember_mrr, snapshot
from streams.deadletter import deadletter_value, raw_excerpt
from streams.evaluate import Evaluation, Evaluator
from streams.exporters.metrics import Metrics, gauge, watermark_gauges
from streams.quarantine import quarantine
from streams.settings import Settings, eligibility_group
from streams.state import CustomerState, decode_state, encode_state
from streams.time import AHEAD, FUTURE, LATE, TOO_LATE, PartitionClock, TimePolicy

log = logging.getLogger(__name__)
WINDOWED = frozenset({"usage", "feature"})
FEATURE_BACKFILL_DAYS = 30   # at most this many skipped days get feature contributions
MAX_HELD_PER_CUSTOMER = 1000  # events held ahead of the watermark; more are future_ts
MONTH_ENDS_KEPT = 2           # month-end shares a customer record keeps (a replay's reach)
AFTER_MIDNIGHT = 0.001        # seconds: the as_of of a record of an event at 00:00:00
# Catalog entries that carry a partition's watermark instead of a feature: their key is longer
# than any feature name may be (events.TEXT_MAX_CHARS), so no event can write over them.
PROGRESS_KEY = "~" * (ev.TEXT_MAX_CHARS + 1) + "watermark:"
# A partition's first time of a feature: FIRST_KEY + "<partition>:<feature>". One key per
# partition, so that compaction (which keeps the last record of a key) never drops one
# partition's earlier time for another's later one, which a restarted worker, knowing nothing
# yet, publishes from its restored clock.
FIRST_KEY = "~" * (ev.TEXT_MAX_CHARS + 1) + "first:"


def first_key(partition: int, feature: str) -> str:
    return f"{FIRST_KEY}{partition}:{feature}"
# Event times of features are kept for a partition that has not reported its watermark yet at
# most this many days longer (a bound on state, should one never report).
UNREPORTED_KEEP_DAYS = 60



@dataclass
class Flush:
    """What one flush hands to the transport, in the order it must be sent."""
    changelog: list[tuple[int, str, CustomerState]] = field(default_factory=list)
    clocks: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    records: list[tuple[str, bytes]] = field(default_factory=list)
    alerts: list[tuple[str, bytes]] = field(default_factory=list)
    business: list[tuple[str, bytes]] = field(default_factory=list)   # key = scope
    # Labelled churn snapshots, one message per chunk: delivered before the changelog.
    examples: list[bytes] = field(default_factory=list)
    features: list[tuple[str, bytes]] = field(default_factory=list)   # key = feature
    catalog: list[tuple[str, bytes]] = field(default_factory=list)    # feature first seen


class CloseSummary(NamedTuple):
    """What a customer adds to its partition's business aggregates, as of its last close.

    Kept in its record: after a restart the summaries are rebuilt from it, not from a new
    evaluation of a state that may already hold events of the day after that close."""
    segment: str
    score: float | None
    grade: str | None
    ttv_days: float | None
    succeeded: bool
    eligible: bool
    cac: float | None

    @classmethod
    def of(cls, e: Evaluation) -> CloseSummary:
        return cls(e.segment, e.score, e.grade, e.ttv_days, e.succeeded, e.eligible, e.cac)


def _add_share(scopes: dict[str, dict[str, Any]], share: Evaluation | CloseSummary,
               sign: int) -> None:
    """Add (1) or take away (-1) one customer's share in scope all and in its segment's."""
    for scope in ("all", f"segment:{share.segment}"):
        add_to_summary(scopes.setdefault(scope, empty_summary()), share, sign)


@functools.lru_cache(maxsize=1024)
def _month_of_day(day: int) -> str:
    """``month_of`` a day's start, cached: it is asked at every evaluation."""
    return month_of(day * DAY_SECONDS)


def in_day_as_of(state: CustomerState) -> float:
    """The event time an in-day record is valid for: the customer's latest event, or its last
    day close if that is later. Not the partition's watermark at the flush, which depends on
    when the flush happens: the record of the same events would then differ between runs."""
    closed = -1.0 if state.closed_day is None else state.closed_day * DAY_SECONDS
    last = -1.0 if state.last_ts is None else state.last_ts
    if last >= closed and last % DAY_SECONDS == 0:
        # An event at exactly 00:00:00 belongs to the day it opens; a record stamped with that
        # midnight would read as the close of the day before, without it.
        return last + AFTER_MIDNIGHT
    return max(closed, last)


class CustomerProcessor:
    def __init__(self, settings: Settings, store: MutableMapping[str, CustomerState],
                 clock_store: MutableMapping[str, dict[str, Any]], metrics: Metrics,
                 partition_of: Callable[[str], int],
                 wall_clock: Callable[[], float] | None = time.time) -> None:
        self.settings = settings
        self.store = store
        self.clock_store = clock_store
        self.metrics = metrics
        self.partition_of = partition_of
        self.wall_clock = wall_clock
        # States changed since the last flush. A store that serialises (RocksDB) hands out a
        # fresh copy on every read, so changes live here until flush() writes them back.
        self.live: dict[str, CustomerState] = {}
        self.policy = TimePolicy.from_days(settings.time.lateness_days,
                                           settings.time.dedup_horizon_days,
                                           settings.time.max_skew_days)
        self.window = settings.activity.window_days
        self.segment_wait = settings.revenue.segment_wait_days * DAY_SECONDS
        self.evaluator = Evaluator(settings)
        topics = settings.topics
        self.topic_of = {fam: name for name, fam in topics.input_topics().items()}
        self.clocks: dict[int, PartitionClock] = {}
        self.members: dict[int, set[str]] = defaultdict(set)
        self.dirty: dict[str, int] = {}
        self.to_emit: dict[str, int] = {}
        self.dirty_clocks: set[int] = set()
        # Last evaluation of each customer, for the gauges (no customer id ever in a label).
        self.contrib: dict[str, Evaluation] = {}
        # Evaluation of each customer at its last day close: its share of the summaries.
        self.summarised: dict[str, Evaluation | CloseSummary] = {}
        self.alerts_out: list[tuple[str, bytes]] = []
        self.closed_records: list[tuple[str, bytes]] = []   # day-close records, in order
        self.released_deadletters: list[tuple[bytes | None, bytes]] = []
        # Per partition: events a replay skipped that were held the first time and have been
        # released since (their customers' records hold them applied). At their release they
        # move the clock as they did then, and are applied no more (_skip_applied).
        self.replayed_held: dict[int, list[tuple[str, dict[str, Any]]]] = {}
        self.business_out: list[tuple[str, bytes]] = []
        # Per customer partition and scope: a summary of its customers for vitals.business.
        self.summaries: dict[int, dict[str, dict[str, Any]]] = {}
        self.dirty_summaries: set[int] = set()
        # Segment scope -> month -> (customers_churned, customers_start), read from
        # vitals.business by every worker (learn_business): the churn rate behind a customer's
        # CLV, the same whichever worker owns the scope, and as of the customer's own time.
        self.churn_samples: dict[str, dict[str, tuple[int, int]]] = {}
        self._rates: dict[tuple[str, str], float] = {}   # (scope, month) -> rate, a cache
        # Features first seen per partition, kept with the partition's clock.
        self.catalog: dict[str, float] = {}
        self.days_closed = 0
        self.scorer = ChurnScorer(settings.churn)
        self.examples_out: list[dict[str, Any]] = []
        self.features_out: list[tuple[str, bytes]] = []
        self.catalog_out: dict[str, float] = {}
        self.eligibility_groups = {eligibility_group(rule): rule for rule in
                                   [None, *settings.features.eligible.values()]}
        self.group_of = {f: eligibility_group(rule)
                         for f, rule in settings.features.eligible.items()}
        self.base_sent: set[tuple[int, str]] = set()   # (partition, feature) sent with "b"
        # Event times are kept this many days beyond the window: [R, R+30d) is fixed at the
        # close of R + 30d + lateness, and counted from the events of day(R) on.
        self.after_margin = math.ceil(settings.time.lateness_days) + 3
        # Every customer partition's watermark as last published (the catalog topic), this
        # worker's included: the after-release event times are kept from the slowest on.
        self.progress: dict[int, float] = {}
        self.progress_out: dict[int, float] = {}
        self.recount: set[str] = set()   # features whose release was learnt or moved earlier
        # Each partition's watermark as its clock was last written (or restored): what the
        # customers' records are pruned by (_prune).
        self.written_wm: dict[int, float | None] = {}
        metrics.add_gauge_source(self.gauges)

    # -- events ---------------------------------------------------------------------------

    def apply(self, partition: int, batch: Iterable[dict[str, Any]], offset: int | None = None
              ) -> list[tuple[bytes | None, bytes]]:
        """Apply one batch of one partition; returns dead-letter (key, value) pairs to send.

        `offset` is the batch's position in the internal topic. A customer whose record already
        holds that position skips the batch's events (a replay after a crash or a hand-over):
        they are neither counted again nor judged late. The clock still moves with them, as
        it did the first time.
        """
        clock = self._clock(partition)
        if offset is not None and clock.applied is not None and offset <= clock.applied:
            # Read again because the input commit lagged the state: the clock and every
            # customer's record already hold this message (records are written before the
            # clock), and judged against the later clock its events would move it again.
            return self._end_batch(partition, [], None, [])
        return self._apply(partition, clock, batch, offset)

    def _apply(self, partition: int, clock: PartitionClock, batch: Iterable[dict[str, Any]],
               offset: int | None) -> list[tuple[bytes | None, bytes]]:
        deadletters: list[tuple[bytes | None, bytes]] = []
        policy = self.policy
        # Counted once per batch: a Prometheus counter takes a lock per increment.
        tally: dict[tuple[str, str], int] = defaultdict(int)
        live = self.live
        now = None if self.wall_clock is None else self.wall_clock()
        touched: list[CustomerState] = []
        for event in batch:
            family = event["family"]
            ts = event["ts"]
            cid = event["customer_id"]
            state = live.get(cid)
            if state is None:
                state = self._attach_stored(cid)
            if offset is not None and state is not None and state.offset is not None \
                    and offset <= state.offset:
                self._skip_applied(partition, clock, state, event, now)
                continue
            if offset is not None and (src := event.get("src")) is not None \
                    and not clock.read_up_to(src):
                # Forwarded again by an ingest that died before committing its input: a
                # duplicate, whatever its age (not judged too late).
                tally[(family, "duplicate")] += 1
                continue
            windowed = family in WINDOWED
            where = clock.classify(ts, windowed, policy, now)
            if where is FUTURE or where is TOO_LATE:
                deadletters.append(self._reject(event, where, clock))
                continue
            if state is None:
                state = live[cid] = self.evaluator.attach(CustomerState(cid))
            if where is AHEAD or (clock.watermark is None and AHEAD_OF_INPUT in event):
                if len(state.held) >= MAX_HELD_PER_CUSTOMER:
                    deadletters.append(self._reject(event, FUTURE, clock))
                    continue
                touched.append(state)   # its record holds the event: a replay skips it
                self._hold(partition, clock, state, event)
                continue
            if clock.streak:
                clock.streak.clear()   # an event in step with the watermark breaks the run
                clock.run_events = 0
            if state.events == 0:
                self.members[partition].add(cid)
            # Days close before the event that enters a new day is applied: a day close sees
            # the complete days up to it and nothing of the day after.
            self._advance(partition, clock, ts)
            h = event["h"]
            seen = state.seen
            if seen.seen(h):
                tally[(family, "duplicate")] += 1
                continue
            if windowed:
                seen.add_windowed(h, day_of(ts))
            else:
                seen.add_lifetime(h)
            try:
                self._apply_event(state, event, partition)
            except Exception as exc:  # noqa: BLE001 - any fault of one record: quarantined
                deadletters.append(self._quarantine(event, exc))
                continue
            touched.append(state)
            self.dirty[cid] = partition
            self.to_emit[cid] = partition
            tally[(family, "late" if where is LATE else "accepted")] += 1
        for (family, outcome), n in tally.items():
            self.metrics.count(family, outcome, n)
        return self._end_batch(partition, touched, offset, deadletters)

    def _skip_applied(self, partition: int, clock: PartitionClock, state: CustomerState,
                      event: dict[str, Any], now: float | None) -> None:
        """An event the customer's record already holds (a replay): the clock moves with it as
        it did the first time. In step, it advances the watermark and tells the clock its
        feature; held then, it joins the run of events ahead and, released since, moves the
        clock at its release; dead-lettered as a clock error, it moved nothing."""
        ts = event["ts"]
        family = event["family"]
        where = clock.classify(ts, family in WINDOWED, self.policy, now)
        if where is FUTURE or where is TOO_LATE:
            pass   # dead-lettered then
        elif where is AHEAD or (clock.watermark is None and AHEAD_OF_INPUT in event):
            # Held then: the watermark did not move, but the event joined the run of events
            # ahead, which may have made the partition jump a quiet gap (_hold).
            if all(e["h"] != event["h"] for e in state.held):   # released since
                self.replayed_held.setdefault(partition, []).append((state.customer_id, event))
            if clock.watermark is not None:
                self._ahead_run(partition, clock, state.customer_id, ts)
        else:
            if clock.streak:
                clock.streak.clear()   # in step with the watermark: it broke the run then
                clock.run_events = 0
            self._advance(partition, clock, ts)
            if family == "feature":
                # Learnt here, at the position it was learnt the first time: a close replayed
                # before it must not count it (a late event's feature was unknown there).
                self._see_feature(event["feature"], ts, partition)
        if (src := event.get("src")) is not None:
            clock.read_up_to(src)

    def _attach_stored(self, cid: str) -> CustomerState | None:
        """A stored customer, made live (None for a customer never seen)."""
        state = self.store.get(cid)
        if state is not None:
            self.live[cid] = state = self.evaluator.attach(state)
        return state

    def _end_batch(self, partition: int, touched: list[CustomerState], offset: int | None,
                   deadletters: list[tuple[bytes | None, bytes]]
                   ) -> list[tuple[bytes | None, bytes]]:
        if offset is not None:
            for state in touched:  # after the batch: its later events must not skip
                state.offset = offset
            self.clocks[partition].applied = offset
            self.dirty_clocks.add(partition)
        if self.released_deadletters:
            deadletters += self.released_deadletters
            self.released_deadletters = []
        return deadletters

    def _hold(self, partition: int, clock: PartitionClock, state: CustomerState,
              event: dict[str, Any]) -> None:
        """Keep an event far ahead of the watermark with its customer, unapplied.

        One customer's wrong clock must not move the partition's time (every other customer's
        events would turn late). When AHEAD_QUORUM customers hold events ahead, the partition
        did jump a quiet gap: the watermark moves to the quorum's time. Held events are
        applied when the watermark reaches them (`_advance`).
        """
        cid = state.customer_id
        raw = event.get("raw")
        if isinstance(raw, bytes):   # kept with the customer's record (JSON): as text
            event["raw"] = raw_excerpt(raw)
        state.held.append(event)
        clock.ahead[cid] = min(event["ts"], clock.ahead.get(cid, event["ts"]))
        self.dirty[cid] = partition
        if clock.watermark is not None:
            self._ahead_run(partition, clock, cid, event["ts"])
        # else: ahead of its input partition, and this partition has no time yet. Keyless or
        # misrouted, it can come through another worker's ingest before any event of this
        # partition: its time starts with the first event in step with its input.

    def _ahead_run(self, partition: int, clock: PartitionClock, cid: str, ts: float) -> None:
        """An event ahead joins the partition's unbroken run of them; a run of AHEAD_QUORUM
        customers is a quiet gap the partition jumped: the watermark moves to the run's time."""
        clock.streak[cid] = min(ts, clock.streak.get(cid, ts))
        self.dirty_clocks.add(partition)
        clock.run_events += 1
        jump = clock.quorum_time(len(self.members[partition] | clock.streak.keys()))
        if jump is not None:
            runners = set(clock.streak)
            clock.streak.clear()
            clock.run_events = 0
            self._advance(partition, clock, jump)
            # The events the run's customers hold within the skew of the new watermark are in
            # step with it, as if they came now: applied in time order, the watermark moving
            # with them. Not other customers' bad clocks held before the gap: one a day
            # ahead took the watermark past the run's day, which closed before the rest of
            # the day came (a day-close with half its customers' events missing).
            limit = jump + self.policy.max_skew
            reach = [e["ts"] for c in list(clock.ahead) if c in runners
                     for e in self._load(c).held if e["ts"] <= limit]
            reach += [e["ts"] for c, e in self.replayed_held.get(partition, ())
                      if c in runners and e["ts"] <= limit]   # a replay: released the first time
            if reach:
                self._advance(partition, clock, max(reach))

    def _release(self, partition: int, clock: PartitionClock) -> None:
        """Apply the held events the watermark has reached."""
        assert clock.watermark is not None
        limit = clock.watermark
        due: list[dict[str, Any]] = []
        for cid in [c for c, t in clock.ahead.items() if t <= limit]:
            state = self._load(cid)
            keep = [e for e in state.held if e["ts"] > limit]
            due += [e for e in state.held if e["ts"] <= limit]
            state.held = keep
            if keep:
                clock.ahead[cid] = min(e["ts"] for e in keep)
            else:
                del clock.ahead[cid]
            self.dirty[cid] = partition
        replayed = self._replayed_due(partition, limit)
        due.sort(key=lambda e: e["ts"])
        if not replayed:
            self.released_deadletters += self.apply(partition, due)
            return
        # In time order, as the first release applied them all.
        for _ts, kind, item in sorted([(e["ts"], 1, e) for e in due] + replayed,
                                     key=lambda x: (x[0], x[1])):
            if kind == 1:
                self.released_deadletters += self.apply(partition, [item])
            else:
                cid, event = item
                self._skip_applied(partition, clock, self._load(cid), event, None)

    def _replayed_due(self, partition: int, limit: float
                      ) -> list[tuple[float, int, Any]]:
        pending = self.replayed_held.get(partition)
        if not pending:
            return []
        keep = [(c, e) for c, e in pending if e["ts"] > limit]
        if keep:
            self.replayed_held[partition] = keep
        else:
            del self.replayed_held[partition]
        return [(e["ts"], 0, (c, e)) for c, e in pending if e["ts"] <= limit]

    def _advance(self, partition: int, clock: PartitionClock, ts: float) -> None:
        """Move the partition's watermark to ts, closing the days it leaves behind.

        A held event is applied when the watermark reaches its time, after the closes of the
        days before it and before those after it: where it would have been applied had it
        arrived in step. Whether an event was held depends on what the ingest had read when it
        came (its input partition's level starts anew after a restart), and how far one step
        of the watermark goes depends on which events came between; neither may change a
        close.
        """
        if clock.watermark is None:   # the partition's first time: held events up to it apply
            self._step(partition, clock, ts)
            if clock.ahead or partition in self.replayed_held:
                self._release(partition, clock)
            return
        if ts <= clock.watermark:
            return
        while clock.ahead or partition in self.replayed_held:
            due = self._next_held(partition, clock)
            if due is None or due > ts:
                break
            if due > clock.watermark:
                self._step(partition, clock, due)
            self._release(partition, clock)
        self._step(partition, clock, ts)   # every held event left is later than ts

    def _next_held(self, partition: int, clock: PartitionClock) -> float | None:
        """The earliest time of an event held in the partition (applied or replayed)."""
        times = list(clock.ahead.values())
        times += [e["ts"] for _, e in self.replayed_held.get(partition, ())]
        return min(times) if times else None

    def _step(self, partition: int, clock: PartitionClock, ts: float) -> None:
        entered = clock.advance(ts)    # into a day not yet closed
        self.dirty_clocks.add(partition)
        if clock.closed_day is None:
            clock.start()
        elif entered:
            self._close_day(partition, clock)

    def _apply_event(self, state: CustomerState, event: dict[str, Any], partition: int) -> None:
        ts = event["ts"]
        state.events += 1
        if state.first_ts is None or ts < state.first_ts:
            state.first_ts = ts
        if state.last_ts is None or ts > state.last_ts:
            state.last_ts = ts
        family = event["family"]
        if family in WINDOWED:
            self._apply_activity(state, event, ts, partition)
        elif family == "support":
            _apply_support(state, event, ts)
        elif family == "signup":
            self._apply_signup(state, event, ts)
        elif family == "billing":
            self._apply_billing(state, event, ts)

    def _apply_activity(self, state: CustomerState, event: dict[str, Any], ts: float,
                        partition: int) -> None:
        """A usage or feature event: activity, adoption and onboarding."""
        day = day_of(ts)
        user = event["user_id"]
        state.activity.record(day, user)
        if event["family"] == "usage":
            state.feature_use.on_event(ts, day, user)
            state.onboarding.on_usage(event["action"], ts)
            return
        feature = event["feature"]
        state.feature_use.on_event(ts, day, user, feature)
        state.onboarding.on_feature(ts)
        if state.features.get(feature, -1) < day:
            state.features[feature] = day
        self._see_feature(feature, ts, partition)

    def _apply_signup(self, state: CustomerState, event: dict[str, Any], ts: float) -> None:
        state.onboarding.on_signup(ts)
        if state.signup_ts is None or ts < state.signup_ts:
            state.signup_ts = ts
        if state.signup_seen_ts is None or ts >= state.signup_seen_ts:
            # The newest signup event describes the account; the oldest dates it.
            state.signup_seen_ts = ts
            state.segment = event["segment"]
            if state.pending_mv:
                self._release_movements(state, state.segment)
            state.plan = event.get("plan")
            state.seats = event.get("seats")
            state.cac = event.get("cac")
            state.channel = event.get("channel")

    def _apply_billing(self, state: CustomerState, event: dict[str, Any], ts: float) -> None:
        kind = event["type"]
        state.onboarding.on_billing(kind, ts)
        if kind in SUBSCRIPTION_KINDS:
            mv = state.revenue.apply_subscription(ts, event["event_id"], kind, event["mrr"])
            if mv is not None:
                state.paid.on_mrr(mv.ts, mv.new_mrr)
                self._movement(state, mv)
        if kind in ("payment_succeeded", "payment_failed"):
            state.support.on_payment(ts, kind == "payment_succeeded")
        if event.get("seats"):
            state.seats = event["seats"]

    def _movement(self, state: CustomerState, mv: Movement) -> None:
        """To the business stage, once per scope; the event_id lets it drop a resent one.

        Without a segment yet (the signup can arrive after billing events read by another
        ingest worker), the segment's share waits in the customer's record for the signup,
        at most the allowed lateness; after that it is booked under segment:unknown.
        """
        self._send_movement("all", state.customer_id, mv.to_dict())
        if mv.kind == CHURN:
            cid = state.customer_id
            book = state.churn.book
            self.examples_out.extend(example_value(cid, x) for x in book.on_churn(day_of(mv.ts)))
            # Snapshots taken after the churn day exist only because its event came late.
            book.discard_from(day_of(mv.ts) + 1)
            state.churn.last = None  # a churned customer is not scored until it pays again
        if state.segment is None:
            state.pending_mv.append(mv.to_dict())
        else:
            self._send_movement(f"segment:{state.segment}", state.customer_id, mv.to_dict())

    def _release_movements(self, state: CustomerState, segment: str) -> None:
        for mv in state.pending_mv:
            self._send_movement(f"segment:{segment}", state.customer_id, mv)
        state.pending_mv = []

    def _send_movement(self, scope: str, cid: str, mv: dict[str, Any]) -> None:
        self.business_out.append((scope, orjson.dumps(
            {"t": "mv", "scope": scope, "cid": cid, "mv": mv})))

    def _see_feature(self, feature: str, ts: float, partition: int) -> None:
        clock = self.clocks[partition]
        first = clock.features.get(feature)
        if first is None or ts < first:
            clock.features[feature] = ts
            self.dirty_clocks.add(partition)
            self.catalog_out[first_key(partition, feature)] = ts
        self._learn_feature(feature, ts)

    def _reject(self, event: dict[str, Any], where: str, clock: PartitionClock
                ) -> tuple[bytes | None, bytes]:
        family = event["family"]
        wm = clock.watermark or 0.0
        if where is FUTURE:
            code = ev.FUTURE_TS
            now = None if self.wall_clock is None else self.wall_clock()
            if now is not None and event["ts"] > now + self.policy.max_skew:
                detail = (f"ts is {(event['ts'] - now) / 3600:.1f} h ahead of the wall clock, "
                          f"over the allowed skew of {self.policy.max_skew / 3600:.1f} h")
            else:
                detail = (f"ts is {(event['ts'] - wm) / 3600:.1f} h ahead of the watermark and "
                          f"its customer already holds {MAX_HELD_PER_CUSTOMER} events that far "
                          "ahead")
        else:
            code = ev.TOO_LATE
            detail = (f"{family} event is {(wm - event['ts']) / 3600:.1f} h behind the watermark, "
                      f"beyond the dedup horizon of {self.policy.dedup_horizon / 3600:.1f} h; "
                      "it cannot be checked for duplicates (replay it if it is genuine)")
        self.metrics.deadletter(family, code)
        src = event.get("src") or (self.topic_of.get(family, family), None, None)
        key = event.get("key")
        value = deadletter_value(src[0], src[1], src[2], code, detail, event.get("raw"))
        return (None if key is None else key.encode()), value

    def _quarantine(self, event: dict[str, Any], exc: Exception) -> tuple[bytes | None, bytes]:
        family = event["family"]
        self.metrics.quarantined(family)
        src = event.get("src") or (self.topic_of.get(family, family), None, None)
        key = event.get("key")
        value = quarantine(src[0], src[1], src[2], exc, event.get("raw"))
        return (None if key is None else key.encode()), value

    def _close_day(self, partition: int, clock: PartitionClock) -> None:
        """Day closes of every day the watermark left behind (the last FEATURE_BACKFILL_DAYS
        of a longer jump): each is published, judged by the alert rules and snapshotted."""
        previous = clock.closed_day
        day = clock.close_day()
        first = day if previous is None else max(previous + 1, day - FEATURE_BACKFILL_DAYS + 1)
        for as_of_day in range(first, day + 1):
            self._close_customers(partition, as_of_day)
        # The feature stage needs each partition's counts of every closed day (the day 30 days
        # after a release may be one that a jump skipped).
        start = day - 1 if previous is None else max(previous, day - FEATURE_BACKFILL_DAYS)
        for closed in range(start, day):
            self._features_day(partition, closed)

    def _close_customers(self, partition: int, day: int) -> None:
        """Every customer of the partition evaluated as of `day` 00:00, day D-1 being complete.

        This is what makes health decay without events, stores the day's score for trend_7d,
        and lets alerts such as ttv_exceeded fire in event time, also on a replay.
        """
        self.days_closed += 1
        as_of = float(day * DAY_SECONDS)
        ended = month_of(as_of - DAY_SECONDS)
        month_end = month_of(as_of) != ended
        ahead: list[str] = []
        for cid in sorted(self.members[partition]):  # churn examples in one order
            state = self._load(cid)
            if state.closed_day is not None and state.closed_day >= day:
                ahead.append(cid)  # restored ahead of the clock: this close already ran for it
                continue
            state.closed_day = day
            state.support.prune(day - 1)       # the close of day - 1: its windows end there
            result = self._evaluate(cid, partition, state, as_of)
            state.summary = list(CloseSummary.of(result))
            if month_end:
                state.month_ends[ended] = state.summary
                for old in sorted(state.month_ends)[:-MONTH_ENDS_KEPT]:
                    del state.month_ends[old]
            # Every closed day is published, also during a backfill: the daily series. It
            # holds every event applied so far, so no in-day record is owed any more.
            self.closed_records.append((cid, orjson.dumps(result.record)))
            self.to_emit.pop(cid, None)
            if result.score is not None:
                self.metrics.health_score.labels(result.segment).observe(result.score)
            self._churn_day(cid, state, result, day)
            if state.pending_mv and state.pending_mv[0]["ts"] < as_of - self.segment_wait:
                self._release_movements(state, "unknown")
            self.dirty[cid] = partition
        if month_end:
            self._report_month_end(partition, ended, ahead)

    def _features_day(self, partition: int, closed: int) -> None:
        """Send this partition's contribution of closed day D to every known feature.

        Every feature gets one, even with no user here: its eligible active users and its
        retention "without" group count in the denominators (models/features.py). The day's
        eligible active users are also kept with the clock, and sent once with a feature this
        worker has not sent before, so the feature stage can count this partition in a
        feature's after-release figure even when it learnt of the feature too late.
        """
        fs = self.settings.features
        as_of = (closed + 1) * DAY_SECONDS
        anchor = as_of - fs.retention_window_days * DAY_SECONDS
        customers = []   # (state, mau, paying at the anchor, still paying now)
        for cid in self.members[partition]:
            state = self._load(cid)
            first = state.signup_ts if state.signup_ts is not None else state.first_ts
            mau = state.activity.figures(
                closed, None if first is None else day_of(first), self.window).mau
            paying = state.paid.paying_at(anchor)
            customers.append((state, mau, paying, paying and state.paid.paying_at(as_of)))
        clock = self._clock(partition)
        base: dict[str, tuple[int, int, int, int]] = {}
        for group, rule in self.eligibility_groups.items():
            active_users = active_customers = paying_n = kept_n = 0
            for state, mau, paying, kept in customers:
                if rule is None or rule.admits(state.segment, state.plan):
                    active_users += mau
                    active_customers += mau > 0
                    paying_n += paying
                    kept_n += kept
            base[group] = (active_users, active_customers, paying_n, kept_n)
            days = clock.base.setdefault(group, {})
            days[closed] = active_users
            for old in [d for d in days if d <= closed - BASE_HISTORY_DAYS]:
                del days[old]
        clock.last_base = (closed, {g: list(counts) for g, counts in base.items()})
        self.dirty_clocks.add(partition)
        released = {**self.catalog, **self.evaluator.released}  # configured releases win
        final = self._final_through()
        for feature, release in released.items():
            self._contribute(partition, clock, closed, feature, release, customers, base, final)

    def _contribute(self, partition: int, clock: PartitionClock, closed: int, feature: str,
                    release: float, customers: list[Any], base: Mapping[str, Any],
                    final: float | None) -> None:
        """One feature's contribution of closed day `closed` to the feature stage."""
        fs = self.settings.features
        lateness = self.settings.time.lateness_days
        rule = fs.eligible.get(feature)
        group = self.group_of.get(feature, eligibility_group(None))
        part = FeatureContribution(feature, closed)
        # A release first seen (not configured) can still move earlier: another worker's
        # partition may have seen f first and tell this one only after the close.
        inputs = None if feature in self.evaluator.released else ReleaseInputs()
        for state, _, _, _ in customers:
            if feature in state.feature_use.first and (
                    rule is None or rule.admits(state.segment, state.plan)):
                part.add_customer(state.feature_use, mau=0, released_at=release,
                                  signup_ts=state.signup_ts, paid=state.paid,
                                  retention_window_days=fs.retention_window_days)
                if inputs is not None:
                    inputs.add(state.feature_use, feature, closed, state.signup_ts)
        part.set_base(*base[group])
        fix = after_release_fix_day(release, lateness)
        if fix <= closed and (closed <= fix + self.after_margin
                              or clock.after_tried.get(feature) != release):
            # Also once when the release becomes known (or moves earlier) only after the
            # margin: another partition of this worker saw f late, and _prune kept the
            # event times of that partition's slowest sibling.
            clock.after_tried[feature] = release
            self._after_release(part, customers, rule, release)
        if inputs is not None and (final is None or release > final):
            clock.sent[feature] = SentContribution(part, release, inputs)
        else:
            clock.sent.pop(feature, None)
        message: dict[str, Any] = {"p": partition, "c": part.to_state()}
        if (partition, feature) not in self.base_sent:
            self.base_sent.add((partition, feature))
            message["b"] = sorted(clock.base[group].items())
        self.features_out.append((feature, orjson.dumps(message)))

    @staticmethod
    def _after_release(part: FeatureContribution, customers: list[Any], rule: Any,
                       release: float) -> None:
        """Exact counts of [R, R+30d) over the eligible customers, when every one still holds
        the events of day(R) (else the word that it cannot: FeatureBook falls back to day
        counts)."""
        users = active = 0
        for state, _, _, _ in customers:
            if rule is None or rule.admits(state.segment, state.plan):
                counts = state.feature_use.after_release(part.feature, release)
                if counts is None:
                    part.cannot_count_after(release)
                    return
                users += counts[0]
                active += counts[1]
        part.set_after_release(release, users, active)

    def learn_catalog(self, entries: Iterable[tuple[str, Any]]) -> None:
        """Features first seen by any worker, and every partition's watermark (the shared
        catalog topic), in the order read: a key's records are not a last-wins table (a
        restarted worker publishes a later first time than one already there), the earliest
        time and the highest watermark are kept."""
        for key, value in entries:
            if key.startswith(PROGRESS_KEY):
                if isinstance(value, dict) and isinstance(value.get("wm"), int | float):
                    self._learn_progress(int(key[len(PROGRESS_KEY):]), float(value["wm"]))
            elif isinstance(value, int | float):
                if key.startswith(FIRST_KEY):
                    key = key[len(FIRST_KEY):].partition(":")[2]
                self._learn_feature(key, float(value))

    def _learn_progress(self, partition: int, wm: float) -> None:
        if wm > self.progress.get(partition, -math.inf):
            self.progress[partition] = wm

    def _publish_progress(self, partition: int) -> None:
        wm = self.clocks[partition].watermark
        if wm is not None and wm > self.progress.get(partition, -math.inf):
            self.progress[partition] = self.progress_out[partition] = wm

    def _slowest(self) -> float | None:
        """The lowest watermark over every customer partition of the app (None while one has
        not reported): a feature first seen there may have its release day behind any
        partition's window, and its after-release figure needs the events from that day."""
        marks = []
        for p in range(self.settings.app.partitions):
            clock = self.clocks.get(p)
            wm = clock.watermark if clock is not None else None
            known = self.progress.get(p)
            if wm is None or (known is not None and known < wm):
                wm = known
            if wm is None:
                return None
            marks.append(wm)
        return min(marks)

    def _final_through(self) -> float | None:
        """A first-seen release at or before this time can no longer move earlier: every
        partition has published a watermark more than the lateness past it (and, before it,
        the features it saw), and an event older than that is refused. None while one has
        not reported."""
        slowest = self._slowest()
        return None if slowest is None else \
            slowest - self.settings.time.lateness_days * DAY_SECONDS

    def _learn_feature(self, feature: str, ts: float) -> bool:
        """Keep the earliest time a feature was seen; True when ts is earlier than known."""
        first = self.catalog.get(feature)
        if first is not None and first <= ts:
            return False
        self.catalog[feature] = ts
        if feature not in self.evaluator.released:
            self.recount.add(feature)
        return True

    def _recount_after_release(self) -> None:
        """A release learnt, or moved earlier, after a partition had closed the day that fixes
        its after-release figure: that partition sends its last close's contributions again,
        now with the exact counts for the release. A partition with no day left to close (at
        the end of a backfill) would otherwise never send them, and the figure stay null."""
        features, self.recount = self.recount, set()
        lateness = self.settings.time.lateness_days
        for partition, clock in list(self.clocks.items()):
            if clock.closed_day is None or partition not in self.members:
                continue
            closed = clock.closed_day - 1
            customers = None
            for feature in sorted(features):
                release = self.catalog.get(feature)
                sent = clock.sent.get(feature)
                if release is None:
                    continue
                if customers is None:
                    customers = [(self._load(cid), 0, False, False)
                                 for cid in self.members[partition]]
                if sent is None or sent.part.day != closed:
                    self._contribute_unused(partition, clock, closed, feature, release,
                                            customers)
                    continue
                # The contribution as it was sent at the close (events applied since, late
                # ones included, must not change it), counted for the release now known.
                part, resend = sent.part, False
                if sent.release != release:
                    sent.inputs.rebase(part, release)
                    sent.release = release
                    resend = True
                if after_release_fix_day(release, lateness) <= closed \
                        and clock.after_tried.get(feature) != release:
                    clock.after_tried[feature] = release
                    self._after_release(part, customers,
                                        self.settings.features.eligible.get(feature), release)
                    resend = True
                if resend:
                    self.dirty_clocks.add(partition)
                    self.features_out.append((feature, orjson.dumps(
                        {"p": partition, "c": part.to_state()})))

    def _contribute_unused(self, partition: int, clock: PartitionClock, closed: int,
                           feature: str, release: float, customers: list[Any]) -> None:
        """A feature learnt after the partition's last close, from another worker (again after
        a restart): none of its customers used it, or the partition would have seen it before
        that close. Its contribution of that close, with no user, is the close's own counts;
        without it the feature stage would count the partition only at its next close, which
        the end of a backlog may never bring."""
        if clock.last_base is None or clock.last_base[0] != closed or any(
                feature in state.feature_use.first for state, _, _, _ in customers):
            return
        self._contribute(partition, clock, closed, feature, release, customers,
                         clock.last_base[1], self._final_through())

    def _churn_day(self, cid: str, state: CustomerState, result: Evaluation, day: int) -> None:
        """Day close for churn: settle old snapshots, snapshot and score a paying customer."""
        track = state.churn
        mrr = state.revenue.mrr
        remember_mrr(track.mrr, day, mrr)
        track.remember_usage(state, day)
        book = track.book
        book.horizon = self.settings.churn.horizon_days    # configuration, not state
        book.settle_days = self.settings.churn.settle_days
        settled = book.settle(day - 1)                     # day = d0, the day close's as-of day
        if mrr > 0:
            fired = [a["rule"] for a in result.alerts if a["status"] == "firing"]
            settled += snapshot(state, result.record, day, self.scorer, fired)
        self.examples_out.extend(example_value(cid, x) for x in settled)

    # -- wall clock -----------------------------------------------------------------------

    def advance_wall_clock(self, now: float) -> None:
        """Live mode: days close for quiet partitions too."""
        for partition, clock in self.clocks.items():
            if clock.watermark is not None and now > clock.watermark:
                self._advance(partition, clock, now)   # held events due by now apply too

    # -- flushing -------------------------------------------------------------------------

    def flush(self) -> Flush:
        out = Flush()
        if self.recount:
            self._recount_after_release()
        out.records, self.closed_records = self.closed_records, []
        for cid, partition in self.to_emit.items():
            state = self._load(cid)
            # Alerts are judged at day closes only: a mid-day state must not fire or not
            # depending on when a wall-clock flush happens to look at it.
            record = self._evaluate(cid, partition, state, in_day_as_of(state),
                                    close=False).record
            out.records.append((cid, orjson.dumps(record)))
            self.dirty[cid] = partition  # the evaluation updated score history and alerts
        self.to_emit = {}
        self._write_dirty(self.dirty, out)
        self.dirty = {}
        self.live = {}
        for partition in self.dirty_clocks | self.dirty_summaries:
            self._report_partition(partition)
        for partition in self.dirty_clocks:
            out.clocks.append((partition, self.clocks[partition].to_dict()))
            self.written_wm[partition] = self.clocks[partition].watermark
            self._publish_progress(partition)
        self.dirty_clocks = set()
        self.dirty_summaries = set()
        out.alerts, self.alerts_out = self.alerts_out, []
        out.business, self.business_out = self.business_out, []
        out.examples = self._take_examples()
        out.features, self.features_out = self.features_out, []
        self._take_catalog(out)
        return out

    def _take_catalog(self, out: Flush) -> None:
        out.catalog = [(f, orjson.dumps(ts)) for f, ts in self.catalog_out.items()]
        # After the features: a worker that reads a partition's watermark has read every
        # feature that partition saw before it.
        out.catalog += [(f"{PROGRESS_KEY}{p}", orjson.dumps({"wm": wm}))
                        for p, wm in sorted(self.progress_out.items())]
        self.catalog_out = {}
        self.progress_out = {}

    def _take_examples(self, chunk: int = 500) -> list[bytes]:
        examples, self.examples_out = self.examples_out, []
        return [orjson.dumps(examples[i:i + chunk]) for i in range(0, len(examples), chunk)]

    def _report_partition(self, partition: int) -> None:
        """Watermark and customer summary of a partition, to every scope: a scope's months
        roll and become final only once every customer partition has reported."""
        wm = self.clocks[partition].watermark if partition in self.clocks else None
        scopes = self.summaries.get(partition, {})
        every = {"all", *(f"segment:{seg}" for seg in ev.SEGMENTS)}
        for scope in every | set(scopes):
            self.business_out.append((scope, orjson.dumps(
                {"t": "part", "scope": scope, "p": partition, "wm": wm,
                 "sum": scopes.get(scope, empty_summary())})))

    def _report_month_end(self, partition: int, month: str, ahead: Sequence[str] = ()
                          ) -> None:
        """The partition's summaries as of the end of `month`: the customer aggregates of that
        month's business records (avg health, at-risk, ...), whenever those are emitted.

        ``ahead``: customers restored from a later close than this one (their record was
        written, the clock was not); their shares are taken as of the month's end."""
        scopes = self.summaries.get(partition, {})
        if ahead:
            scopes = copy.deepcopy(scopes)
            for cid in ahead:
                later = self.summarised.get(cid)
                if later is not None:
                    _add_share(scopes, later, -1)
                then = self.live[cid].month_ends.get(month)
                if then is not None:
                    _add_share(scopes, CloseSummary(*then), 1)
        for scope in {"all", *(f"segment:{seg}" for seg in ev.SEGMENTS)} | set(scopes):
            self.business_out.append((scope, orjson.dumps(
                {"t": "me", "scope": scope, "p": partition, "month": month,
                 "sum": scopes.get(scope, empty_summary())})))

    def _load(self, cid: str) -> CustomerState:
        state = self.live.get(cid)
        if state is None:
            state = self.live[cid] = self.evaluator.attach(self.store[cid])
        return state

    def _evaluate(self, cid: str, partition: int, state: CustomerState, as_of: float,
                  close: bool = True) -> Evaluation:
        """Evaluate a customer; at a day close (`close`) also judge its alert rules and count
        it in its partition's summaries. Both then depend only on event-time points, never on
        when a wall-clock flush happened."""
        # Key features are those seen on the customer's own partition: the shared catalog
        # reaches each worker at its own pace, and a close must not depend on that.
        seen = self.clocks[partition].features
        result = self.evaluator.evaluate(state, as_of, seen, remember=close, alerts=close,
                                         churn_rates=self._rates_for(state, as_of))
        old = self.contrib.get(cid)
        self.contrib[cid] = result
        if result.ttv_days is not None and (old is None or old.ttv_days is None):
            # Once per customer reaching aha (again for every customer after a restart).
            self.metrics.ttv.labels(result.segment).observe(result.ttv_days)
        if close:
            self._summarise(cid, result)
        for alert in result.alerts:
            self.metrics.alert(alert["rule"], alert["status"])
            self.alerts_out.append((alert["alert_id"], orjson.dumps(alert)))
        return result

    def _summarise(self, cid: str, result: Evaluation | CloseSummary) -> None:
        """Replace the customer's share of its partition's summaries (vitals.business)."""
        partition = self.partition_of(cid)
        scopes = self.summaries.setdefault(partition, {})
        old = self.summarised.get(cid)
        self.summarised[cid] = result
        if old is not None:
            _add_share(scopes, old, -1)
        _add_share(scopes, result, 1)
        self.dirty_summaries.add(partition)

    def _write_dirty(self, dirty: dict[str, int], out: Flush) -> None:
        slowest = self._slowest()
        for cid, partition in dirty.items():
            state = self.live[cid]
            self._prune(state, partition, slowest)
            self.store[cid] = state
            out.changelog.append((partition, cid, state))

    def record(self, cid: str, partition: int) -> dict[str, Any]:
        """The record as of the partition's watermark, for the HTTP API: it changes nothing."""
        state = self.live.get(cid)
        if state is None:
            state = self.evaluator.attach(decode_state(encode_state(self.store[cid])))
        else:
            state = self.evaluator.attach(decode_state(encode_state(state)))
        as_of = self.clocks[partition].watermark
        assert as_of is not None
        return self.evaluator.evaluate(state, as_of, self.clocks[partition].features,
                                       remember=False, alerts=False,
                                       churn_rates=self._rates_for(state, as_of)).record

    def _prune(self, state: CustomerState, partition: int, slowest: float | None) -> None:
        """Forget what no close or event to come can need, as of the partition's clock as
        last written, not the live one.

        The customers' records are written before their partition's clock: a crash between
        the two restores this flush's records with the previous flush's clock, and the day
        closes since are made again from these records. They must find the events they found
        the first time, and a burst moves the watermark many days in one flush (the
        after-release counts of a feature, which need the events of its release day, were
        lost that way).
        """
        wm = self.written_wm.get(partition)
        if wm is None:
            return
        state.seen.prune(day_of(wm - self.policy.dedup_horizon) - 1)   # a day of margin
        # One day more than the window ending with the watermark's day: a record re-published
        # as of the last close (after a restart) covers the window ending the day before.
        state.activity.prune(last_day(wm) - self.window)
        state.onboarding.prune(wm - self.policy.dedup_horizon - DAY_SECONDS)
        keep_from = day_of(wm) - self.window - self.after_margin
        if slowest is None:
            keep_from -= UNREPORTED_KEEP_DAYS
        else:
            keep_from = max(min(keep_from, day_of(slowest) - self.window - self.after_margin),
                            keep_from - UNREPORTED_KEEP_DAYS)
        state.feature_use.prune(day_of(wm) - self.window, keep_from=keep_from)
        keep = self.settings.features.retention_window_days + self.settings.time.lateness_days + 1
        state.paid.prune(wm - keep * DAY_SECONDS)

    # -- partitions -----------------------------------------------------------------------

    def _clock(self, partition: int) -> PartitionClock:
        clock = self.clocks.get(partition)
        if clock is None:
            saved = self.clock_store.get(str(partition))
            clock = PartitionClock.from_dict(saved) if saved else PartitionClock()
            self.clocks[partition] = clock
            self.written_wm[partition] = clock.watermark
            for feature, first in clock.features.items():
                # Published again: the worker that wrote this clock may have died (or handed the
                # partition over) before it sent the catalog entry; receivers keep the earliest.
                self._learn_feature(feature, first)
                self.catalog_out[first_key(partition, feature)] = first
            # A release learnt (or moved earlier) before this clock was restored, by this
            # worker while the partition was revoked or by a new owner, asked no recount of
            # it (_recount_after_release skips partitions not held): its last close is counted
            # again for the release now known. Without it the feature stage fixed that
            # partition's after-release counts by UTC days (make chaos, seed 1, burst + SIGKILL).
            for feature, sent in clock.sent.items():
                if self.catalog.get(feature, sent.release) < sent.release:
                    self.recount.add(feature)
            for feature, tried in clock.after_tried.items():
                if self.catalog.get(feature, tried) < tried and \
                        feature not in self.evaluator.released:
                    self.recount.add(feature)
        return clock

    def assign(self, partitions: Iterable[int]) -> None:
        """After recovery: index the restored customers and publish every one of them once.

        Re-publishing is harmless (the output topic is compacted, records are idempotent) and
        closes the gap left by a crash between a changelog write and an output send.
        """
        wanted = set(partitions)
        for partition in wanted:
            self._clock(partition)
            self.members[partition] = set()
        for cid in list(self.store.keys()):
            partition = self.partition_of(cid)
            if partition in wanted:
                state = self._load(cid)
                # One that holds only events ahead of the watermark joins its partition's day
                # closes at its first applied event, as it did before the restart.
                if state.events:
                    self.members[partition].add(cid)
                    if self.clocks[partition].watermark is not None:
                        self.to_emit[cid] = partition
                if state.summary is not None:  # its share as of its last close, again
                    self._summarise(cid, CloseSummary(*state.summary))
                if state.held:  # the clock may have been written before the customer was
                    clock = self.clocks[partition]
                    first = min(e["ts"] for e in state.held)
                    clock.ahead[cid] = min(first, clock.ahead.get(cid, first))

    def revoke(self, partitions: Iterable[int]) -> Flush:
        """Hand over partitions another worker now owns.

        Unflushed changes are written to the changelog now (not acknowledged): whoever restores
        the partition, here or elsewhere, sees them, and the replayed events are duplicates.
        """
        gone = set(partitions)
        if gone:
            log.info("customer partitions revoked: %s", sorted(gone))
        out = Flush()
        self._write_dirty({c: p for c, p in self.dirty.items() if p in gone}, out)
        for partition in gone:
            clock = self.clocks.pop(partition, None)
            if clock is not None and partition in self.dirty_clocks:
                out.clocks.append((partition, clock.to_dict()))
            self.dirty_clocks.discard(partition)
            for cid in self.members.pop(partition, ()):
                self.contrib.pop(cid, None)
                self.summarised.pop(cid, None)
                self.live.pop(cid, None)
            self.summaries.pop(partition, None)
            self.replayed_held.pop(partition, None)
            self.dirty_summaries.discard(partition)
        self.dirty = {c: p for c, p in self.dirty.items() if p not in gone}
        self.to_emit = {c: p for c, p in self.to_emit.items() if p not in gone}
        # Alerts and business messages already decided go out with the state that records them.
        out.alerts, self.alerts_out = self.alerts_out, []
        out.business, self.business_out = self.business_out, []
        out.examples = self._take_examples()
        out.features, self.features_out = self.features_out, []
        self._take_catalog(out)
        return out

    def churn_rate(self, scope: str, month: str) -> float:
        """A scope's monthly churn rate c as of ``month``: over the complete months before it,
        from the samples its business records carry, as the business stage computes it."""
        rate = self._rates.get((scope, month))
        if rate is None:
            months = self.churn_samples.get(scope, {})
            r = self.settings.revenue
            rate = self._rates[scope, month] = monthly_churn_rate(
                [v for m, v in sorted(months.items()) if m < month], r.churn_rate_months,
                r.min_churn_rate)
        return rate

    def _rates_for(self, state: CustomerState, as_of: float) -> dict[str, float]:
        scope = f"segment:{state.segment}"
        return {scope: self.churn_rate(scope, _month_of_day(day_of(as_of)))}

    def learn_business(self, records: Iterable[tuple[str, Any]]) -> int:
        """Churn samples of the segment scopes from vitals.business records (key
        "scope|YYYY-MM"). A customer's CLV uses the rate as of its own time; one evaluated
        before a sample it depends on was read is evaluated again, so that its last record
        does not depend on when the record reached this worker. Returns how many."""
        changed: dict[str, str] = {}    # scope -> earliest month changed
        for key, record in records:
            scope, _, month = key.partition("|")
            if not scope.startswith("segment:") or not isinstance(record, dict):
                continue
            churned, start = record.get("customers_churned"), record.get("customers_start")
            if not isinstance(churned, int) or not isinstance(start, int):
                continue
            months = self.churn_samples.setdefault(scope, {})
            if months.get(month) != (churned, start):
                months[month] = (churned, start)
                changed[scope] = min(month, changed.get(scope, month))
        if not changed:
            return 0
        self._rates = {k: v for k, v in self._rates.items() if k[0] not in changed}
        earliest = min(changed.values())
        n = 0
        for partition, cids in self.members.items():
            wm = self.clocks[partition].watermark if partition in self.clocks else None
            now = None if wm is None else month_of(wm)
            if now is None or earliest >= now:   # the usual case: the current month changed
                continue
            for cid in cids:
                state = self._load(cid)
                since = changed.get(f"segment:{state.segment}")
                if since is not None and since < now:
                    self.to_emit[cid] = partition
                    n += 1
        return n

    def rescore(self) -> int:
        """A new model version: every owned paying customer is scored again now, from its
        latest snapshot, not at its next day close (after a backfill that close may be far
        off). The snapshot keeps the prediction it was taken with; returns how many."""
        n = 0
        for partition, cids in self.members.items():
            for cid in cids:
                state = self._load(cid)
                vector = state.churn.book.latest_vector() if state.churn.last else None
                if vector is None:
                    continue
                state.churn.last = self.scorer.score(vector)
                self.to_emit[cid] = partition
                self.dirty[cid] = partition
                n += 1
        return n

    # -- gauges ---------------------------------------------------------------------------

    def oldest_watermark(self) -> float | None:
        marks = [c.watermark for c in self.clocks.values() if c.watermark is not None]
        return min(marks) if marks else None

    def gauges(self) -> list[Any]:
        customers: dict[tuple[str, ...], float] = defaultdict(float)
        grades: dict[tuple[str, ...], float] = defaultdict(float)
        stick_sum: dict[tuple[str, ...], float] = defaultdict(float)
        stick_n: dict[tuple[str, ...], int] = defaultdict(int)
        firing: dict[tuple[str, ...], float] = defaultdict(float)
        risks: dict[tuple[str, ...], float] = defaultdict(float)
        rules = self.settings.alerts.rules
        for e in self.contrib.values():
            customers[(e.segment, e.status)] += 1
            churn = e.record.get("churn")
            if churn is not None and churn["risk"] is not None:
                risks[(e.segment, churn["risk"])] += 1
            stick_sum[(e.segment,)] += e.stickiness
            stick_n[(e.segment,)] += 1
            if e.grade is not None:
                grades[(e.segment, e.grade)] += 1
        for cid in self.contrib:
            state = self.live.get(cid) or self.store.get(cid)
            for rule in state.alerts.firing() if state is not None else ():
                if rule in rules:
                    firing[(rule, rules[rule].severity)] += 1
        return [
            *watermark_gauges(self.oldest_watermark()),
            gauge("vitals_customers", "Known customers by segment and status",
                  ("segment", "status"), customers),
            gauge("vitals_stickiness_ratio", "Average customer DAU/MAU by segment", ("segment",),
                  {k: stick_sum[k] / stick_n[k] for k in stick_sum}),
            gauge("vitals_customers_by_grade", "Customers by segment and health grade",
                  ("segment", "grade"), grades),
            gauge("vitals_alerts_firing", "Alerts currently firing", ("rule", "severity"),
                  firing),
            gauge("vitals_churn_risk_customers", "Paying customers by segment and churn risk band",
                  ("segment", "risk"), risks),
            gauge("vitals_churn_model_version", "Churn model version this worker scores with",
                  (), {(): float(self.scorer.version)}),
        ]


def _apply_support(state: CustomerState, event: dict[str, Any], ts: float) -> None:
    kind = event["type"]
    support = state.support
    if kind == "ticket_opened":
        support.on_ticket_opened(event["ticket_id"], ts, event["priority"])
    elif kind == "ticket_closed":
        support.on_ticket_closed(event["ticket_id"], ts)
    elif kind == "nps":
        support.on_nps(event["score"], ts)
    else:
        support.on_csat(event["score"], ts)
