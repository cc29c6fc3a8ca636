"""The in-process runner: pytest asks for one case at a time, the runner works ahead.

When an item asks for its result, the runner also starts the cases pytest will run next (the
"upcoming" cases the caller passes): hosted calls overlap on a thread pool of `concurrency`
threads, cases of a batching model (the bundled SmolLM2) go to it in batches of `batch_size`,
and anything else (fakes, echo) simply runs when asked. Results still come back one case at a
time, in the order asked, so every case stays its own pytest item. Model-graded assertions ask
the `judges` the runner is given (the session's).
"""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import islice
from typing import Any

from ..cache import ResponseCache
from ..execute import AnsweredCase, answer_batch, error_result, execute_case, grade_answered, model_error
from ..judging import Judges, judge_calls
from ..models.base import Model, ModelError, answering_ahead
from ..models.specs import ModelSpec
from ..records import CaseResult
from ..sandbox import Sandbox
from ..suite.model import Case
from .execution import ExecutionSettings

__all__ = ["CaseRunner", "lookahead_window"]

Pair = tuple[Case, str]  # a case and its pytest node id


def lookahead_window(concurrency: int, batch_size: int, parallel_batches: int = 1) -> int:
    """How many cases a runner keeps started ahead: enough to keep every thread (or every batch
    a model generates at once, and the next ones) busy while pytest reports or a test holds the
    main thread. The xdist scheduler (runners/scheduling.py) sends each worker this many cases,
    so the worker can see them."""
    return 2 * max(max(1, concurrency), max(1, batch_size) * max(1, parallel_batches))


class CaseRunner:
    """Maps cases to results in this process; see the module docstring. `execution` gives the
    concurrency and batch size (this process's share)."""

    def __init__(
        self,
        model_for: Callable[[ModelSpec], Model],
        cache: Callable[[], ResponseCache],
        execution: ExecutionSettings,
        judges: Judges | None = None,
        sandbox: Sandbox | None = None,
    ) -> None:
        self._model_for = model_for
        self._cache = cache
        self._judges = judges
        self._sandbox = sandbox
        self.concurrency = max(1, execution.concurrency)
        self.batch_size = max(1, execution.batch_size)
        self.window = lookahead_window(self.concurrency, self.batch_size)  # grows with a model's parallel batches
        self._pending: dict[str, Future[CaseResult]] = {}
        self._kinds: dict[str, tuple[str, Model]] = {}  # by ModelSpec.key
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._batches: ThreadPoolExecutor | None = None
        self._loops: list[Any] = []  # an asyncio event loop per call thread, closed with the pool

    # ------------------------------------------------------------------ public

    def result(self, case: Case, nodeid: str, upcoming: Iterable[Pair] = ()) -> CaseResult:
        """`case`'s result; starts `upcoming` cases (those pytest runs next) in the background."""
        if case.error is not None:  # a case that cannot run (suite/cases.failed_case): no model call
            return error_result(case, nodeid, case.error)
        with self._lock:
            future = self._pending.pop(nodeid, None)
            idle = not self._pending
        if future is None and idle and self._kind(case)[0] == "inline":
            # Nothing runs ahead and this case runs when asked (echo, fakes): looking at the
            # upcoming cases would cost every such case a scan. A later hosted or batching case
            # starts the look-ahead when pytest reaches it.
            return self._run_one(case, nodeid)
        if future is None:
            future = self._start([(case, nodeid)], upcoming, required=nodeid).get(nodeid)
        else:
            self._start([], upcoming)
        if future is None:  # runs inline: nothing to gain from starting it elsewhere
            return self._run_one(case, nodeid)
        return future.result()

    def map(self, pairs: Iterable[Pair]) -> Iterator[CaseResult]:
        """Results of `pairs`, in order, reading the input lazily (`window` cases ahead)."""
        source = iter(pairs)
        ahead: deque[Pair] = deque(islice(source, self.window))
        while ahead:
            case, nodeid = ahead.popleft()
            ahead.extend(islice(source, self.window - len(ahead)))
            yield self.result(case, nodeid, list(ahead))

    def preset(self, nodeid: str, result: CaseResult) -> None:
        """A result computed elsewhere (the Spark backend): `result(nodeid)` returns it."""
        future: Future[CaseResult] = Future()
        future.set_result(result)
        with self._lock:
            self._pending[nodeid] = future

    def close(self) -> None:
        for executor in (self._batches, self._pool):  # a running batch may still hand grading to the pool
            if executor is not None:
                executor.shutdown(wait=True, cancel_futures=True)
        self._pool = self._batches = None
        for loop in self._loops:
            loop.close()
        self._loops.clear()

    # ------------------------------------------------------------------ scheduling

    def _run_one(self, case: Case, nodeid: str) -> CaseResult:
        try:
            model = self._model_for(case.model)
        except ModelError as exc:
            return model_error(case, nodeid, exc)
        return execute_case(case, model, self._cache(), nodeid, judges=self._judges, sandbox=self._sandbox)

    def _kind(self, case: Case) -> tuple[str, Model | None]:
        known = self._kinds.get(case.model.key)
        if known is not None:
            return known
        try:
            model = self._model_for(case.model)
        except ModelError:
            return "inline", None  # the error is reported when the case is asked for
        if self.batch_size > 1 and callable(getattr(model, "generate_batch", None)):
            kind = "batch"
            # A model that generates several batches at once (the bundled model: one per core)
            # keeps them all busy, with as many queued behind: while a long test holds pytest's
            # main thread (a fuzz block shrinking), the idle replicas answer the cases after it.
            parallel = max(1, int(getattr(model, "parallel_batches", 1)))
            self.window = max(self.window, lookahead_window(self.concurrency, self.batch_size, parallel))
        elif getattr(model, "concurrent", False):
            kind = "pool"
        else:
            kind = "inline"
        self._kinds[case.model.key] = (kind, model)
        return kind, model

    def _start(
        self, first: list[Pair], upcoming: Iterable[Pair], required: str | None = None
    ) -> dict[str, Future[CaseResult]]:
        """Start `first` and as many `upcoming` cases as the window allows; returns new futures."""
        with self._lock:
            for case, _ in first:
                self._kind(case)  # a batching model met here sets the window before it is used
            room = self.window - len(self._pending)
            chosen = list(first)
            seen = {nodeid for _, nodeid in chosen}
            exhausted = True
            for case, nodeid in upcoming:
                if len(chosen) >= max(room, len(first)):
                    exhausted = False
                    break
                if nodeid in self._pending or nodeid in seen or case.error is not None or case.chain is not None:
                    continue  # errors need no call; a chained case waits for the ones before it
                seen.add(nodeid)
                chosen.append((case, nodeid))
            started: dict[str, Future[CaseResult]] = {}
            batches: dict[int, tuple[Model, list[Pair]]] = {}
            for case, nodeid in chosen:
                kind, model = self._kind(case)
                if kind == "pool":
                    started[nodeid] = self._executor("pool").submit(
                        execute_case, case, model, self._cache(), nodeid, judges=self._judges, sandbox=self._sandbox
                    )
                elif kind == "batch":
                    batches.setdefault(id(model), (model, []))[1].append((case, nodeid))  # type: ignore[arg-type]
            for model, pairs in batches.values():
                for chunk_start in range(0, len(pairs), self.batch_size):
                    chunk = pairs[chunk_start : chunk_start + self.batch_size]
                    needed_now = any(n == required for _, n in chunk)
                    # A short last chunk waits for more cases, unless it is needed now or
                    # nothing more is coming.
                    if len(chunk) < self.batch_size and not exhausted and not needed_now:
                        break
                    started.update(self._submit_batch(model, chunk, ahead=not needed_now))
            self._pending.update({n: f for n, f in started.items() if n != required})
            return started

    def _submit_batch(self, model: Model, chunk: list[Pair], ahead: bool = True) -> dict[str, Future[CaseResult]]:
        """Answer `chunk` on a batch thread; `ahead` when no test waits on it yet (a model may let
        the calls tests wait on go first: models/replica_turns.py)."""
        futures: dict[str, Future[CaseResult]] = {nodeid: Future() for _, nodeid in chunk}
        # A case with judges waits on them, not on the cores: it is graded on the call threads,
        # beside the others of its batch, while the next batch generates. (The pool is made
        # here, under the runner's lock, not in the batch thread.)
        judged = self.concurrency > 1 and any(judge_calls(case.assertions) for case, _ in chunk)
        calls = self._executor("pool") if judged else None

        def grade(answered: AnsweredCase, future: Future[CaseResult]) -> None:
            try:
                future.set_result(grade_answered(answered, self._cache(), self._judges, self._sandbox))
            except BaseException as exc:  # surfaces in the item that waits for it
                future.set_exception(exc)

        def run() -> None:
            try:
                with answering_ahead() if ahead else contextlib.nullcontext():
                    answered = answer_batch(chunk, model, self._cache())
            except BaseException as exc:
                for future in futures.values():
                    future.set_exception(exc)
                return
            for item, (_, nodeid) in zip(answered, chunk):
                if calls is not None and judge_calls(item.case.assertions):
                    calls.submit(grade, item, futures[nodeid])
                else:
                    grade(item, futures[nodeid])

        # As many batches at once as the model generates at once (the bundled model: one per
        # core it has); a batch thread also grades its answers, beside the next batch generating.
        self._executor("batch", getattr(model, "parallel_batches", 1)).submit(run)
        return futures

    def _executor(self, kind: str, threads: int = 1) -> ThreadPoolExecutor:
        if kind == "pool":
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    self.concurrency, thread_name_prefix="promptopt-call", initializer=self._give_loop
                )
            return self._pool
        if self._batches is None:
            self._batches = ThreadPoolExecutor(max(1, threads), thread_name_prefix="promptopt-batch")
        return self._batches

    def _give_loop(self) -> None:
        """Each call thread gets an event loop of its own. litellm reports every sync call's timing
        through an async hook (`_service_logger._dispatch_from_sync`); in a thread without an event
        loop it does so with `asyncio.run`, which builds and tears down a loop (a socket pair, an
        epoll) per call: about 0.5 ms of CPU per call, under the GIL the calls share."""
        import asyncio

        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loops.append(loop)
