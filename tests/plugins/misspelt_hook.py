"""A plugin whose author typed ``register_model`` for ``register_models``."""

from framework import hookimpl


@hookimpl
def register_model(register):
    register("never", object)
