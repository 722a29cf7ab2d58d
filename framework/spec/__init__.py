"""The spec: loading with overrides (``load``), its schema (``schema``) and validation (``validate``)."""

from framework.spec.load import load_spec
from framework.spec.schema import RaySection, Resources, RunSection, Spec, StageConfig
from framework.spec.validate import validate_spec

__all__ = [
    "RaySection",
    "Resources",
    "RunSection",
    "Spec",
    "StageConfig",
    "load_spec",
    "validate_spec",
]
