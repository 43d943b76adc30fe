"""The engine's maintenance tasks: claiming work, renewing leases, reaping the dead.

They run in the engine's root nursery, never as workflow runs, and nothing
correctness-critical depends on any one of them being fast:

- **claims** (``claim_loop``): take runs that need a driver and are unowned
  or whose lease expired (recovery after a crash, takeover of a dead peer,
  a hibernated run whose timer is due or that got a wakeup). It sleeps until
  the earliest time something may become claimable, or until the storage
  reports a change (a hint: in-process at once, from other processes within
  the backend's poll interval). It also pokes the runs this engine drives
  when wakeups were added for them from elsewhere.
- **heartbeat** (``renew_loop``): renew every lease in one call per period.
  A run missing from the answer lost its lease and is stopped locally at
  once. A renewal that *fails* (an error, not a refusal) is retried until
  the trust window ends, measured on Trio's clock from the *start* of the
  last successful renewal (the storage extended the leases no earlier than
  that); past it the engine stops all its runs, since a peer may own them by
  then. Runs stopped so are still this engine's in the storage until their
  leases lapse, and ``next_wake`` ignores runs the engine holds, so the
  claim loop then looks for them every renewal period for two TTLs. It also
  asks the storage to reap engines it can prove dead.

Idle engines create no periodic deadlines (the heartbeat sleeps while no
run is owned), which keeps long virtual waits under ``MockClock`` cheap.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Literal

import trio

from ..storage._protocol import WakeupKind
from ._runs import RunEntry

if TYPE_CHECKING:
    from ._open_engine import Engine

__all__ = ["claim_loop", "claim_now", "poke_owned", "renew_loop"]

logger = logging.getLogger("hephaestus_trio.runtime")

_CLAIM_BATCH = 100
_RETRY_DELAY = 1.0


async def claim_now(engine: Engine) -> int:
    """Claim every run that needs a driver now (in batches); returns how many."""
    total = 0
    while True:
        leases = await engine.storage.claim(
            engine.engine_id,
            now=engine.clock.now(),
            ttl=engine.lease_ttl,
            workflows=engine._workflow_keys(),
            limit=_CLAIM_BATCH,
        )
        for lease in leases:
            engine._spawn(lease)
        total += len(leases)
        if len(leases) < _CLAIM_BATCH:
            return total


async def poke_owned(engine: Engine) -> None:
    """Poke the runs we drive that got wakeups from elsewhere since we last looked."""
    found = await engine.storage.owned_wakeups(engine.engine_id, after=engine._seen_wakeup)
    for run_id, seq in found:
        engine._seen_wakeup = max(engine._seen_wakeup, seq)
        entry = engine._runs.get(run_id)
        if entry is None:
            continue
        entry.poke()
        # A step running inline does not read its mailbox: a cancel request
        # from elsewhere must interrupt it now, not when the step returns.
        if entry.interruptible:
            wakeups = await engine.storage.wakeups(run_id)
            if any(w.kind is WakeupKind.CANCEL for w in wakeups):
                entry.interrupt()


async def claim_loop(engine: Engine) -> None:
    """Claim claimable runs whenever some may exist; never returns."""
    seen = -1
    while True:
        try:
            await claim_now(engine)
            await poke_owned(engine)
            wake = await engine.storage.next_wake(
                engine.engine_id, workflows=engine._workflow_keys()
            )
        except Exception:
            logger.exception("claiming runs failed; retrying in %.1fs", _RETRY_DELAY)
            await trio.sleep(_RETRY_DELAY)
            continue
        deadline = engine.clock.deadline(wake) if wake is not None else math.inf
        if trio.current_time() < engine._reclaim_until:
            deadline = min(deadline, trio.current_time() + engine.lease_renewal)
        with trio.move_on_at(deadline):
            seen = await _until_change(engine, seen)


async def _until_change(engine: Engine, seen: int) -> int:
    """Return once the storage reports a change or the local doorbell rings."""
    doorbell = engine._claim_doorbell
    result = seen
    async with trio.open_nursery() as nursery:

        async def on_change() -> None:
            nonlocal result
            result = await engine.storage.wait_for_change(seen)
            nursery.cancel_scope.cancel()

        async def on_doorbell() -> None:
            await doorbell.wait()
            nursery.cancel_scope.cancel()

        nursery.start_soon(on_change)
        nursery.start_soon(on_doorbell)
    return result


async def renew_loop(engine: Engine) -> None:
    """Renew this engine's leases every ``lease_renewal`` seconds while it owns runs."""
    last_ok = trio.current_time()
    while True:
        if not engine._runs:
            await engine._owning.wait()
            last_ok = trio.current_time()
        await trio.sleep(engine.lease_renewal)
        # One tick in a function of its own: its locals (every entry of this
        # round) must not outlive it while the loop sleeps, or runs that
        # hibernated meanwhile would stay in memory until the next round.
        attempt = trio.current_time()
        outcome = await _renew_once(engine, last_ok)
        if outcome == "renewed":
            last_ok = attempt
        elif outcome == "stopped":
            # Every run was stopped: runs claimed from now on hold fresh leases,
            # whose trust window starts now (not at the last success). The
            # stopped runs are still ours in the storage until their leases
            # lapse; look for them (and let peers) until well after that.
            last_ok = trio.current_time()
            engine._reclaim_until = last_ok + 2 * engine.lease_ttl
            engine._wake_claims()


async def _renew_once(engine: Engine, last_ok: float) -> Literal["renewed", "failed", "stopped"]:
    """One heartbeat: the storage answered, or failed within the trust window, or
    failed past it (every run was stopped here)."""
    entries: list[RunEntry] = list(engine._runs.values())
    sent = {entry.run_id: entry.lease for entry in entries}
    window = engine.lease_ttl - engine.lease_renewal
    try:
        # No deadline around the call: under a virtual clock a slow real write
        # would make Trio's clock jump to it and stop healthy runs. A renewal
        # reaching an unreachable database ends with the storage's connect timeout.
        renewed = await engine.storage.renew(
            engine.engine_id,
            list(sent.values()),
            now=engine.clock.now(),
            ttl=engine.lease_ttl,
        )
        dead = await engine.storage.reap_engines(now=engine.clock.now())
    except Exception as exc:
        silent = trio.current_time() - last_ok
        if silent >= window:
            logger.error(
                "leases not renewed for %.1fs (%r): past the trust window, "
                "stopping every run here (a peer may own them now)",
                silent,
                exc,
            )
            for entry in list(engine._runs.values()):
                entry.stop_lost()
            return "stopped"
        logger.warning("lease renewal failed (%r); retrying", exc)
        return "failed"
    by_run = {lease.run_id: lease for lease in renewed}
    for entry in entries:
        if entry.lease is not sent[entry.run_id]:
            continue  # re-claimed or released meanwhile: its new lease stands
        lease = by_run.get(entry.run_id)
        if lease is not None:
            entry.lease = lease
        elif not entry.closing:
            logger.warning("run %s: lease lost; stopping it here", entry.run_id)
            entry.stop_lost()
    if dead:
        logger.warning("engines %s are dead; taking over their runs", dead)
        engine._wake_claims()
    return "renewed"
