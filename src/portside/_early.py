"""Work a command starts as it begins, in a thread, while it imports the rest of portside.

``portside ls``, ``who`` and the overview spend their first 15-20 ms importing. The
kernel work they go on to ask for (the socket table's sock_diag dumps, the BPF task
iterators of :mod:`portside._taskiter`) is system calls, which release the interpreter
lock: started in a thread as the arguments are parsed, it runs on the other core while
the command imports. Each job's answer is taken once (:func:`take`), waiting for the job
if need be; the jobs see the machine as it was when the command started, as ``ss``'s
dumps do. A job that fails leaves no answer: the caller then does the work itself, the
usual way.

The CLI chooses the jobs (:func:`start`) and forgets them as the command ends
(:func:`end`); nothing here runs for a library caller that does not start any.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from _thread import LockType
    from collections.abc import Callable, Hashable, Sequence

    Job = tuple[Hashable, Callable[[], object]]
    Run = tuple[LockType, list[object], Callable[[], object]]

#: The started jobs' answers, by key: (a lock held until the job ended, [its answer]).
_answers: dict[Hashable, tuple[LockType, list[object]]] = {}
#: The running threads' ends: a lock each, held until its last job ended.
_thread_ends: list[LockType] = []


def start(groups: Sequence[Sequence[Job]]) -> None:
    """Run each group of jobs, (key, function) pairs, one after the other in a thread of
    its own; the answers of an earlier start are forgotten first. Where no thread can be
    started, nothing is."""
    end()
    import _thread

    for jobs in groups:
        if not jobs:
            continue
        runs: list[Run] = []
        for key, job in jobs:
            done = _thread.allocate_lock()
            done.acquire()
            answer: list[object] = []
            _answers[key] = (done, answer)
            runs.append((done, answer, job))
        finished = _thread.allocate_lock()
        finished.acquire()
        _thread_ends.append(finished)
        try:
            _thread.start_new_thread(_work, (runs, finished))
        except RuntimeError:  # no thread could be started
            for done, _answer, _job in runs:
                done.release()  # answerless: not started
            finished.release()
            return


def _work(runs: list[Run], finished: LockType) -> None:
    try:
        for done, answer, job in runs:
            try:
                answer.append(job())
            except Exception:  # noqa: S110 -- the caller then does the work itself
                pass
            finally:
                done.release()
    finally:
        finished.release()


def take(key: Hashable) -> tuple[bool, object]:
    """(True, the answer) of the job started under ``key``, once it ended; (False, None)
    when none was started, it failed, or its answer was taken already."""
    found = _answers.pop(key, None)
    if found is None:
        return False, None
    done, answer = found
    with done:  # released when the job ended
        pass
    return (True, answer[0]) if answer else (False, None)


def end() -> None:
    """Wait for the running jobs to end, and forget their answers, taken or not: what
    they saw belongs to the command that started them."""
    for finished in _thread_ends:
        with finished:
            pass
    _thread_ends.clear()
    _answers.clear()
