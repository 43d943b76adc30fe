"""Test helpers for code built on hephaestus-trio (they need Hypothesis).

``import hephaestus_trio`` never imports this package; import it from tests:

* ``workflows()`` / ``workflow_specs()``: random *valid* workflow classes (and
  the plain-data specs they are built from, with ``build_workflow``);
* ``outcome_scripts(workflow)``: what each step does (emit which event, park
  first, fail) plus scheduling choices;
* ``run_script(workflow, script)``: play a script on the pure engine functions
  and get every instance reached.
"""

from ._driver import EPOCH as EPOCH
from ._driver import Outcome as Outcome
from ._driver import OutcomeScript as OutcomeScript
from ._driver import run_script as run_script
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
    "NodeSpec",
    "Outcome",
    "OutcomeScript",
    "TransitionSpec",
    "WorkflowSpec",
    "build_workflow",
    "outcome_scripts",
    "run_script",
    "workflow_specs",
    "workflows",
]
