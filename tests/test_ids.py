"""Record ids: UUIDv7, ordered by the millisecond they were made in, never repeated."""

from __future__ import annotations

import os
import uuid

import pytest

from service import ids

pytestmark = pytest.mark.unit


def test_an_id_is_a_uuid7_in_32_hex_digits() -> None:
    value = ids.new_id()
    assert len(value) == 32
    parsed = uuid.UUID(value)
    assert parsed.version == 7
    assert parsed.variant == uuid.RFC_4122


def test_ids_of_a_later_millisecond_sort_after(monkeypatch: pytest.MonkeyPatch) -> None:
    """Time-ordered, so new rows append to the primary-key index."""
    now = [1_764_000_000_000_000_000]
    monkeypatch.setattr(ids.time, "time_ns", lambda: now[0])
    monkeypatch.setattr(ids, "_last", 0)  # earlier tests made ids at the real time
    earlier = [ids.new_id() for _ in range(50)]
    now[0] += 1_000_000  # one millisecond later
    later = [ids.new_id() for _ in range(50)]
    assert max(earlier) < min(later)
    assert int(earlier[0][:12], 16) == now[0] // 1_000_000 - 1  # the time is the prefix
    assert len(set(earlier + later)) == 100  # random within one millisecond


def test_ids_made_in_one_millisecond_increase_and_stay_uuid7(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ids.time, "time_ns", lambda: 1_764_000_000_000_000_000)
    monkeypatch.setattr(ids, "_last", 0)
    made = [ids.new_id() for _ in range(200)]
    assert made == sorted(made)
    assert len(set(made)) == 200
    assert all(uuid.UUID(value).version == 7 for value in made)


def test_ids_across_many_reads_of_the_kernel_generator_are_all_different() -> None:
    made = {ids.new_id() for _ in range(3 * ids._RANDOM_BYTES_PER_READ // 10 + 7)}
    assert len(made) == 3 * ids._RANDOM_BYTES_PER_READ // 10 + 7


def test_a_forked_child_does_not_make_its_parents_next_ids() -> None:
    """The random bytes are read ahead; a child must not reuse the parent's."""
    ids.new_id()  # the parent holds bytes read ahead
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child's coverage is not collected
        os.close(read)
        os.write(write, ids.new_id()[13:].encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = pipe.read()
    os.waitpid(pid, 0)
    parent = ids.new_id()[13:]  # past the time and version: the random part
    assert len(child) == 19
    assert child != parent
