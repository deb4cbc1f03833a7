"""Each queue's recent use, so that queues holding the same now are served by who used less.

DRF ranks queues by what they hold at the moment. When two hold the same, most often
nothing (the cluster has just emptied), the queue that used less lately goes first;
before, the tie went by name, and a queue whose name sorted first took every free moment
with a backlog of whole-cluster jobs while another tenant's job waited for all of them.
Recent use is a queue's weighted dominant share integrated over time, halving every
``SchedulerConfig.recent_use_half_life_s``: the decayed usage of Slurm's fair-share
factor and of Kueue's admission fair sharing.

The scheduler has no clock: a cycle returns what each queue holds once its binds are
made (``Decisions.recent_use``), and the next cycle counts that as held until its own
``ClusterState.now``. Only a cycle starts jobs, so nothing is missed between cycles; a
job that ended between them counts until the next (the controller passes at least
every ``resync_s``, two seconds, while anything runs, and counts nothing while nothing
does).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

FORGOTTEN_SHARE_SECONDS = 1e-6
"""Use below this is dropped, so a queue that holds nothing and is gone stops being carried."""


@dataclass(frozen=True)
class RecentUse:
    """Weighted dominant share-seconds per queue, decayed to ``at`` (epoch seconds), and
    the weighted shares each queue has held since then."""

    at: float | None = None
    share_seconds: Mapping[str, float] = field(default_factory=dict)
    holding: Mapping[str, float] = field(default_factory=dict)

    def of(self, queue: str) -> float:
        return self.share_seconds.get(queue, 0.0)

    def advanced(self, now: float | None, half_life_s: float) -> RecentUse:
        """This use carried to ``now``: what was counted decays, and each queue adds what
        it held since ``at``. A clock that went back adds nothing; a queue of weight 0
        (an infinite share) adds nothing either: it is served last anyway."""
        if now is None:
            return self
        elapsed = 0.0 if self.at is None else max(0.0, now - self.at)
        decay = 0.5 ** (elapsed / half_life_s)
        # the interval's length as it counts now: the integral of the decay over it
        held_for = half_life_s / math.log(2) * (1.0 - decay)
        carried: dict[str, float] = {}
        for queue in self.share_seconds.keys() | self.holding.keys():
            share = self.holding.get(queue, 0.0)
            added = share * held_for if math.isfinite(share) else 0.0
            value = self.of(queue) * decay + added
            if value >= FORGOTTEN_SHARE_SECONDS:
                carried[queue] = value
        return RecentUse(now, carried, self.holding)

    def holding_now(self, shares: Mapping[str, float]) -> RecentUse:
        """This use with ``shares`` as what each queue holds from ``at`` on."""
        return replace(self, holding=dict(shares))
