"""Text renderings of a workflow graph: Mermaid and plain ASCII."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._workflow import Workflow

__all__ = ["render_ascii", "render_mermaid"]


def _versions(cls: type[Workflow]) -> list[type[Workflow]]:
    if cls.versions is not None:
        return [cls.versions[n] for n in sorted(cls.versions)]
    return [cls]


def render_mermaid(cls: type[Workflow]) -> str:
    """``flowchart TD``; dynamic (routed) edges are dotted, Done is a stadium."""
    lines = ["flowchart TD"]
    many = cls.versions is not None
    for wf in _versions(cls):
        definition = wf.definition()
        prefix = f"v{wf.version}_" if many else ""
        indent = "    "
        if many:
            lines.append(f'    subgraph {prefix[:-1]}["{wf.__name__} v{wf.version}"]')
            indent = "        "
        for key, step_cls in definition.steps.items():
            label = step_cls.__name__
            if getattr(step_cls, "terminal", False):
                lines.append(f'{indent}{prefix}{key}(["{label}"])')
            else:
                lines.append(f'{indent}{prefix}{key}["{label}"]')
        for edge in definition.graph().edges:
            arrow = "-.->" if edge.dynamic else "-->"
            lines.append(
                f"{indent}{prefix}{edge.source} {arrow}|{edge.event}| {prefix}{edge.target}"
            )
        if many:
            lines.append("    end")
    return "\n".join(lines) + "\n"


def render_ascii(cls: type[Workflow]) -> str:
    """One block per step in definition order, its transitions indented under it."""
    out: list[str] = []
    for wf in _versions(cls):
        definition = wf.definition()
        out.append(f"{wf.__name__} (version {wf.version}, start: {definition.start})")
        edges = definition.graph().edges
        for key, step_cls in definition.steps.items():
            out.append(f"  [{key}] {step_cls.__name__}")
            for edge in edges:
                if edge.source == key:
                    kind = "~~" if edge.dynamic else "--"
                    out.append(f"      {kind}{edge.event}{kind}> {edge.target}")
            if getattr(step_cls, "terminal", False):
                out.append("      (end)")
    return "\n".join(out) + "\n"
