"""infer-run plugin: the ``efficientnet_lite0`` model, ImageNet weights included.

Registered through the ``infer_run`` entry-point group (see pyproject.toml), so after
``pip install infer-efficientnet-lite`` a spec only names it::

    models: [{type: efficientnet_lite0}]
"""

from __future__ import annotations

from typing import Any

from framework import hookimpl

__all__ = ["EfficientNetLite0"]


def __getattr__(name: str) -> Any:
    # The model imports torch: loaded when used, not by every run that loads the plugins.
    if name == "EfficientNetLite0":
        from infer_efficientnet_lite.model import EfficientNetLite0

        return EfficientNetLite0
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@hookimpl
def register_models(register):
    # A "module:Class" path: imported when a spec names the model, so the plugin costs
    # nothing (torch's import, seconds) to runs that do not use it.
    register("efficientnet_lite0", "infer_efficientnet_lite.model:EfficientNetLite0")
