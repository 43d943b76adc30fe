"""Pure engine functions over ``Instance`` (no I/O, no Trio, no clock).

Not to be confused with the running engine that ``open_engine`` yields: these
functions only compute the next state; the running engine persists it and
executes the steps it activates.
"""

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
    "StepNotActive",
    "activate_transitions",
    "add_timer",
    "advance",
    "cancel",
    "check_completion",
    "complete_step",
    "fail",
    "park",
    "ready_steps",
    "remove_timer",
    "resume_step",
]
