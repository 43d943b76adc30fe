"""The one place every backend calls an ``Advancer`` and checks what it returns.

``add_wakeup_and_claim(advance=...)`` runs the caller's function inside the
claim's transaction. Whatever goes wrong there (it raises, or returns a state
``write`` would refuse) must not undo the wakeup or the claim, nor fail the
other writes a SQLite batch commits with it: the claim then stands as if no
``advance`` had been given, and the run's driver applies the wakeup itself.
"""

from __future__ import annotations

import logging

from ._protocol import Advance, Advancer, ClaimedRun, Wakeup

__all__ = ["checked_advance"]

logger = logging.getLogger("hephaestus_trio.storage")


def checked_advance(advance: Advancer, claimed: ClaimedRun, recorded: Wakeup) -> Advance | None:
    """``advance(claimed, recorded)`` if it returns a state the claim may write, else ``None``."""
    try:
        result = advance(claimed, recorded)
    except Exception:
        logger.exception(
            "run %s: applying wakeup %d in its claim failed; its driver applies it",
            claimed.lease.run_id,
            recorded.seq,
        )
        return None
    if result is None:
        return None
    before, after = claimed.instance, result.instance
    fixed = ("run_id", "id", "workflow", "workflow_version", "unique_key")
    changed = [name for name in fixed if getattr(after, name) != getattr(before, name)]
    if changed or not after.status.is_live:
        why = f"changes {', '.join(changed)}" if changed else f"is {after.status.value}"
        logger.error(
            "run %s: the state advanced in its claim %s; not written, its driver applies wakeup %d",
            claimed.lease.run_id,
            why,
            recorded.seq,
        )
        return None
    return result
