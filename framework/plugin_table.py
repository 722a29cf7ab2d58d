"""What ``infer-run plugins`` prints: one row per registered component, as JSON or a table."""

from __future__ import annotations

from framework.registry import Registry

COLUMNS = ("kind", "name", "source", "class")


def plugin_rows(registry: Registry) -> list[dict[str, str | None]]:
    """Every component with its class, plugin, distribution and version (``--json``)."""
    return [
        {
            "kind": e.kind,
            "name": e.name,
            "class": e.class_path,
            "plugin": e.plugin,
            "distribution": e.distribution,
            "version": e.version,
        }
        for e in registry.all()
    ]


def plugin_table(rows: list[dict[str, str | None]]) -> list[str]:
    """The rows as aligned lines: kind, name, distribution and version (or the plugin, for a
    module no distribution declares), class. Widths come from the content: a fixed width let
    a long distribution name push its class out of line."""
    cells = [
        [
            str(r["kind"]),
            str(r["name"]),
            f"{r['distribution']} {r['version']}" if r["distribution"] else str(r["plugin"]),
            str(r["class"]),
        ]
        for r in rows
    ]
    # Every column but the last padded to its longest cell: no trailing spaces.
    widths = [max((len(line[i]) for line in cells), default=0) for i in range(len(COLUMNS) - 1)]
    return [
        "  ".join([*(c.ljust(w) for c, w in zip(line[:-1], widths, strict=True)), line[-1]])
        for line in cells
    ]
