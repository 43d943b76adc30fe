"""Test helpers for code built on hephaestus-trio (they need Hypothesis).

``import hephaestus_trio`` never imports this package; import it from tests:

* ``workflows()`` / ``workflow_specs()``: random *valid* workflow classes (and
  the plain-data specs they are built from, with ``build_workflow``);
* ``outcome_scripts(workflow)``: what each step does (emit which event, park
  first, fail) plus scheduling choices;
* ``run_script(workflow, script)``: play a script on the pure engine functions
  and get every instance reached;
* ``PostgresCluster``: a throwaway PostgreSQL server (``initdb`` + ``pg_ctl``
  in a temporary directory, loopback only) for testing against PostgreSQL;
* ``check_storage(new_location, durable=...)`` / ``STORAGE_CHECKS``: the storage
  conformance suite, for any ``Storage`` backend (needs neither Hypothesis
  nor pytest).
"""

from ._audited_storage import AuditedStorage as AuditedStorage
from ._audited_storage import CrashPoint as CrashPoint
from ._audited_storage import InjectedFault as InjectedFault
from ._crash_check import Advance as Advance
from ._crash_check import Crash as Crash
from ._crash_check import CrashCheckError as CrashCheckError
from ._crash_check import CrashSafetyViolation as CrashSafetyViolation
from ._crash_check import CrashWhere as CrashWhere
from ._crash_check import Resume as Resume
from ._crash_check import ScriptAction as ScriptAction
from ._crash_check import check_crash_safety as check_crash_safety
from ._crash_check import instrument_steps as instrument_steps
from ._driver import EPOCH as EPOCH
from ._driver import Outcome as Outcome
from ._driver import OutcomeScript as OutcomeScript
from ._driver import run_script as run_script
from ._harness import ClockHeldStorage as ClockHeldStorage
from ._harness import EngineHarness as EngineHarness
from ._harness import UnknownEngine as UnknownEngine
from ._harness import hold_clock_while_busy as hold_clock_while_busy
from ._harness import open_harness as open_harness
from ._harness import reopen as reopen
from ._machine import WorkflowStateMachine as WorkflowStateMachine
from ._postgres_cluster import PostgresCluster as PostgresCluster
from ._postgres_cluster import find_postgres_bindir as find_postgres_bindir
from ._storage_checks import STORAGE_CHECKS as STORAGE_CHECKS
from ._storage_checks import StorageCheck as StorageCheck
from ._storage_checks import StorageFactory as StorageFactory
from ._storage_checks import check_storage as check_storage
from ._strategies import DONE as DONE
from ._strategies import NodeSpec as NodeSpec
from ._strategies import TransitionSpec as TransitionSpec
from ._strategies import WorkflowSpec as WorkflowSpec
from ._strategies import build_workflow as build_workflow
from ._strategies import outcome_scripts as outcome_scripts
from ._strategies import workflow_specs as workflow_specs
from ._strategies import workflows as workflows

__all__ = [
    "DONE",
    "EPOCH",
    "STORAGE_CHECKS",
    "Advance",
    "AuditedStorage",
    "ClockHeldStorage",
    "Crash",
    "CrashCheckError",
    "CrashPoint",
    "CrashSafetyViolation",
    "CrashWhere",
    "EngineHarness",
    "InjectedFault",
    "NodeSpec",
    "Outcome",
    "OutcomeScript",
    "PostgresCluster",
    "Resume",
    "ScriptAction",
    "StorageCheck",
    "StorageFactory",
    "TransitionSpec",
    "UnknownEngine",
    "WorkflowSpec",
    "WorkflowStateMachine",
    "build_workflow",
    "check_crash_safety",
    "check_storage",
    "find_postgres_bindir",
    "hold_clock_while_busy",
    "instrument_steps",
    "open_harness",
    "outcome_scripts",
    "reopen",
    "run_script",
    "workflow_specs",
    "workflows",
]
