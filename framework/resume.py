"""Resume an interrupted run: keep what was committed, redo only the rest.

A run writes ``_infer_run_manifest.json`` into its output before any data: the spec's
settings that shape the output rows, their fingerprint, and what each component reports
about itself (the weights used), and where its dead letters go; it says the run is not
finished until it ends without a failure (a --replay refuses one that is not). A resumed
run must match both, and the dead letters' place; it then reads back the ids already in
committed output files and the dead-letter records, drops files a kill cut short (a file
it cannot read at all stops it), and skips those ids.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import Any

import pyarrow.fs as pafs

from framework.components import Writer
from framework.dead_letter import ARCHIVE, ErrorPolicy, jsonl_ids
from framework.errors import InputError
from framework.redact import redact
from framework.replay import is_whole_file
from framework.spec import Spec
from framework.storage import filesystem_for

MANIFEST_NAME = "_infer_run_manifest.json"
# The resolved spec beside the output: what --resume needs when the spec given differs.
SPEC_NAME = "_infer_run_spec.yaml"
DEAD_LETTER_DIR = "_dead_letter"


# What makes the output rows what they are. Left out, so that a crashed run can be
# finished with them changed: resources (a smaller batch after running out of memory, a
# bigger cluster; also inside a ``from_model`` copy of a model node), storage access,
# the writer's overwrite flag, and the ray, run, errors and benchmark sections.
RESULT_SECTIONS = ("reader", "preprocessors", "models", "postprocessors", "writer")
NOT_RESULTS = ("resources", "overwrite", "storage")


def result_settings(resolved: dict[str, Any]) -> dict[str, Any]:
    """Every ``section.key`` of the resolved spec that shapes the output, secrets masked."""
    flat: dict[str, Any] = {}

    def walk(value: Any, path: str) -> None:
        if isinstance(value, dict) and value:
            for key, item in value.items():
                if key not in NOT_RESULTS:
                    walk(item, f"{path}.{key}")
        elif isinstance(value, list) and value:
            for i, item in enumerate(value):
                walk(item, f"{path}[{i}]")
        else:
            flat[path] = value

    masked = redact(resolved)
    for section in RESULT_SECTIONS:
        nodes = masked.get(section) or []
        for i, node in enumerate(nodes if isinstance(nodes, list) else [nodes]):
            walk(node, f"{section}[{i}]" if isinstance(nodes, list) else section)
    return flat


def manifest(
    resolved: dict[str, Any], components: list[dict[str, Any]], dead_letter: str | None = None
) -> dict[str, Any]:
    """``dead_letter``: where the run's records go (``errors.dead_letter``, resolved)."""
    settings = result_settings(resolved)
    text = json.dumps(settings, sort_keys=True, default=str)
    found = {
        "fingerprint": hashlib.sha256(text.encode()).hexdigest(),
        "settings": settings,
        "components": components,
    }
    return found if dead_letter is None else {**found, "dead_letter": dead_letter}


def _changes(before: Any, now: dict[str, Any], most: int = 3) -> str:
    """`` (models[0].scale: 2.0 -> 3.0, ...)`` for the keys that differ; empty when the
    earlier manifest holds nothing to compare (written by an older infer-run)."""
    if not isinstance(before, dict):
        return ""
    keys = sorted(k for k in {*before, *now} if before.get(k, "-") != now.get(k, "-"))

    def shown(value: Any) -> str:
        text = "(unset)" if value is None else str(value)
        return f"{text[:12]}..." if len(text) > 40 else text  # a sha256 needs no more

    pairs = [f"{k}: {shown(before.get(k))} -> {shown(now.get(k))}" for k in keys[:most]]
    more = f", and {len(keys) - most} more" if len(keys) > most else ""
    return f" ({', '.join(pairs)}{more})" if pairs else ""


def _by_path(components: Any) -> dict[str, Any] | None:
    """Components' facts as ``path.key`` -> value, for naming what changed."""
    if not isinstance(components, list):
        return None
    return {
        f"{c.get('path')}.{k}": v for c in components if isinstance(c, dict) for k, v in c.items()
    }


def write_manifest(writer: Writer, content: dict[str, Any]) -> None:
    """The run's first write to its output: where it fails, the output is not writable."""
    fs, root = filesystem_for(writer.path, writer.storage)
    try:
        fs.create_dir(root, recursive=True)
        # Written aside, then moved: a kill mid-write must not leave a manifest cut short,
        # which would make the output impossible to resume.
        with fs.open_output_stream(f"{root}/{MANIFEST_NAME}.partial") as out:
            out.write(json.dumps(content, indent=2, default=str).encode())
        fs.move(f"{root}/{MANIFEST_NAME}.partial", f"{root}/{MANIFEST_NAME}")
    except OSError as exc:  # no such parent, permission denied, S3 access denied
        raise InputError(f"writer.path: cannot write to {writer.path}: {exc}") from exc


def check_resumable(
    writer: Writer, expected: dict[str, Any], flag: str = "--resume", same_spec: bool = True
) -> dict[str, Any]:
    """Refuse to add to an output whose model weights (and, if ``same_spec``, spec) differ;
    returns the manifest found."""
    fs, root = filesystem_for(writer.path, writer.storage)
    try:
        with fs.open_input_stream(f"{root}/{MANIFEST_NAME}") as f:
            found = json.loads(f.read())
    except FileNotFoundError:  # S3's missing key too; not its access denied
        raise InputError(
            f"{flag}: {writer.path} holds no earlier run (no {MANIFEST_NAME}) - run without {flag}"
        ) from None
    except OSError as exc:  # the earlier run is there: "no earlier run" sent users astray
        raise InputError(
            f"{flag}: cannot read {writer.path.rstrip('/')}/{MANIFEST_NAME}: {exc}"
        ) from None
    except ValueError as exc:  # empty or cut short: not JSON
        found = f"not JSON ({exc})"
    if not isinstance(found, dict):
        raise InputError(
            f"{flag}: the {MANIFEST_NAME} in {writer.path} is damaged: "
            f"{found if isinstance(found, str) else 'not a JSON object'} - pass --overwrite "
            "to start over"
        )
    if same_spec and found.get("fingerprint") != expected["fingerprint"]:
        changes = _changes(found.get("settings"), expected["settings"])
        if found.get("replay"):
            # The replay ran with a fix in its spec, and its rows are in the output:
            # --overwrite would throw them away with the rest.
            raise InputError(
                f"{flag}: the spec changed since the --replay that last wrote {writer.path}"
                f"{changes} - resume with the spec that replay ran (its resolved copy: "
                f"{writer.path.rstrip('/')}/{SPEC_NAME})"
            )
        raise InputError(
            f"{flag}: the spec changed since the run that wrote {writer.path}{changes} - pass "
            "--overwrite to start over"
        )
    if found.get("components") != expected["components"]:
        changed = _changes(_by_path(found.get("components")), _by_path(expected["components"]))
        raise InputError(
            f"{flag}: a component (model weights, plugin version) changed since the run that "
            f"wrote {writer.path}{changed} - pass --overwrite to start over"
        )
    # The errors section may change, but not where the records are: --resume reads the
    # done rows' records, and --replay the rows to run, from the new place only, and the
    # rows recorded in the old one ran and were recorded again.
    before, now = found.get("dead_letter"), expected.get("dead_letter")
    if isinstance(before, str) and isinstance(now, str) and before.rstrip("/") != now.rstrip("/"):
        raise InputError(
            f"{flag}: errors.dead_letter changed since the run that wrote {writer.path} "
            f"({before} -> {now}): its records are in {before} - set errors.dead_letter back "
            f"to {before}"
        )
    return found


def check_replay_finished(
    found: dict[str, Any],
    errors: ErrorPolicy,
    records: list[tuple[str, bytes]],
    written: set[Any],
    output: str,
) -> None:
    """Refuse a --replay while a killed one has rows in neither the output nor the records.

    Their records are in the killed replay's archive, which no later replay reads, and a
    second archive on top would leave them there for good. --resume runs exactly the rows
    neither written nor recorded, which is what finishing that replay means.
    """
    replay = found.get("replay")
    if not isinstance(replay, dict) or not replay.get("running"):
        return
    name = str(replay.get("archive"))
    if not ARCHIVE.fullmatch(name):  # a manifest edited by hand names no archive of ours
        return
    fs, root = filesystem_for(str(errors.dead_letter), errors.storage)
    listing = fs.get_file_info(pafs.FileSelector(f"{root}/{name}", allow_not_found=True))
    archived = [info.path for info in listing if info.type == pafs.FileType.File]
    recorded = {i for _, data in records for i in jsonl_ids(data)[0]}
    left = {
        i
        for _, data in errors.read_records(archived)
        for i in jsonl_ids(data)[0]
        if i not in written and i not in recorded
    }
    if left:
        output = output.rstrip("/")
        limit = replay.get("limit")
        ended = f"stopped at run.limit={limit}" if limit is not None else "was interrupted"
        raise InputError(
            f"--replay: the replay whose records are in {str(errors.dead_letter).rstrip('/')}/"
            f"{name} {ended}: {len(left)} of its rows are neither in {output} nor "
            "dead-lettered - finish it with --resume and the spec it ran (its resolved copy: "
            f"{output}/{SPEC_NAME}), then --replay what fails again"
        )


def check_run_finished(found: dict[str, Any], output: str) -> None:
    """Refuse a --replay after a run or --resume that did not finish (killed, or stopped by
    a failure): the rows it left are neither written nor recorded, and a replay runs only
    recorded ones, leaving the others, without a word, to a --resume."""
    if found.get("finished") is False:  # a manifest without the flag predates it: finished
        raise InputError(
            f"--replay: the run that wrote {output} did not finish - --resume it first, "
            "then --replay"
        )


def mark_running(writer: Writer, content: dict[str, Any]) -> None:
    """As a run or --resume starts: only its end (``mark_finished``) says it finished."""
    write_manifest(writer, {**content, "finished": False})


def mark_finished(writer: Writer, content: dict[str, Any], every_row: bool) -> None:
    """After a run or --resume that ended without a failure. One that ran every row not
    yet done (``every_row``: no ``run.limit``) finished a killed replay's rows too."""
    replay = content.get("replay")
    if every_row and isinstance(replay, dict) and replay.get("running"):
        content = {**content, "replay": {**replay, "running": False}}
    write_manifest(writer, {**content, "finished": True})


def committed_ids(writer: Writer, errors: ErrorPolicy) -> tuple[list[Any], int, frozenset[str]]:
    """Ids already written (the writer's committed files) or dead-lettered, how many rows
    they are, and the whole unreadable files recorded: their records name a file, not a
    row, and a file found unreadable again is not recorded twice (a --replay keeps its
    record under another file name than the one the reader gives it)."""
    ids = list(writer.committed_ids())
    files: set[Any] = set()
    for _, data in errors.read_records():
        # A record cut short when the run was killed (the last line, without its newline)
        # is not counted: its row is redone. A record without an id marks no row done (the
        # row is checked again).
        *lines, _ = data.split(b"\n")
        for record in json_records(lines):
            if record.get("id") is not None:
                ids.append(record["id"])
                if is_whole_file(record):
                    files.add(record["id"])
    return ids, len(set(ids) - files), frozenset(map(str, files))


def json_records(lines: list[bytes]) -> Iterator[dict[str, Any]]:
    """The lines that are JSON objects, parsed."""
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            yield record


def earlier_dead_letters(spec: Spec, errors: ErrorPolicy, overwrite: bool) -> None:
    """A dead-letter folder of the user's naming outlives ``--overwrite`` of the output:
    its earlier records would make ``--resume`` skip rows and ``--replay`` redo written
    ones. A new run refuses them, and ``--overwrite`` clears them with the output."""
    if not spec.errors.dead_letter:
        return
    # Listed under --overwrite too: a folder that cannot be listed (a file) is refused
    # before the output is emptied.
    found = errors.earlier_files()
    if found and not overwrite:
        raise InputError(
            f"errors.dead_letter: {spec.errors.dead_letter} holds {len(found)} file(s) of an "
            "earlier run's dead letters - pass --overwrite to clear them with the output, "
            "--resume or --replay to go on with that run, or name another folder"
        )
