"""Builds the vitals.customer record from a customer's state as of an event time."""
from __future__ import annotations

from typing import Any

from models.activity import ActivityFigures
from streams.state import CustomerState
from streams.time import rfc3339


def customer_status(state: CustomerState) -> str:
    """trial (never paid), active, churned, reactivated: from subscription events."""
    return state.revenue.status


def customer_record(state: CustomerState, as_of: float, figures: ActivityFigures,
                    status: str) -> dict[str, Any]:
    return {
        "customer_id": state.customer_id,
        "as_of": rfc3339(as_of),
        "segment": state.segment,
        "plan": state.plan,
        "signup_at": None if state.signup_ts is None else rfc3339(state.signup_ts),
        "status": status,
        "activity": figures.as_record(),
        # Set by streams/evaluate.py: null until the customer was first scored while paying.
        "onboarding": None,
        "health": None,
        "revenue": None,
        "churn": None,
    }
