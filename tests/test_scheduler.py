"""The token scheduler: chunked prefill beside decodes, priorities, weighted fair share, aging, preemption."""

from __future__ import annotations

import itertools

from llmasos.kernel.block_manager import BlockManager
from llmasos.kernel.sampling_params import SamplingParams
from llmasos.kernel.scheduler import Scheduler, SchedulerConfig
from llmasos.kernel.sequence import Sequence, SequenceStatus

_ids = itertools.count()
NOW = 1000.0


def mkseq(n_prompt: int, app: str = "a", priority: int = 0, weight: float = 1.0, arrival: float = NOW) -> Sequence:
    return Sequence(next(_ids), f"r{next(_ids)}", 0, list(range(1, n_prompt + 1)), n_prompt, SamplingParams(),
                    app_id=app, priority=priority, weight=weight, arrival_time=arrival)


def make(budget=16, blocks=64, bs=4, max_seqs=16, aging=10.0) -> Scheduler:
    return Scheduler(SchedulerConfig(max_seqs, budget, aging_seconds=aging, watermark=0.0),
                     BlockManager(blocks, bs, enable_prefix_caching=False))


def run(s: Scheduler, now: float = NOW):
    """One step: schedule, then pretend the model ran (advance computed tokens, sample a token when done)."""
    out = s.schedule(now)
    for seq, n in [(q, 1) for q in out.decodes] + out.prefills:
        seq.num_computed_tokens += n
        s.account(seq, n)
        if seq.num_computed_tokens == len(seq.token_ids):
            seq.token_ids.append(7)
    return out


def test_chunked_prefill_runs_beside_decodes():
    s = make(budget=8)
    a = mkseq(4)
    s.add(a)
    run(s)  # a prefilled, now decoding
    b = mkseq(30, arrival=NOW + 1)
    s.add(b)
    out = run(s)
    assert out.decodes == [a]
    assert out.prefills == [(b, 7)]  # the long prompt only takes what the decode left
    out = run(s)
    assert out.decodes == [a] and out.prefills == [(b, 7)]
    assert b.num_computed_tokens == 14


def test_fcfs_when_all_equal():
    s = make(budget=4)
    seqs = [mkseq(4, arrival=NOW + i) for i in range(3)]
    for q in reversed(seqs):
        s.add(q)
    order = [run(s).prefills[0][0] for _ in range(3)]
    assert order == seqs


def test_priority_runs_first_and_step_not_topped_up_with_lower_priority():
    s = make(budget=32)
    low = mkseq(8, priority=5, arrival=NOW - 1)
    high = mkseq(8, priority=-1, arrival=NOW)
    s.add(low)
    s.add(high)
    out = run(s)
    assert [q for q, _ in out.prefills] == [high]  # the urgent prompt's step stays short
    out = run(s)
    assert out.decodes == [high] and [q for q, _ in out.prefills] == [low]


def test_aging_lifts_a_starving_request():
    s = make(budget=8, aging=10.0)
    old = mkseq(8, priority=2, arrival=NOW - 25)  # waited 25 s: two levels gained, class 0
    new = mkseq(8, priority=1, arrival=NOW)
    s.add(new)
    s.add(old)
    # The more urgent app's prompt defers less urgent work for its step, but never two steps in a row: then
    # the aged request ranks ahead of a fresh, more urgent one.
    assert [q for q, _ in run(s).prefills] == [new]
    newer = mkseq(8, priority=1, arrival=NOW)
    s.add(newer)
    assert run(s).prefills[0][0] is old


def test_weighted_fair_share_of_the_prefill_budget():
    s = make(budget=16)
    heavy = mkseq(100, app="heavy", weight=3.0)
    light = mkseq(100, app="light", weight=1.0, arrival=NOW + 1)
    s.add(heavy)
    s.add(light)
    out = run(s)
    got = {q.app_id: n for q, n in out.prefills}
    assert got == {"heavy": 12, "light": 4}


def test_equal_apps_share_tokens_equally_over_steps():
    s = make(budget=4, max_seqs=64)
    for i in range(6):
        s.add(mkseq(8, app="a", arrival=NOW + i))  # app a arrived first with more work
    for i in range(2):
        s.add(mkseq(8, app="b", arrival=NOW + 10 + i))
    served = {"a": 0, "b": 0}
    for _ in range(4):
        for q, n in run(s).prefills:
            served[q.app_id] += n
    # Without fair share app "a" (earlier arrivals) would take all 16 tokens.
    assert served == {"a": 8, "b": 8}


def test_least_served_app_is_ranked_first():
    s = make(budget=4)
    busy, idle = mkseq(4, app="busy", arrival=NOW), mkseq(4, app="idle", arrival=NOW + 5)
    s.add(busy)
    s.add(idle)
    s.account(busy, 1000)  # "busy" has had a lot of model time since both became active
    assert s.rank(idle, NOW) < s.rank(busy, NOW)
    # An app that becomes active later starts at the current minimum virtual time, not at zero credit
    # from its idle period: it gets its share from now on, not a burst.
    s.remove(idle)
    late = mkseq(4, app="late", arrival=NOW + 9)
    s.add(late)
    assert s.app_vtime["late"] == s.app_vtime["busy"] == 1000


def test_preemption_frees_the_worst_ranked_sequence():
    s = make(budget=64, blocks=4, bs=4)
    keep = mkseq(4, arrival=NOW)
    victim = mkseq(4, arrival=NOW + 1)  # ranks below `keep` (later arrival, same class and app)
    s.add(keep)
    s.add(victim)
    run(s)  # both prefilled: 2 blocks used
    run(s)  # decodes need a second block each: 4 blocks used
    assert s.blocks.num_free_blocks == 0
    for _ in range(3):
        run(s)  # fill the second blocks
    out = run(s)  # both need a third block, only possible by preempting the worse-ranked one
    assert victim in out.preempted and keep in out.decodes
    assert victim.status is SequenceStatus.WAITING and victim.block_table == []
    assert victim.num_computed_tokens == 0 and victim.num_preemptions == 1
    assert len(victim.token_ids) > 4  # its generated tokens are kept and will be recomputed


def test_max_num_seqs_caps_running():
    s = make(budget=64, max_seqs=2)
    for i in range(4):
        s.add(mkseq(4, arrival=NOW + i))
    run(s)
    assert len(s.running) == 2 and len(s.waiting) == 2


def test_urgent_prompt_holds_less_urgent_decodes_for_its_step():
    s = make(budget=64)
    batch = [mkseq(4, app="batch", arrival=NOW) for _ in range(3)]
    for q in batch:
        s.add(q)
    run(s)  # all three prefilled, now decoding
    urgent = mkseq(8, app="chat", priority=-1, arrival=NOW)
    s.add(urgent)
    out = run(s)
    assert out.decodes == [] and out.prefills == [(urgent, 8)]
    out = run(s)
    assert sorted(q.seq_id for q in out.decodes) == sorted(q.seq_id for q in [urgent, *batch])


def test_deferral_follows_declared_priority_not_age_and_never_twice_in_a_row():
    s = make(budget=64)
    batch = [mkseq(4, app="batch", arrival=NOW - 30) for _ in range(3)]  # aged three levels: class -3
    for q in batch:
        s.add(q)
    run(s)
    chats = [mkseq(8, app="chat", priority=-1, arrival=NOW + i) for i in range(2)]
    s.add(chats[0])
    out = run(s)  # aged batch streams are still deferred for the interactive prompt's step
    assert out.decodes == [] and out.prefills == [(chats[0], 8)]
    s.add(chats[1])
    out = run(s)  # another urgent prompt at once: the batch streams were deferred last step, so they run
    assert {q.seq_id for q in batch} <= {q.seq_id for q in out.decodes}
    assert (chats[1], 8) in out.prefills


def test_held_decodes_run_when_the_urgent_prompt_cannot():
    s = make(budget=64, max_seqs=3)
    batch = [mkseq(4, app="batch", arrival=NOW) for _ in range(3)]
    for q in batch:
        s.add(q)
    run(s)
    s.add(mkseq(8, app="chat", priority=-1, arrival=NOW))  # no room: max_num_seqs is reached
    out = run(s)
    assert sorted(q.seq_id for q in out.decodes) == sorted(q.seq_id for q in batch) and out.prefills == []


def test_less_urgent_prompts_get_small_chunks_while_an_urgent_app_is_active():
    s = Scheduler(SchedulerConfig(16, 512, latency_budget=32, latency_window=5.0, watermark=0.0),
                  BlockManager(256, 4, enable_prefix_caching=False))
    chat = mkseq(8, app="chat", priority=-1, arrival=NOW)
    s.add(chat)
    run(s)
    s.remove(chat)  # the interactive request is done, but its app stays "active" for latency_window
    big = mkseq(400, app="batch", arrival=NOW + 1)
    s.add(big)
    assert run(s, now=NOW + 2).prefills == [(big, 32)]
    assert run(s, now=NOW + 10).prefills == [(big, 368)]  # the urgent app went quiet: full budget again


def test_a_declared_interactive_app_keeps_steps_short_before_its_first_request():
    s = Scheduler(SchedulerConfig(16, 512, latency_budget=32, watermark=0.0),
                  BlockManager(256, 4, enable_prefix_caching=False))
    big = mkseq(400, app="batch", arrival=NOW)
    s.add(big)
    s.register_latency_sensitive("chat", -1)
    assert run(s).prefills == [(big, 32)]
    s.unregister_latency_sensitive("chat")
    assert run(s).prefills == [(big, 368)]


def test_renice_changes_a_live_requests_rank(llm):
    """The engine accepts a priority change for a queued request: the next step ranks it anew."""
    eng = llm.engine
    p = SamplingParams(max_tokens=2, temperature=0)
    low = eng.add_request(list(range(1, 61)), p, priority=5, app_id="x")
    high = eng.add_request(list(range(2, 62)), p, priority=0, app_id="y")
    assert eng.renice(low, -5) is True
    assert eng.renice("no-such-request", 0) is False
    first = eng.scheduler.schedule()
    assert [s.request_id for s, _ in first.prefills][0] == low  # was the less urgent one
    for rid in (low, high):
        eng.abort_request(rid)
    # Undo the dry-run scheduling so the shared engine is clean for other tests.
    assert not eng.has_unfinished_requests()
