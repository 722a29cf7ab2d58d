"""A plugin that registers a model under a name a built-in already uses."""

from framework import Model, hookimpl


class OtherEcho(Model):
    def __call__(self, batch):
        return batch


@hookimpl
def register_models(register):
    register("echo", OtherEcho)
