"""Plugins with the mistakes plugin authors make, one per class: the framework names each
in one line instead of crashing, running them as if nothing were wrong, or blaming rows."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import ray.data

from framework import Batch, Preprocessor, Reader, hookimpl


class NoInit(Preprocessor):
    """No __init__ of its own: built with no arguments, and takes none."""

    def __call__(self, batch: Batch) -> Batch:
        batch["seen"] = np.ones(len(batch["id"]), dtype=np.int64)
        return batch


class BreaksContract(Preprocessor):
    def __init__(self, how: str) -> None:
        self.how = how

    def __call__(self, batch: Batch) -> Batch:
        ids = batch["id"]
        if self.how == "fewer_rows":
            return {k: v[:-1] for k, v in batch.items()}
        if self.how == "drop_id":
            return {k: v for k, v in batch.items() if k != "id"}
        if self.how == "dataframe":
            return pd.DataFrame(batch)  # type: ignore[return-value]
        if self.how == "rows":
            return [{"id": i} for i in ids]  # type: ignore[return-value]
        if self.how == "list_column":
            return {**batch, "tags": [f"t{i}" for i in range(len(ids))]}  # type: ignore[dict-item]
        if self.how == "changed_ids":
            return {**batch, "id": np.array([f"{i} " for i in ids], dtype=object)}
        if self.how == "reordered":
            return {k: v[::-1] for k, v in batch.items()}
        if self.how == "scalar_column":  # np.asarray of one number: an array with no rows
            return {**batch, "score": np.asarray(float(len(ids)))}
        raise AssertionError(self.how)


class ForgetsParams(Preprocessor):
    """Its worker_params renamed a key: binding and check() pass, every worker fails."""

    def __init__(self, words: str = "a,b") -> None:
        self.words = words.split(",") if isinstance(words, str) else words

    @classmethod
    def worker_params(cls, params: Mapping[str, Any]) -> dict[str, Any]:
        return {"word_list": params["words"].split(",")}

    def __call__(self, batch: Batch) -> Batch:
        return batch


class CheckRaises(Preprocessor):
    @classmethod
    def check(cls, params):
        raise FileNotFoundError("vocab.txt")

    def __call__(self, batch: Batch) -> Batch:
        return batch


class CheckReturnsText(Preprocessor):
    @classmethod
    def check(cls, params):
        return "no vocabulary"

    def __call__(self, batch: Batch) -> Batch:
        return batch


class NoIdReader(Reader):
    def read(self) -> ray.data.Dataset:
        return ray.data.from_items([{"x": float(i)} for i in range(5)])


def _divide(batch: dict) -> dict:
    batch["x"] = np.array([int(x) // 0 for x in batch["x"]])
    return batch


class BuggyReader(Reader):
    """Its own dataset divides integers by zero in a Ray task: a plugin's bug."""

    def read(self) -> ray.data.Dataset:
        rows = [{"id": f"r{i}", "x": i} for i in range(5)]
        return ray.data.from_items(rows).map_batches(_divide)


class ListReader(Reader):
    def read(self) -> ray.data.Dataset:
        return [{"id": "a", "x": 1.0}]  # type: ignore[return-value]


@hookimpl
def register_preprocessors(register):
    register("no_init", NoInit)
    register("breaks_contract", BreaksContract)
    register("forgets_params", ForgetsParams)
    register("check_raises", CheckRaises)
    register("check_returns_text", CheckReturnsText)


@hookimpl
def register_readers(register):
    register("no_id_reader", NoIdReader)
    register("list_reader", ListReader)
    register("buggy_reader", BuggyReader)


class RaisingHook:
    """Imports a missing library inside the hook, not at module level."""

    @staticmethod
    @hookimpl
    def register_models(register):
        import not_installed_library_xyz  # noqa: F401


class ReturningHook:
    @staticmethod
    @hookimpl
    def register_models(register):
        return {"returned": NoInit}


class ReversedRegister:
    @staticmethod
    @hookimpl
    def register_preprocessors(register):
        register(NoInit, "no_init_2")


class WrongBase:
    @staticmethod
    @hookimpl
    def register_models(register):
        register("not_a_model", NoInit)


class NoCall(Preprocessor):
    """A stage without ``__call__``: it can never be built."""


class Incomplete:
    @staticmethod
    @hookimpl
    def register_preprocessors(register):
        register("no_call", NoCall)


class ByPathMissing:
    @staticmethod
    @hookimpl
    def register_preprocessors(register):
        register("gone", "tests.plugins.not_there:Gone")


class ByPathWrongBase:
    @staticmethod
    @hookimpl
    def register_models(register):
        register("not_a_model", "tests.plugins.careless:NoInit")


class ByPathWithoutColon:
    @staticmethod
    @hookimpl
    def register_preprocessors(register):
        register("no_colon", "tests.plugins.careless.NoInit")


class MisnamedArgument:
    @staticmethod
    @hookimpl
    def register_models(reg):
        reg("x", NoInit)
