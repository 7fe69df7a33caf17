"""The ask action's contract with the live view (daemon/ui/questions.py)."""

from __future__ import annotations

import asyncio
import functools

import pytest

from hush.daemon.ui.questions import MAX_PENDING, MAX_PER_APP, Answer, Board, Full, Question


def run(test):
    """Run an async test on a fresh event loop (no pytest-asyncio here)."""
    @functools.wraps(test)
    def wrapper() -> None:
        asyncio.run(test())
    return wrapper


def q(**kw) -> Question:
    fields = {"app": "signal", "host": "www.example.com", "site": "example.com",
              "url": "https://www.example.com/a?secret=1", "rule": "signal.yaml:3"}
    return Question(**{**fields, **kw})


@run
async def test_post_publishes_and_the_page_answers() -> None:
    board = Board(redaction="no-query")
    seen: list[tuple[str, dict]] = []
    board.subscribe(lambda event, data: seen.append((event, data)))
    question = q()
    assert board.post(question) is None
    assert seen[0][0] == "question"
    assert seen[0][1]["url"] == "https://www.example.com/a"  # redacted as the audit is
    assert board.pending("signal", "example.com") is question
    assert board.answer(question.id, "allow", "once") is None
    assert await asyncio.wait_for(question.answer, 1) == Answer("allow", "once", "page")
    await asyncio.sleep(0)  # done callbacks run on the loop
    assert seen[-1] == ("question-closed", {"id": question.id, "reason": "answered", "verdict": "allow",
                                            "scope": "once", "source": "page"})
    assert board.pending("signal", "example.com") is None
    assert board.questions() == []


@run
async def test_answers_outside_the_question_are_refused() -> None:
    board = Board()
    question = q(verdicts=("allow", "block"))
    board.post(question)
    assert board.answer(question.id, "tor", "once") == "verdict must be one of allow, block"
    assert board.answer(question.id, "allow", "forever") == "scope must be one of once, 1h, restart, always"
    assert board.answer("nope", "allow", "once") is not None
    assert not question.answer.done()


@run
async def test_withdraw_on_timeout_tells_the_page() -> None:
    board = Board()
    seen: list[tuple[str, dict]] = []
    board.subscribe(lambda event, data: seen.append((event, data)))
    question = q(timeout=0.01)
    board.post(question)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(asyncio.shield(question.answer), question.timeout)
    board.withdraw(question.id, "timeout")
    await asyncio.sleep(0)
    assert seen[-1] == ("question-closed", {"id": question.id, "reason": "timeout"})
    assert board.answer(question.id, "allow", "once") is not None  # too late


@run
async def test_another_answerer_settles_it_too() -> None:
    board = Board()
    question = q()
    board.post(question)
    question.answer.set_result(Answer("block", "1h", "dbus"))
    await asyncio.sleep(0)
    assert board.questions() == []
    assert board.answer(question.id, "allow", "once") is not None


@run
async def test_bounded_and_listening() -> None:
    board = Board()
    assert not board.listening()
    board.count_pages(lambda: 2)
    assert board.listening()
    for i in range(MAX_PENDING):
        board.post(q(app=f"app{i // MAX_PER_APP}"))
    with pytest.raises(Full):
        board.post(q(app="another"))


@run
async def test_one_app_holds_at_most_its_share_of_the_board() -> None:
    assert MAX_PER_APP < MAX_PENDING
    board = Board()
    for i in range(MAX_PER_APP):
        board.post(q(site=f"s{i}.example"))
    with pytest.raises(Full, match="signal has"):
        board.post(q(site="one-more.example"))
    board.post(q(app="other"))  # another app is still asked
    assert len(board.questions()) == MAX_PER_APP + 1
