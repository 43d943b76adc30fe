"""Built-in steps: ``Done``, ``Wait``, ``WaitForEvent``, ``Debug``."""

from ._debug import Debug as Debug
from ._done import Done as Done
from ._wait import Wait as Wait
from ._wait_for_event import WaitForEvent as WaitForEvent

__all__ = ["Debug", "Done", "Wait", "WaitForEvent"]
