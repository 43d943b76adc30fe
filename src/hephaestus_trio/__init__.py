"""hephaestus-trio: durable workflows for Trio applications.

Every public name is importable from here. The layers below are private:
``core`` (pure models, definitions and the pure engine), ``steps`` (built-in
steps), ``storage`` (backends), ``observability`` (events and handlers),
``runtime`` (Trio) and ``cli``.
"""

from . import engine as engine
from . import serialization as serialization
from ._errors import AlreadyRunning as AlreadyRunning
from ._errors import AmbiguousInstance as AmbiguousInstance
from ._errors import Backpressure as Backpressure
from ._errors import DefinitionMismatch as DefinitionMismatch
from ._errors import EngineClosed as EngineClosed
from ._errors import HephaestusError as HephaestusError
from ._errors import InstanceNotFound as InstanceNotFound
from ._errors import InstanceRestarted as InstanceRestarted
from ._errors import InvalidArgument as InvalidArgument
from ._errors import InvalidResume as InvalidResume
from ._errors import InvalidValue as InvalidValue
from ._errors import LeaseLost as LeaseLost
from ._errors import NotCancellable as NotCancellable
from ._errors import StorageError as StorageError
from ._errors import UndeclaredEvent as UndeclaredEvent
from ._errors import UnknownWorkflow as UnknownWorkflow
from ._errors import WaitTimeout as WaitTimeout
from ._errors import WorkflowDefinitionError as WorkflowDefinitionError
from ._version import __version__ as __version__
from .core._graph import Edge as Edge
from .core._graph import Graph as Graph
from .core._instance import FAILED_ATTEMPT as FAILED_ATTEMPT
from .core._instance import TRACEBACK_FRAMES as TRACEBACK_FRAMES
from .core._instance import TRACEBACK_LIMIT as TRACEBACK_LIMIT
from .core._instance import Context as Context
from .core._instance import ErrorRecord as ErrorRecord
from .core._instance import ExecutionEntry as ExecutionEntry
from .core._instance import Instance as Instance
from .core._instance import Status as Status
from .core._instance import TimerRecord as TimerRecord
from .core._policies import RestartPolicy as RestartPolicy
from .core._policies import RetryPolicy as RetryPolicy
from .core._shape import DefinitionShape as DefinitionShape
from .core._step import Complete as Complete
from .core._step import Fail as Fail
from .core._step import Step as Step
from .core._step import Suspend as Suspend
from .core._step import step as step
from .core._unique import Unique as Unique
from .core._workflow import Workflow as Workflow
from .core._workflow import get_workflow as get_workflow
from .core._workflow import route as route
from .observability import EVENT_NAMES as EVENT_NAMES
from .observability import Event as Event
from .observability import LoggingHandler as LoggingHandler
from .runtime import Engine as Engine
from .runtime import EngineStatistics as EngineStatistics
from .runtime import TimerHandle as TimerHandle
from .runtime import open_engine as open_engine
from .runtime import trio_wall_clock as trio_wall_clock
from .steps import Debug as Debug
from .steps import Done as Done
from .steps import Wait as Wait
from .steps import WaitForEvent as WaitForEvent
from .storage import MemoryStorage as MemoryStorage
from .storage import PostgresStorage as PostgresStorage
from .storage import SQLiteStorage as SQLiteStorage
from .storage import Storage as Storage

__all__ = [
    "EVENT_NAMES",
    "FAILED_ATTEMPT",
    "TRACEBACK_FRAMES",
    "TRACEBACK_LIMIT",
    "AlreadyRunning",
    "AmbiguousInstance",
    "Backpressure",
    "Complete",
    "Context",
    "Debug",
    "DefinitionMismatch",
    "DefinitionShape",
    "Done",
    "Edge",
    "Engine",
    "EngineClosed",
    "EngineStatistics",
    "ErrorRecord",
    "Event",
    "ExecutionEntry",
    "Fail",
    "Graph",
    "HephaestusError",
    "Instance",
    "InstanceNotFound",
    "InstanceRestarted",
    "InvalidArgument",
    "InvalidResume",
    "InvalidValue",
    "LeaseLost",
    "LoggingHandler",
    "MemoryStorage",
    "NotCancellable",
    "PostgresStorage",
    "RestartPolicy",
    "RetryPolicy",
    "SQLiteStorage",
    "Status",
    "Step",
    "Storage",
    "StorageError",
    "Suspend",
    "TimerHandle",
    "TimerRecord",
    "UndeclaredEvent",
    "Unique",
    "UnknownWorkflow",
    "Wait",
    "WaitForEvent",
    "WaitTimeout",
    "Workflow",
    "WorkflowDefinitionError",
    "__version__",
    "engine",
    "get_workflow",
    "open_engine",
    "route",
    "serialization",
    "step",
    "trio_wall_clock",
]
