"""Pure engine functions over ``Instance`` (no I/O, no Trio, no clock).

Not to be confused with the running engine that ``open_engine`` yields: these
functions only compute the next state; the running engine persists it and
executes the steps it activates.

Two levels: the step-level functions (``advance``, ``complete_step``,
``activate_transitions``, ``park``, ``resume_step``, ``fail``, ``cancel``...)
and the decision functions built on them (``apply_result``, ``apply_resume``,
``apply_timer``, ``apply_attempt_failure``, ``apply_crash``, ``apply_cancel``,
``give_up``, ``choose_resume_step``, ``can_still_run``, ``next_attempt``,
``check_definition``), which turn one input of the running engine into a
``Decision`` (or, for the last ones, answer a question about a run). The running engine and
``hephaestus_trio.testing.run_script`` both use the decision functions.
"""

from .core._decisions import Decision as Decision
from .core._decisions import apply_attempt_failure as apply_attempt_failure
from .core._decisions import apply_cancel as apply_cancel
from .core._decisions import apply_crash as apply_crash
from .core._decisions import apply_result as apply_result
from .core._decisions import apply_resume as apply_resume
from .core._decisions import apply_timer as apply_timer
from .core._decisions import can_still_run as can_still_run
from .core._decisions import check_definition as check_definition
from .core._decisions import choose_resume_step as choose_resume_step
from .core._decisions import give_up as give_up
from .core._decisions import next_attempt as next_attempt
from .core._engine import StepNotActive as StepNotActive
from .core._engine import activate_transitions as activate_transitions
from .core._engine import add_timer as add_timer
from .core._engine import advance as advance
from .core._engine import cancel as cancel
from .core._engine import check_completion as check_completion
from .core._engine import complete_step as complete_step
from .core._engine import fail as fail
from .core._engine import park as park
from .core._engine import ready_steps as ready_steps
from .core._engine import remove_timer as remove_timer
from .core._engine import resume_step as resume_step

__all__ = [
    "Decision",
    "StepNotActive",
    "activate_transitions",
    "add_timer",
    "advance",
    "apply_attempt_failure",
    "apply_cancel",
    "apply_crash",
    "apply_result",
    "apply_resume",
    "apply_timer",
    "can_still_run",
    "cancel",
    "check_completion",
    "check_definition",
    "choose_resume_step",
    "complete_step",
    "fail",
    "give_up",
    "next_attempt",
    "park",
    "ready_steps",
    "remove_timer",
    "resume_step",
]
