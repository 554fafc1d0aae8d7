"""The early jobs' runner: answers taken once, waited for, lost with their command."""

import threading

import pytest

from portside import _early


@pytest.fixture(autouse=True)
def _nothing_left():
    _early.end()
    yield
    _early.end()


def test_each_answer_is_taken_once():
    _early.start([[("a", lambda: 1), ("b", lambda: [2])]])
    assert _early.take("b") == (True, [2])
    assert _early.take("a") == (True, 1)
    assert _early.take("a") == (False, None)
    assert _early.take("never started") == (False, None)


def test_a_failed_job_leaves_no_answer_and_the_next_still_runs():
    def fails() -> object:
        raise OSError("refused")

    _early.start([[("fails", fails), ("after", lambda: "ran")]])
    assert _early.take("fails") == (False, None)
    assert _early.take("after") == (True, "ran")


def test_take_waits_for_its_job_and_a_group_runs_in_order():
    release = threading.Event()
    order: list[str] = []

    def first() -> str:
        release.wait(timeout=30)
        order.append("first")
        return "slow"

    def second() -> str:
        order.append("second")
        return "fast"

    _early.start([[("first", first), ("second", second)], [("other group", lambda: 3)]])
    # The other group runs in a thread of its own: not held up by the first.
    assert _early.take("other group") == (True, 3)
    assert order == []
    release.set()
    assert _early.take("second") == (True, "fast")
    assert order == ["first", "second"]
    assert _early.take("first") == (True, "slow")


def test_end_forgets_what_was_not_taken_and_a_new_start_does_too():
    _early.start([[("kept", lambda: 1)]])
    _early.end()
    assert _early.take("kept") == (False, None)
    _early.start([[("earlier", lambda: 1)]])
    _early.start([[("later", lambda: 2)]])
    assert _early.take("earlier") == (False, None)
    assert _early.take("later") == (True, 2)
