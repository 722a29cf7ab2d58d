"""Argument types for the command line: a bad flag value is a usage error (exit code 2)
at parse time, before anything runs."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable

from framework.spec.checks import unwritable

# Kubernetes names of namespaces and labels: RFC 1123 DNS labels.
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    parse.__name__ = f"at least {minimum}"
    return parse


def writable_file(text: str) -> str:
    problem = unwritable(text)
    if problem:
        raise argparse.ArgumentTypeError(f"cannot write {text}: {problem}")
    return text


def dns_label(text: str) -> str:
    if not DNS_LABEL.match(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a Kubernetes name (lower-case letters, digits and '-', "
            "at most 63, starting and ending with a letter or digit)"
        )
    return text


def not_empty(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text
