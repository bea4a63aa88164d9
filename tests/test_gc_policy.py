"""The responder's garbage-collector policy (responder/gc_policy.py), in this process's own GC."""

from __future__ import annotations

import asyncio
import gc
import time
import weakref
from collections.abc import Callable, Iterator

import pytest

from responder.gc_policy import YOUNG_THRESHOLD, freeze_round, keep_heap_frozen
from tests.bounds import DEADLINE
from tests.responder_world import World, serve_asgi


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def cycle() -> tuple[Node, weakref.ref[Node]]:
    a, b = Node(), Node()
    a.other, b.other = b, a
    return a, weakref.ref(a)


def frozen(obj: object) -> bool:
    """In the permanent generation: tracked, yet in none of the collector's three."""
    return gc.is_tracked(obj) and not any(o is obj for o in gc.get_objects())


async def until(predicate: Callable[[], object], what: str, seconds: float = DEADLINE) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


@pytest.fixture(autouse=True)
def thawed() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()


def test_a_round_collects_garbage_before_freezing() -> None:
    node, ref = cycle()
    del node  # cyclic garbage now: only the collector can free it
    freeze_round()
    assert ref() is None
    assert gc.get_freeze_count() > 0


def test_frozen_objects_that_die_in_a_cycle_wait_for_the_full_round() -> None:
    node, ref = cycle()
    freeze_round()  # frozen while alive
    del node
    freeze_round()
    assert ref() is not None  # frozen: young rounds never scan it (the documented cost)
    freeze_round(full=True)
    assert ref() is None


async def test_the_task_freezes_then_thaws_when_cancelled() -> None:
    task = asyncio.create_task(keep_heap_frozen(freeze_seconds=0.01, full_seconds=0.05))
    await until(gc.get_freeze_count, "a first freeze round")
    node, ref = cycle()
    await until(lambda: frozen(ref()), "the cycle to be frozen while alive")
    del node
    await until(lambda: ref() is None, "a full round to free the dead cycle")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert gc.get_freeze_count() == 0


async def test_the_responder_runs_it_while_it_lives(world: World) -> None:
    async with serve_asgi(world):
        await until(gc.get_freeze_count, "the responder's first freeze round")
    assert gc.get_freeze_count() == 0


async def test_young_collections_are_rarer_while_rounds_run() -> None:
    before = gc.get_threshold()
    task = asyncio.create_task(keep_heap_frozen(freeze_seconds=0.01, full_seconds=10))
    await until(gc.get_freeze_count, "a first freeze round")
    assert gc.get_threshold()[0] >= YOUNG_THRESHOLD
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert gc.get_threshold() == before
