"""The responder's garbage-collector policy (responder/gc_policy.py), in this process's own GC."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Iterator

import pytest

from responder.gc_policy import freeze_round, keep_heap_frozen
from tests.responder_world import World, serve_asgi


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def cycle() -> tuple[Node, weakref.ref[Node]]:
    a, b = Node(), Node()
    a.other, b.other = b, a
    return a, weakref.ref(a)


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
    for _ in range(200):
        if gc.get_freeze_count():
            break
        await asyncio.sleep(0.01)
    assert gc.get_freeze_count() > 0
    node, ref = cycle()
    await asyncio.sleep(0.05)  # frozen alive, then ...
    del node
    for _ in range(200):  # ... freed by a full round within full_seconds
        if ref() is None:
            break
        await asyncio.sleep(0.01)
    assert ref() is None
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert gc.get_freeze_count() == 0


async def test_the_responder_runs_it_while_it_lives(world: World) -> None:
    async with serve_asgi(world):
        for _ in range(300):
            if gc.get_freeze_count():
                break
            await asyncio.sleep(0.01)
        assert gc.get_freeze_count() > 0
    assert gc.get_freeze_count() == 0
