"""Argument types for the command line: a bad flag value is a usage error (exit code 2)
at parse time, before anything runs."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from decimal import Decimal

from framework.spec.checks import unwritable
from framework.storage import names_no_place

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


def place(text: str) -> str:
    """A folder to write, not one that names no place (``names_no_place``)."""
    if names_no_place(text):
        raise argparse.ArgumentTypeError("must not be empty")
    return text


# Kubernetes quantities (k8s.io/apimachinery resource.Quantity): a decimal number and an
# optional binary (Ki..Ei), decimal (m, k..E) or exponent (e3) suffix; "32GB" is not one.
QUANTITY = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+|[KMGTPE]i|[mkMGTPE])?$")
_SUFFIX = {
    **{s: 1024**p for p, s in enumerate(("", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"))},
    **{s: 1000**p for p, s in enumerate(("", "k", "M", "G", "T", "P", "E"))},
    "m": Decimal("0.001"),
}


def quantity_value(text: str) -> Decimal:
    """The number a Kubernetes quantity stands for (bytes, for memory); ValueError if none."""
    match = QUANTITY.match(text)
    if not match:
        raise ValueError(text)
    number, suffix = Decimal(match[1]), match[2] or ""
    if text.startswith("-"):
        number = -number
    if suffix[:1] in ("e", "E") and len(suffix) > 1:
        return number.scaleb(int(suffix[1:]))
    return number * _SUFFIX[suffix]


def k8s_memory(text: str) -> str:
    """A pod's memory as a Kubernetes quantity of at least one byte, kept as written."""
    try:
        value = quantity_value(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a Kubernetes quantity (e.g. 32Gi, 500Mi, 64G, 1e9; not 32GB)"
        ) from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least one byte, got {text!r}")
    return text


# Label keys: an optional DNS-subdomain prefix and '/', then a name; values: empty or a name.
LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def node_label(text: str) -> tuple[str, str]:
    """``LABEL=VALUE`` for a node selector, checked as Kubernetes checks label syntax."""
    key, eq, value = text.partition("=")
    prefix, slash, name = key.rpartition("/")
    if not eq:
        raise argparse.ArgumentTypeError(f"expected LABEL=VALUE, got {text!r}")
    if not LABEL_NAME.match(name) or (
        slash and (len(prefix) > 253 or not DNS_SUBDOMAIN.match(prefix))
    ):
        raise argparse.ArgumentTypeError(
            f"{key!r} is not a Kubernetes label key ([prefix/]name: a DNS subdomain prefix, "
            "a name of at most 63 letters, digits, '-', '_' or '.', starting and ending "
            "with a letter or digit)"
        )
    if value and not LABEL_NAME.match(value):
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a Kubernetes label value (at most 63 letters, digits, '-', '_' "
            "or '.', starting and ending with a letter or digit)"
        )
    return key, value


TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")


def node_taint(text: str) -> dict[str, str]:
    """``KEY[=VALUE][:EFFECT]``, a taint as ``kubectl taint`` spells it, turned into the
    toleration that lets a pod onto nodes carrying it (without an effect: any effect)."""
    head, colon, effect = text.rpartition(":") if ":" in text else (text, "", "")
    if colon and effect not in TAINT_EFFECTS:
        raise argparse.ArgumentTypeError(
            f"expected KEY[=VALUE][:EFFECT] with EFFECT one of {', '.join(TAINT_EFFECTS)}, "
            f"got {text!r}"
        )
    if "=" in head:
        key, value = node_label(head)
        toleration = {"key": key, "operator": "Equal", "value": value}
    else:
        key, _ = node_label(f"{head}=")
        toleration = {"key": key, "operator": "Exists"}
    return {**toleration, "effect": effect} if effect else toleration


def gpu_node_label(text: str) -> tuple[str | None, str, str]:
    """``[TYPE:]LABEL=VALUE``: a node label for the GPU pods of stages asking
    ``accelerator_type`` TYPE, or for all GPU pods. Label keys and values never hold ':',
    so one before the '=' ends the type."""
    head, eq, _ = text.partition("=")
    accelerator, colon, _ = head.partition(":")
    if not colon:
        return (None, *node_label(text))
    if not accelerator.strip():
        raise argparse.ArgumentTypeError(
            f"expected [TYPE:]LABEL=VALUE, got {text!r} (no accelerator type before ':')"
        )
    if not eq:
        raise argparse.ArgumentTypeError(f"expected [TYPE:]LABEL=VALUE, got {text!r}")
    return (accelerator, *node_label(text[len(accelerator) + 1 :]))
