"""Sample keys met across a run's WebDataset shards, so a key in two shards is caught.

Read tasks share nothing, and no listing tells a shard's keys without reading it, so
each task names its samples' keys here, one call per block, before handing them on.
"""

from __future__ import annotations

import ray


class DuplicateKey(ValueError):
    """A sample key already read from another shard: its id would name two rows."""


@ray.remote(num_cpus=0)
class KeyClaims:
    """One per read: which shard each key came from. A shard that claims its own keys
    again (its read task retried after its worker died) is not a clash."""

    def __init__(self) -> None:
        self.shards: list[str] = []
        self.numbers: dict[str, int] = {}
        self.owners: dict[str, int] = {}  # key -> number of the shard it came from

    def claim(self, shard: str, keys: list[str]) -> tuple[int, str] | None:
        """Claim ``keys`` of ``shard`` in order, up to the first one another shard has:
        its position and that shard, or None when every key is this shard's."""
        number = self.numbers.setdefault(shard, len(self.shards))
        if number == len(self.shards):
            self.shards.append(shard)
        for position, key in enumerate(keys):
            owner = self.owners.setdefault(key, number)
            if owner != number:
                return position, self.shards[owner]
        return None


def clash_error(key: str, other: str) -> DuplicateKey:
    return DuplicateKey(
        f"sample key {key!r} is also in {other}: sample keys are the rows' ids and must be "
        "unique across shards"
    )
