"""infer-run plugin: the ``efficientnet_lite0`` model, ImageNet weights included.

Registered through the ``infer_run`` entry-point group (see pyproject.toml), so after
``pip install infer-efficientnet-lite`` a spec only names it::

    models: [{type: efficientnet_lite0}]
"""

from __future__ import annotations

from framework import hookimpl
from infer_efficientnet_lite.model import EfficientNetLite0

__all__ = ["EfficientNetLite0"]


@hookimpl
def register_models(register):
    register("efficientnet_lite0", EfficientNetLite0)
