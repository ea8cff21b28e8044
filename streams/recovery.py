"""Faust's table recovery, kept from seeking to an offset below zero.

Faust starts reading a changelog partition at `max(persisted offset, earliest offset - 1)`
and seeks there, mapping -1 to 0 (faust-streaming #176, the "offset -1 logic"). When the
broker answers the earliest-offset request with -1 (unknown), that start becomes -2 and
aiokafka's `seek` raises `ValueError('Offset must be a positive integer')`: a restarted
worker exited 1 in recovery under repeated SIGKILLs. Any start below zero means "nothing is
known to be read yet", so it reads the changelog from its first record: reading more of a
changelog than needed replays values that later records overwrite, and changes nothing.
"""
from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from faust.tables import TableManager
from faust.tables.recovery import Recovery

log = logging.getLogger(__name__)


def recovery_start(offset: int | None) -> int:
    """Where to seek for a changelog whose last read offset Faust gives as `offset`."""
    return 0 if offset is None or offset < 0 else offset


class SafeRecovery(Recovery):
    async def _seek_offsets(self, consumer: Any, tps: set[Any], offsets: Counter[Any],
                            title: str) -> None:
        below = {tp: offsets[tp] for tp in tps if offsets[tp] is not None and offsets[tp] < -1}
        if below:
            log.warning("changelog start below zero (earliest offset unknown), reading from "
                        "the first record: %s",
                        sorted(f"{tp.topic}[{tp.partition}]={o}" for tp, o in below.items()))
        await consumer.seek_wait({tp: recovery_start(offsets[tp]) for tp in tps})


class SafeTableManager(TableManager):
    """Faust's table manager with `SafeRecovery` (set as the app's `TableManager`)."""

    @property
    def recovery(self) -> Recovery:
        if self._recovery is None:
            self._recovery = SafeRecovery(self.app, self, beacon=self.beacon, loop=self.loop)
        return self._recovery
