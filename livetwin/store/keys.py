"""Idempotency keys are scoped by twin: the stored form, and the scoping of keys stored before.

A twin belongs to one namespace, so (twin, key) also keeps tenants apart: the same key on two
twins is two observations, on one twin a duplicate. The store keeps the scoped key as one string.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from livetwin.engine.batch import decode_batch

SEPARATOR = "\x1f"  # the ASCII unit separator: a control character, not part of real ids


def scoped_key(twin: str, key: str) -> str:
    """The stored form of an observation's idempotency key. The key comes first: keys sent in
    time order (most are) then insert near each other in the index, whatever their twins."""
    return key + SEPARATOR + twin


def journaled_keys(entries: Iterable[tuple[int, bytes]]) -> Iterator[tuple[str, str, int]]:
    """(twin, key, seq) of every key in journal batches (seq, body), to scope keys stored
    before they were scoped.

    A journal batch holds exactly the observations kept when it was written, so its keys are
    the idempotency rows of its seq, and each key's twin is beside it.
    """
    for seq, body in entries:
        batch = decode_batch(body)
        for twin, key in zip(batch.twins, batch.keys or (), strict=False):
            if key is not None:
                yield twin, key, seq
