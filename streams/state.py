"""The per-customer record kept in the changelog-backed table.

One record holds everything about a customer that must survive a restart: identity facts,
windowed activity, and the seen event ids that make replays harmless. It is written at most
once per flush interval, whatever the number of events it absorbed.
"""
from __future__ import annotations

from typing import Any

import orjson

from models.activity import ActivityWindow
from models.features import CustomerFeatures, PaidHistory
from models.health import SupportAndPayments
from models.onboarding import Onboarding
from models.revenue import CustomerRevenue
from streams.alerts import AlertBook
from streams.churn import ChurnTrack
from streams.dedup import SeenIds

FORMAT_VERSION = 1


class CustomerState:
    __slots__ = ("customer_id", "segment", "plan", "seats", "cac", "channel", "signup_ts",
                 "signup_seen_ts", "first_ts", "last_ts", "events", "activity", "seen",
                 "onboarding", "support", "features", "alerts", "revenue", "pending_mv",
                 "closed_day", "churn", "feature_use", "paid", "offset", "held", "summary",
                 "month_ends")

    def __init__(self, customer_id: str) -> None:
        self.customer_id = customer_id
        self.segment: str | None = None
        self.plan: str | None = None
        self.seats: int | None = None
        self.cac: float | None = None
        self.channel: str | None = None
        self.signup_ts: float | None = None       # earliest signup event time
        self.signup_seen_ts: float | None = None  # time of the signup whose attributes we hold
        self.first_ts: float | None = None        # earliest event of any family
        self.last_ts: float | None = None         # latest event of any family
        self.events = 0                           # events applied (duplicates excluded)
        self.activity = ActivityWindow()
        self.seen = SeenIds()
        self.onboarding = Onboarding()
        self.support = SupportAndPayments()       # tickets, payments, surveys, score history
        self.features: dict[str, int] = {}         # feature -> last event-time day used
        self.alerts = AlertBook()
        self.revenue = CustomerRevenue()
        self.pending_mv: list[dict[str, Any]] = []  # movements waiting for the segment
        # Last day close this customer was evaluated at: the customer record and the
        # partition clock are separate changelog writes, so after a crash they can be
        # restored out of step; this keeps every day close once per customer.
        self.closed_day: int | None = None
        self.churn = ChurnTrack()                 # pending churn snapshots, recent MRR, score
        self.feature_use = CustomerFeatures()     # users per feature per day, first uses
        self.paid = PaidHistory()                 # when MRR went above 0 and back (retention)
        # Offset of the last internal-topic message applied to this record: a replayed message
        # (after a crash or a hand-over) is recognised by position, written atomically with
        # its effects, and skipped before any lateness verdict.
        self.offset: int | None = None
        # Events too far ahead of the partition's watermark, waiting for it (time.AHEAD).
        self.held: list[dict[str, Any]] = []
        # Its share of the business aggregates at its last day close (see CloseSummary).
        self.summary: list[Any] | None = None
        # Its share as of the last month ends it closed ({month: summary}): a clock restored
        # older than this record replays those closes, and the month's business record must
        # get the share as of the month's end, not of the later close the record holds.
        self.month_ends: dict[str, list[Any]] = {}

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": FORMAT_VERSION, "id": self.customer_id, "seg": self.segment, "plan": self.plan,
            "seats": self.seats, "cac": self.cac, "ch": self.channel, "su": self.signup_ts,
            "sus": self.signup_seen_ts, "ft": self.first_ts, "lt": self.last_ts, "n": self.events,
            "act": self.activity.to_dict(), "seen": self.seen.to_dict(),
            "ob": self.onboarding.to_dict(), "sp": self.support.to_dict(), "f": self.features,
            "al": self.alerts.to_dict(), "rv": self.revenue.to_dict(),
            "pm": self.pending_mv, "cd": self.closed_day, "cn": self.churn.to_dict(),
            "fu": self.feature_use.to_dict(), "pd": self.paid.to_list(), "off": self.offset,
            "held": self.held, "sm": self.summary, "me": self.month_ends,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CustomerState:
        state = cls(data["id"])
        state.segment = data.get("seg")
        state.plan = data.get("plan")
        state.seats = data.get("seats")
        state.cac = data.get("cac")
        state.channel = data.get("ch")
        state.signup_ts = data.get("su")
        state.signup_seen_ts = data.get("sus")
        state.first_ts = data.get("ft")
        state.last_ts = data.get("lt")
        state.events = data.get("n", 0)
        state.activity = ActivityWindow.from_dict(data.get("act", {}))
        state.seen = SeenIds.from_dict(data.get("seen", {}))
        state.onboarding = Onboarding.from_dict(data.get("ob", {}))
        state.support = SupportAndPayments.from_dict(data.get("sp", {}))
        state.features = data.get("f", {})
        state.alerts = AlertBook(data.get("al"))
        state.revenue = CustomerRevenue.from_dict(data.get("rv", {}))
        state.pending_mv = list(data.get("pm", ()))
        state.closed_day = data.get("cd")
        state.churn = ChurnTrack.from_dict(data.get("cn", {}))
        state.feature_use = CustomerFeatures.from_dict(data.get("fu", {}))
        state.paid = PaidHistory.from_list(data.get("pd", ()))
        state.offset = data.get("off")
        state.held = list(data.get("held", ()))
        state.summary = data.get("sm")
        state.month_ends = dict(data.get("me") or {})
        return state


def encode_state(state: CustomerState) -> bytes:
    return orjson.dumps(state.to_dict())


def decode_state(raw: bytes) -> CustomerState:
    return CustomerState.from_dict(orjson.loads(raw))
