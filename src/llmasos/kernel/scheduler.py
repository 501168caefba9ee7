"""Token-level scheduler: continuous batching with chunked prefill, priorities, weighted fair share, aging
and preemption.

Every step fills a token budget. All running decodes go first (one token each), so streams keep flowing; the
rest of the budget goes to prompt chunks. Candidates are ranked by (priority class, app virtual time,
arrival): the priority class is the request's priority minus one level per `aging_seconds` of waiting, so
nothing starves; an app's virtual time is the tokens it was served divided by its weight, so apps that
compete share the model in proportion to their weights. Within one step each app's prompt chunks are capped
at its weighted share of the budget, and a step that carries a more urgent prompt is not topped up with less
urgent ones, which keeps that step short. When KV blocks run out, the worst-ranked running sequence is
preempted (its blocks freed, its tokens recomputed later).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from llmasos.kernel.block_manager import BlockManager
from llmasos.kernel.sequence import Sequence, SequenceStatus


@dataclass
class SchedulerConfig:
    max_num_seqs: int = 128
    max_num_batched_tokens: int = 1024
    aging_seconds: float = 10.0  # one priority level gained per this many seconds of waiting
    watermark: float = 0.01  # fraction of KV blocks kept free when admitting new requests
    # While a more urgent app is active (a request of it seen within `latency_window` seconds, or the app
    # declared latency-sensitive), less urgent prompts get at most `latency_budget` tokens per step, so the
    # step an urgent request arrives during is short.
    latency_budget: int = 64
    latency_window: float = 5.0

    def __post_init__(self) -> None:
        if self.max_num_seqs < 1 or self.max_num_batched_tokens < 1:
            raise ValueError("max_num_seqs and max_num_batched_tokens must be >= 1")
        if self.aging_seconds <= 0:
            raise ValueError("aging_seconds must be > 0")
        if self.latency_budget < 1 or self.latency_window < 0:
            raise ValueError("latency_budget must be >= 1 and latency_window >= 0")


@dataclass
class SchedulerOutput:
    decodes: list[Sequence] = field(default_factory=list)
    prefills: list[tuple[Sequence, int]] = field(default_factory=list)  # (sequence, tokens this step)
    copies: list[tuple[int, int]] = field(default_factory=list)  # copy-on-write block copies to do first
    preempted: list[Sequence] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return len(self.decodes) + sum(n for _, n in self.prefills)

    @property
    def is_empty(self) -> bool:
        return not self.decodes and not self.prefills


class Scheduler:
    def __init__(self, config: SchedulerConfig, block_manager: BlockManager) -> None:
        self.config = config
        self.blocks = block_manager
        self.waiting: list[Sequence] = []
        self.running: list[Sequence] = []
        self.app_vtime: dict[str, float] = {}
        self.last_seen: dict[int, float] = {}  # priority -> when a request of that priority last arrived
        self.latency_sensitive: dict[str, int] = {}  # app id -> priority, for apps declared interactive
        self._deferred: set[int] = set()  # seq ids deferred by the previous step (not deferred again)

    def register_latency_sensitive(self, app_id: str, priority: int) -> None:
        """Declare an interactive app: less urgent prompts get short steps even before its first request."""
        self.latency_sensitive[app_id] = priority

    def unregister_latency_sensitive(self, app_id: str) -> None:
        self.latency_sensitive.pop(app_id, None)

    # -- queue management ------------------------------------------------------------------------------
    def add(self, seq: Sequence) -> None:
        # A newly active app starts at the current minimum virtual time: it gets its fair share from now
        # on, not a burst to make up for the time it was idle.
        active = self._active_vtimes()
        floor = min(active) if active else 0.0
        self.app_vtime[seq.app_id] = max(self.app_vtime.get(seq.app_id, 0.0), floor)
        seq.status = SequenceStatus.WAITING
        self.waiting.append(seq)
        self.last_seen[seq.priority] = max(self.last_seen.get(seq.priority, 0.0), seq.arrival_time)

    def add_running(self, seq: Sequence) -> None:
        """A forked child joins the running set directly (it shares its parent's computed blocks)."""
        seq.status = SequenceStatus.RUNNING
        self.running.append(seq)

    def remove(self, seq: Sequence) -> None:
        """Drop a finished or aborted sequence and free its blocks at once."""
        if seq in self.running:
            self.running.remove(seq)
        if seq in self.waiting:
            self.waiting.remove(seq)
        self.blocks.free_seq(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def _active_vtimes(self) -> list[float]:
        apps = {s.app_id for s in self.waiting} | {s.app_id for s in self.running}
        return [self.app_vtime[a] for a in apps if a in self.app_vtime]

    def account(self, seq: Sequence, num_tokens: int) -> None:
        self.app_vtime[seq.app_id] = self.app_vtime.get(seq.app_id, 0.0) + num_tokens / max(seq.weight, 1e-6)

    # -- ranking ---------------------------------------------------------------------------------------
    def priority_class(self, seq: Sequence, now: float) -> int:
        return seq.priority - math.floor(max(seq.waiting_time(now), 0.0) / self.config.aging_seconds)

    def rank(self, seq: Sequence, now: float) -> tuple[int, float, float, int]:
        return (self.priority_class(seq, now), self.app_vtime.get(seq.app_id, 0.0), seq.arrival_time, seq.seq_id)

    # -- the step --------------------------------------------------------------------------------------
    def schedule(self, now: float | None = None) -> SchedulerOutput:
        now = time.monotonic() if now is None else now
        out = SchedulerOutput()
        budget = self.config.max_num_batched_tokens
        ranked = sorted(self.running, key=lambda s: self.rank(s, now))
        scheduled: set[int] = set()

        def preempt_worse_than(seq: Sequence) -> bool:
            for victim in reversed(ranked):
                if victim is seq:
                    return False
                if victim.seq_id not in scheduled and victim.status is SequenceStatus.RUNNING:
                    self._preempt(victim, out)
                    return True
            return False

        def try_allocate(seq: Sequence, n: int) -> bool:
            while self.blocks.blocks_needed(seq, n) > self.blocks.num_free_blocks:
                if not preempt_worse_than(seq):
                    return False
            out.copies += self.blocks.allocate(seq, n)
            scheduled.add(seq.seq_id)
            return True

        # Prompts waiting for their first token, best-ranked first.
        candidates = sorted([s for s in ranked if s.num_uncomputed > 1] + self.waiting, key=lambda s: self.rank(s, now))
        # The step of a prompt from the most urgent app present defers less urgent work (their decodes, their
        # prompts) by one step, so that first token is not slowed down. Declared priorities decide this, not
        # aged ones: aging lifts a long-waiting request into the queue ahead (nothing starves there), it does
        # not make it as urgent as an interactive app. Nothing is deferred two steps in a row.
        best_base = min(s.priority for s in candidates) if candidates else None
        deferred_last, self._deferred = self._deferred, set()

        def deferrable(seq: Sequence) -> bool:
            return best_base is not None and seq.priority > best_base and seq.seq_id not in deferred_last

        def schedule_decodes(seqs: list[Sequence]) -> None:
            nonlocal budget
            for seq in seqs:
                if budget == 0 or seq.status is not SequenceStatus.RUNNING:
                    continue
                if try_allocate(seq, 1):
                    out.decodes.append(seq)
                    budget -= 1
                else:
                    self._preempt(seq, out)

        # 1. Decodes: one token for every running stream, less the deferred ones.
        decoding = [s for s in ranked if s.num_uncomputed == 1]
        held = [s for s in decoding if deferrable(s)]
        schedule_decodes([s for s in decoding if s not in held])

        # 2. Prompt chunks: running prefills in progress, then waiting requests.
        if out.preempted:  # admitting new work right after preempting would only thrash
            candidates = [s for s in candidates if s.status is SequenceStatus.RUNNING]
        deferred_prompts = [s for s in candidates if deferrable(s)]
        if candidates and budget:
            budget = self._schedule_prefills([s for s in candidates if not deferrable(s)], budget, now, out,
                                             try_allocate)

        # The urgent prompt could not run after all (memory, max_num_seqs): do not stall the held streams.
        # (Less urgent prompts still wait: nothing overtakes a prompt that waits for memory.)
        if best_base is not None and not any(s.priority <= best_base for s, _ in out.prefills):
            schedule_decodes(held)
        else:
            self._deferred = {s.seq_id for s in held + deferred_prompts}
        return out

    def _schedule_prefills(self, candidates, budget, now, out, try_allocate) -> int:  # noqa: ANN001
        weights: dict[str, float] = {}
        for s in candidates:
            weights[s.app_id] = max(weights.get(s.app_id, 0.0), s.weight)
        total_w = sum(weights.values())
        cap = {a: max(1, int(budget * w / total_w)) for a, w in weights.items()}
        used: dict[str, int] = {}
        recent = [p for p, t in self.last_seen.items() if now - t <= self.config.latency_window]
        recent += self.latency_sensitive.values()
        urgent_active = min(recent) if recent else None
        relaxed_left = self.config.latency_budget  # tokens left for less urgent prompts in this step
        planned: dict[int, int] = {}  # seq_id -> tokens scheduled this step
        # The watermark keeps room for running streams to grow; with nothing running it would only make a
        # prompt that needs the whole pool wait forever.
        watermark = int(self.config.watermark * self.blocks.num_blocks) if self.running else 0
        # Pass 1 respects each app's weighted share; pass 2 hands out what is left.
        blocked = False  # the head of the queue waits for memory; nobody overtakes it
        for capped in (True, False):
            for seq in candidates:
                if budget == 0 or blocked:
                    break
                if seq.status is SequenceStatus.FINISHED or seq in out.preempted:
                    continue
                limit = budget
                if capped:
                    limit = min(limit, cap[seq.app_id] - used.get(seq.app_id, 0))
                less_urgent = urgent_active is not None and seq.priority > urgent_active
                if less_urgent:
                    limit = min(limit, relaxed_left)
                have = planned.get(seq.seq_id, 0)
                extra = min(seq.num_uncomputed - have, limit)
                if extra <= 0:
                    continue
                admitting = seq.status is SequenceStatus.WAITING
                if admitting:
                    if len(self.running) >= self.config.max_num_seqs:
                        continue
                    self.blocks.match_prefix(seq)
                    extra = min(seq.num_uncomputed, limit)
                    if self.blocks.blocks_needed(seq, extra) + watermark > self.blocks.num_free_blocks:
                        self.blocks.free_seq(seq)  # return any prefix blocks it borrowed
                        blocked = True
                        break
                if not try_allocate(seq, have + extra):
                    if admitting:
                        self.blocks.free_seq(seq)
                        blocked = True
                        break
                    if have:
                        continue  # keep what it already has this step
                    self._preempt(seq, out)
                    continue
                if admitting:
                    self.waiting.remove(seq)
                    seq.status = SequenceStatus.RUNNING
                    self.running.append(seq)
                planned[seq.seq_id] = have + extra
                used[seq.app_id] = used.get(seq.app_id, 0) + extra
                if less_urgent:
                    relaxed_left -= extra
                budget -= extra
        by_id = {s.seq_id: s for s in candidates}
        out.prefills += [(by_id[i], n) for i, n in planned.items()]
        return budget

    def _preempt(self, seq: Sequence, out: SchedulerOutput) -> None:
        """Recompute-style preemption: drop the sequence's KV blocks and queue it again."""
        self.blocks.free_seq(seq)
        if seq in self.running:
            self.running.remove(seq)
        seq.status = SequenceStatus.WAITING
        seq.num_preemptions += 1
        self.waiting.append(seq)
        out.preempted.append(seq)
        if seq in out.decodes:
            out.decodes.remove(seq)
        out.prefills = [(s, n) for s, n in out.prefills if s is not seq]
