"""The asker: one question per (app, site), nobody to ask, timeouts, and what each scope of an answer leaves behind."""

import asyncio
import time

from hush.daemon.policy import RequestInfo, build
from hush.daemon.policy.ask import Asker
from hush.daemon.policy.holder import PolicyHolder
from hush.daemon.ui.questions import MAX_PENDING, MAX_PER_APP, Board

POLICY = "app: x\ndefault: {action: ask, timeout: 5s}\nrules:\n  - match: {host: other.example}\n    action: block\n"


class Prompt:
    def __init__(self, shows=True):
        self.shows, self.shown, self.closed = shows, [], []

    async def show(self, question):
        self.shown.append(question)
        return self.shows

    async def close(self, question):
        self.closed.append(question)


def asker(prompt=None, holder=None, pages=0):
    board = Board()
    board.count_pages(lambda: pages)
    a = Asker(board)
    a.configure(holder, prompt, None)
    return a, board


def ask(a, site="example.com", timeout=5.0, host=None):
    return a.ask(app="x", host=host or f"www.{site}", site=site, url=f"https://www.{site}/p", rule="x.yaml:2",
                 timeout=timeout, fallback="block")


def test_flows_to_one_site_share_one_question_and_its_answer():
    async def main():
        prompt = Prompt()
        a, board = asker(prompt)
        waiters = [asyncio.ensure_future(ask(a)) for _ in range(3)]
        other = asyncio.ensure_future(ask(a, "other.example"))
        await asyncio.sleep(0.05)
        assert len(prompt.shown) == 2 and a.asked == 2
        [question] = [q for q in prompt.shown if q.site == "example.com"]
        assert question.waiting == 3
        assert board.answer(question.id, "allow", "once", "dbus") is None
        results = await asyncio.gather(*waiters)
        assert {r.answer.verdict for r in results} == {"allow"} and all(r.outcome is None for r in results)
        assert not other.done()
        other.cancel()
        await asyncio.sleep(0)
        assert prompt.closed == [question]

    asyncio.run(main())


def test_nobody_to_ask_is_unavailable_at_once():
    async def main():
        for prompt in (None, Prompt(shows=False)):
            a, _ = asker(prompt)
            started = time.monotonic()
            result = await ask(a, timeout=30)
            assert result.answer is None and result.outcome == "ask-unavailable"
            assert time.monotonic() - started < 0.5

    asyncio.run(main())


def test_a_page_alone_is_someone_to_ask_and_no_answer_is_a_timeout():
    async def main():
        a, board = asker(None, pages=1)
        started = time.monotonic()
        result = await ask(a, timeout=0.3)
        assert result.outcome == "ask-timeout" and 0.25 < time.monotonic() - started < 2
        await asyncio.sleep(0)  # the board's done callback
        assert board.questions() == []  # withdrawn

    asyncio.run(main())


def test_for_an_hour_and_until_restart_are_temporary_rules_for_the_site():
    async def main():
        holder = PolicyHolder(build([("x.yaml", POLICY)]))
        a, board = asker(Prompt(), holder)
        req = RequestInfo.from_url("https://cdn.example.com/x")
        assert holder.current.decide("x", req).action.name == "ask"
        for scope, verdict in (("1h", "tor"), ("restart", "block")):
            waiter = asyncio.ensure_future(ask(a))
            await asyncio.sleep(0.01)
            [q] = board.questions()
            board.answer(q["id"], verdict, scope)
            await waiter
            decision = holder.current.decide("x", req)
            assert decision.action.name == verdict and decision.rule.index == 0
            [rule] = holder.temporary("x")
            if scope == "1h":
                assert 3590 < rule.expires - time.time() <= 3600
            else:
                assert rule.expires is None
            assert decision.rule.location.file == "x.yaml" and decision.rule.location.line == 2  # the ask rule's
        holder.close()

    asyncio.run(main())


def test_always_writes_the_rule_into_the_policy_file_and_reloads(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("# my policy\n" + POLICY)

    async def main():
        from hush.daemon.policy.loader import load

        holder = PolicyHolder(load([path]))
        reloads = []

        async def reload(trigger):
            reloads.append(trigger)
            holder.swap(load([path]))
            return True

        a, board = asker(Prompt(), holder)
        a.reload = reload
        waiter = asyncio.ensure_future(ask(a))
        await asyncio.sleep(0.01)
        board.answer(board.questions()[0]["id"], "allow", "always")
        await waiter
        for _ in range(100):
            if reloads:
                break
            await asyncio.sleep(0.02)
        assert reloads == ["ask: always allow example.com"]
        text = path.read_text()
        assert text.startswith("# my policy\n") and "example.com" in text
        decision = holder.loaded.decide("x", RequestInfo.from_url("https://www.example.com/"))
        assert decision.action.name == "allow" and decision.rule.location.file == str(path)
        holder.close()

    asyncio.run(main())


def test_the_question_is_shown_even_if_the_flow_that_put_it_goes_away():
    async def main():
        class Slow(Prompt):
            async def show(self, question):
                await asyncio.sleep(0.1)
                return await super().show(question)

        prompt = Slow(shows=False)
        a, _ = asker(prompt)
        first = asyncio.ensure_future(ask(a, timeout=30))
        await asyncio.sleep(0.01)
        first.cancel()  # its app gave up (timing: abandoned, overflow) while the prompt was being shown
        started = time.monotonic()
        result = await ask(a, timeout=30)  # shares the question: still told at once that nobody can answer
        assert result.outcome == "ask-unavailable" and time.monotonic() - started < 1
        assert len(prompt.shown) == 1

    asyncio.run(main())


def test_flows_that_go_away_leave_no_question_behind():
    async def main():
        a, board = asker(Prompt())
        waiters = [asyncio.ensure_future(ask(a, f"s{i}.example", timeout=30)) for i in range(20)]
        shared = [asyncio.ensure_future(ask(a, "s0.example", timeout=30)) for _ in range(2)]
        await asyncio.sleep(0.05)
        assert len(board.questions()) == 20 and board.pending("x", "s0.example").waiting == 3
        for w in waiters:
            w.cancel()  # their app closed them (timing: abandoned)
        await asyncio.sleep(0.01)
        assert len(board.questions()) == 1  # s0.example: two flows still wait on it
        for w in shared:
            w.cancel()
        await asyncio.sleep(0.01)
        assert board.questions() == [] and a._timers == {}
        seen = []
        board.subscribe(lambda event, data: seen.append((event, data)))
        waiter = asyncio.ensure_future(ask(a, "again.example", timeout=30))
        await asyncio.sleep(0.01)
        waiter.cancel()
        await asyncio.sleep(0.01)
        assert seen[-1] == ("question-closed", {"id": seen[0][1]["id"], "reason": "abandoned"})

    asyncio.run(main())


def test_a_question_is_withdrawn_at_its_deadline_whoever_waits():
    async def main():
        a, board = asker(Prompt())

        async def stuck(question):  # a waiter that never times out by itself
            await asyncio.sleep(30)

        a._wait = stuck
        waiter = asyncio.ensure_future(ask(a, timeout=0.2))
        await asyncio.sleep(0.05)
        assert len(board.questions()) == 1
        await asyncio.sleep(0.3)
        assert board.questions() == [] and a._timers == {}
        waiter.cancel()

    asyncio.run(main())


def test_one_apps_flood_does_not_make_another_apps_question_unavailable():
    async def main():
        a, board = asker(Prompt())
        flood = [asyncio.ensure_future(a.ask(app="t2", host=f"s{i}.example", site=f"s{i}.example", url=None,
                                             rule=None, timeout=30, fallback="allow")) for i in range(MAX_PENDING)]
        await asyncio.sleep(0.05)
        refused = [w.result() for w in flood if w.done()]
        assert len(board.questions()) == MAX_PER_APP
        assert len(refused) == MAX_PENDING - MAX_PER_APP and {r.outcome for r in refused} == {"ask-unavailable"}
        mine = asyncio.ensure_future(ask(a))  # app x
        await asyncio.sleep(0.05)
        assert not mine.done() and board.pending("x", "example.com") is not None
        board.answer(board.pending("x", "example.com").id, "allow", "once")
        assert (await mine).answer.verdict == "allow"
        for w in flood:
            w.cancel()
        await asyncio.sleep(0.01)
        assert board.questions() == []  # and t2's abandoned ones are gone: t2 is asked again
        again = asyncio.ensure_future(a.ask(app="t2", host="s0.example", site="s0.example", url=None, rule=None,
                                            timeout=30, fallback="allow"))
        await asyncio.sleep(0.01)
        assert not again.done() and len(board.questions()) == 1
        again.cancel()

    asyncio.run(main())
