"""The step loop: schedule -> execute -> decide stops -> update -> output.

Everything here runs on one thread; AsyncEngine drives it from its own thread
and LLM drives it synchronously.

Faults are contained per request. An exception while preparing, sampling or
post-processing one request fails that request alone (a SeqDelta with
finish_reason "error" and the message), frees its blocks and aborts its n
siblings; the step goes on for everyone else. When the batch's execution
fails, it is split in halves and rerun (each seeded request's generator
rewound first) until the request that fails alone is found, so the others get
exactly the tokens they would have had. A step in which nothing could run
(every request failed, or the scheduler itself failed) poisons the engine
state: `reset` fails every request in flight, frees every block and empties
the prefix cache, and the loop goes on; `consecutive_faults` counts such
steps until one succeeds (AsyncEngine gives up after a few)."""
from __future__ import annotations

import logging
import time
from collections.abc import Callable

from jevons.config import EngineConfig
from jevons.engine.cache_tiers import build_cache_tiers
from jevons.engine.kv_cache_manager import KVCacheManager
from jevons.engine.window_blocks import WindowSpec
from jevons.engine.output_processor import SeqDelta, make_logprobs
from jevons.engine.reasoning import ReasoningBudget
from jevons.engine.request import Request
from jevons.engine.scheduler import Scheduler, ScheduledRequest, SchedulerOutput, runner_input
from jevons.engine.stopping import Stopping, Verdict
from jevons.engine.validation import check_request
from jevons.errors import InvalidRequestError
from jevons.runner.executor import WorkerError
from jevons.runner.executors import build_executor
from jevons.runner.spec.proposer import build_proposer
from jevons.outputs import TokenLogprobs
from jevons.runner.step_io import SampledToken
from jevons.sampling_params import SamplingParams
from jevons.structured import StructuredOutputManager

log = logging.getLogger("jevons")


class EngineCore:
    # Test hook: called as fault_injector(stage, request) at "prepare" (each
    # scheduled request), "sample" (each request that samples, every time a
    # batch executes), "detokenize" (each request with new tokens, as its
    # delta is built after update: its tokens are appended and counted) and
    # "forward" (request None, every time a batch executes). Raising there
    # acts like a fault at that point of the step.
    fault_injector: Callable[[str, Request | None], None] | None = None
    # Steps that failed as a whole (reset) and the latest fault; a step that
    # runs clears consecutive_faults.
    num_resets = 0
    consecutive_faults = 0
    last_fault: str | None = None

    def __init__(self, config: EngineConfig, progress: bool = True) -> None:
        self.config = config
        # The model in this process, or sharded over worker processes (runner/executor.py).
        self.executor = build_executor(config, progress)
        built = self.executor.built  # resolved, loaded, quantized; the KV cache sized and fingerprinted
        self.device, self.dtype = built.device, built.dtype
        self.model_path, self.model_name = built.model_path, built.model_name
        self.model_config, self.tokenizer = built.model_config, built.tokenizer
        self.quantization = built.quantization
        self.max_model_len = built.max_model_len
        self.kv_bytes_per_token = built.kv_bytes_per_token
        sched_cfg, bs = config.scheduler, built.block_size
        self.kv = KVCacheManager(built.num_blocks, bs, config.cache.enable_prefix_caching, built.fingerprint,
                                 window=None if built.kv_window is None else WindowSpec(*built.kv_window))
        if sched_cfg.max_num_batched_tokens < 1:
            raise ValueError("max_num_batched_tokens must be positive")
        spec = config.speculative_config
        runner_drafts = spec is not None and spec.method in ("mtp", "draft_model")  # drafts made in the runner
        self.scheduler = Scheduler(sched_cfg, self.kv, self.max_model_len, build_proposer(spec), runner_drafts)
        self.runner = self.executor.runner  # the in-process ModelRunner (None when workers hold the model)
        if runner_drafts:
            if self.runner is None:
                raise ValueError(f"speculative method {spec.method!r} runs with the in-process executor only")
            if spec.method == "mtp":
                self.runner.enable_mtp(spec.num_speculative_tokens)
            else:
                self._enable_draft_model(spec, built.num_blocks, progress)
        self.kv.attach_tiers(build_cache_tiers(config.cache, built.kv_caches, built.fingerprint))
        think_end = self.tokenizer.encode("</think>", add_special_tokens=False)
        self.structured = StructuredOutputManager(self.tokenizer, self.model_config.vocab_size,
                                                  think_end[0] if len(think_end) == 1 else None)
        # Every stop decision (token rules, stop strings, min_tokens, the reasoning budget, a complete grammar).
        self.stopping = Stopping(self.tokenizer, self.max_model_len,
                                 ReasoningBudget(lambda t: self.tokenizer.encode(t, add_special_tokens=False)),
                                 self.structured.accept)
        self.requests: dict[str, Request] = {}
        self.children: dict[str, list[Request]] = {}
        self.num_steps = 0
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0

    def _enable_draft_model(self, spec, num_blocks: int, progress: bool) -> None:
        """Load the draft model with a KV pool of the target's block count (the
        target's block tables address it) and hand it to the runner."""
        import dataclasses

        from jevons.runner.builder import build_model

        c = self.config
        cfg = dataclasses.replace(c, model=spec.model, speculative_config=None,
                                  cache=dataclasses.replace(c.cache, num_blocks=num_blocks, cache_bytes=None,
                                                            cpu_cache_bytes=0, disk_cache_dir=None))
        draft = build_model(cfg, progress)
        if draft.model_config.vocab_size != self.model_config.vocab_size:
            raise ValueError(f"the draft model's vocabulary ({draft.model_config.vocab_size}) is not the target's "
                             f"({self.model_config.vocab_size})")
        self.runner.enable_draft_model(draft.model, draft.kv_caches, spec.num_speculative_tokens)

    # --- requests -------------------------------------------------------------
    def validate(self, prompt_ids: list[int], params: SamplingParams, fit_context: bool = True) -> int:
        """Check a request can ever be served; return its effective max_tokens
        (engine/validation.py; `fit_context` False: a max_tokens the context
        cannot hold is an error rather than lowered)."""
        return check_request(prompt_ids, params, self.model_config.vocab_size, self.max_model_len, self.kv,
                             self.structured, fit_context)

    def add_request(self, request_id: str, prompt_ids: list[int], params: SamplingParams,
                    max_tokens: int | None = None) -> list[Request]:
        """Queue a request. `max_tokens`: what `validate` returned, when the
        caller validated it already (AsyncEngine, before it queues); else it is
        validated here."""
        if request_id in self.children:
            raise InvalidRequestError(f"request id {request_id!r} is already in flight")
        if max_tokens is None:
            max_tokens = self.validate(prompt_ids, params)
        eos = self.tokenizer.eos_token_ids
        # Build every sequence before registering any: a failure here leaves
        # nothing behind in the scheduler (no sequence without an owner).
        reqs: list[Request] = []
        for i in range(params.n):
            seed = None if params.seed is None else (params.seed + i) % 2**64
            rid = request_id if params.n == 1 else f"{request_id}#{i}"
            leader = reqs[0] if reqs else None
            reqs.append(Request(rid, prompt_ids, params, max_tokens, eos, request_id, i, seed, leader))
        try:
            for req in reqs:
                if params.structured_outputs is not None:
                    self.structured.add(req.request_id, params.structured_outputs)
                self.requests[req.request_id] = req
                self.stopping.add(req)
                self.scheduler.add(req)
        except BaseException:
            for req in reqs:
                self.scheduler.finish(req, "abort")
                self._forget(req)
            raise
        self.children[request_id] = reqs
        self.prompt_tokens_total += len(prompt_ids)
        return reqs

    def abort(self, request_id: str) -> list[SeqDelta]:
        """Abort a user request (all its sequences); frees their blocks now."""
        out = []
        for req in self.children.get(request_id, []):
            if not req.is_finished:
                self.scheduler.finish(req, "abort")
                out.append(SeqDelta(req.parent_id, req.index, [], "", None, "abort", None))
            self._forget(req)
        self.children.pop(request_id, None)
        return out

    def _forget(self, req: Request) -> None:
        self.stopping.forget(req.request_id)
        self.structured.forget(req.request_id)
        self.requests.pop(req.request_id, None)

    def has_work(self) -> bool:
        return self.scheduler.has_work()

    # --- the step ---------------------------------------------------------------
    def step(self) -> list[SeqDelta]:
        try:
            return self._step()
        except Exception as e:  # nothing in this step can be trusted: start over
            return self.reset(e)

    def _step(self) -> list[SeqDelta]:
        sched = self.scheduler.schedule()
        if sched.is_empty:
            return []
        failed: dict[Request, BaseException] = {}  # in order of failure
        banned: dict[str, list[int]] = {}
        for s in sched.scheduled:
            req = s.request
            try:
                if self.fault_injector is not None:
                    self.fault_injector("prepare", req)
                if s.samples:
                    banned[req.request_id] = self.stopping.banned(req)  # min_tokens keeps EOS and stop ids out
            except Exception as e:
                failed[req] = e
        runnable = [s for s in sched.scheduled if s.request not in failed]
        rows = self._execute_isolated(runnable, banned, failed) if runnable else {}
        if len(failed) == len(sched.scheduled) > 1:
            # Every request failed on its own: the fault is the engine's, not theirs.
            raise next(iter(failed.values()))
        self.consecutive_faults = self.consecutive_faults + 1 if failed and not rows else 0
        verdicts: dict[str, Verdict] = {}
        unsent: dict[str, list[int]] = {}
        for rid, draws in rows.items():
            req = self.requests[rid]
            try:  # which tokens to keep and whether they finish it: decided once, per token
                verdicts[rid] = self.stopping.decide(req, [d.token for d in draws])
            except Exception as e:
                failed[req] = e
                unsent[rid] = [d.token for d in draws]  # generated: usage counts them
        ok = SchedulerOutput([s for s in sched.scheduled if s.request not in failed], sched.preempted)
        advanced = self.scheduler.update(ok, verdicts)
        if self.scheduler.runner_drafts:  # MTP: drafts for the next step ride on the last draw
            for req in advanced:
                req.spec_token_ids = rows[req.request_id][-1].drafts or []
        self.num_steps += 1
        self.generation_tokens_total += sum(len(t) for t in advanced.values()) + sum(len(t) for t in unsent.values())
        deltas = self._emit(advanced, rows, failed, unsent)
        failed_parents: set[str] = set()
        for req, err in failed.items():
            if req.parent_id not in failed_parents:  # one error per user request; its siblings are aborted
                failed_parents.add(req.parent_id)
                deltas += self._fail(req, err, unsent)
        return deltas

    def _execute_isolated(self, scheduled: list[ScheduledRequest], banned: dict[str, list[int]],
                          failed: dict[Request, BaseException]) -> dict[str, list[SampledToken]]:
        """Run `scheduled` as one batch; if that fails, rerun each half alone
        (seeded generators rewound) until the requests that fail on their own
        are found. Returns request id -> its draws (several when drafts were
        accepted) for the requests that sampled; failures go into `failed`."""
        gens = [(s.request.generator, s.request.generator.get_state())
                for s in scheduled if s.request.generator is not None]
        try:
            if self.fault_injector is not None:
                self.fault_injector("forward", None)
                for s in scheduled:
                    if s.samples:
                        self.fault_injector("sample", s.request)
            inp = runner_input(scheduled, banned)
            self.structured.attach(inp)  # grammar masks for the constrained requests
            out = self.executor.execute(inp)
            return {rid: out.tokens(rid) for rid in out.sampled}
        except WorkerError:
            raise  # the workers are gone: no request can run, the step fails as a whole
        except Exception as e:
            error = e
        for g, state in gens:
            g.set_state(state)
        if len(scheduled) == 1:
            failed[scheduled[0].request] = error
            return {}
        log.warning("a step of %d requests failed (%r); running it in parts to find the request that fails",
                    len(scheduled), error)
        mid = len(scheduled) // 2
        rows = self._execute_isolated(scheduled[:mid], banned, failed)
        rows.update(self._execute_isolated(scheduled[mid:], banned, failed))
        return rows

    def _emit(self, advanced: dict[Request, list[int]], rows: dict[str, list[SampledToken]],
              failed: dict[Request, BaseException], unsent: dict[str, list[int]]) -> list[SeqDelta]:
        """Deltas for the requests that got tokens. One that fails here goes
        into `failed`, its tokens into `unsent` (so usage still counts them)."""
        deltas = []
        for req, tokens in advanced.items():
            try:
                if self.fault_injector is not None:
                    self.fault_injector("detokenize", req)
                lps = None
                draws = rows.get(req.request_id, [])
                if req.params.logprobs is not None and draws and draws[0].logprob is not None:
                    # tokens[i] came from draws[i] (a reasoning override keeps its draw's logprobs)
                    lps = [self._logprobs(req, t, d) for t, d in zip(tokens, draws)]
                text = self.stopping.release(req.request_id, req.is_finished)  # nothing a stop string may still cut
                delta = SeqDelta(req.parent_id, req.index, tokens, text, lps)
            except Exception as e:
                failed[req] = e
                unsent[req.request_id] = tokens
                continue
            if req.is_finished:
                delta.finish_reason, delta.stop_reason = req.finish_reason, req.stop_reason
            delta.num_cached_tokens = (req.leader or req).num_cached_tokens
            if delta.finish_reason is not None:
                self._finished(req, delta)
            deltas.append(delta)
        return deltas

    def _logprobs(self, req: Request, token: int, row: SampledToken) -> TokenLogprobs:
        k = req.params.logprobs
        top_ids = row.top_ids[:k] if row.top_ids is not None and k else None
        top_lps = row.top_logprobs[:k] if row.top_logprobs is not None and k else None
        return make_logprobs(token, row.logprob, row.rank, top_ids, top_lps, self._decode_one,
                             getattr(self.tokenizer, "token_bytes", None))

    def _finished(self, req: Request, delta: SeqDelta) -> None:
        now = time.monotonic()
        delta.timings = {
            "arrival": req.arrival_time,
            "first_scheduled": req.first_scheduled_time or now,
            "first_token": req.first_token_time or now,
            "finished": now,
        }
        self._forget(req)
        siblings = self.children.get(req.parent_id, [])
        if all(s.is_finished for s in siblings):
            self.children.pop(req.parent_id, None)

    def _fail(self, req: Request, err: BaseException, unsent: dict[str, list[int]]) -> list[SeqDelta]:
        """Fail one sequence and abort its unfinished siblings (they belong to
        the same answer); every block they hold is freed. Deltas carry the
        tokens generated this step that were not delivered, so usage counts them."""
        log.error("request %s failed in the engine: %r", req.request_id, err, exc_info=err)
        msg = f"{type(err).__name__}: {err}"
        self.scheduler.finish(req, "error")
        req.finish_reason, req.stop_reason = "error", None
        delta = SeqDelta(req.parent_id, req.index, unsent.get(req.request_id, []), "", None, "error", None, error=msg)
        delta.num_cached_tokens = (req.leader or req).num_cached_tokens
        self._finished(req, delta)
        out = [delta]
        for sib in self.children.pop(req.parent_id, []):
            if sib is not req and (not sib.is_finished or sib.request_id in unsent):
                self.scheduler.finish(sib, "abort")
                out.append(SeqDelta(sib.parent_id, sib.index, unsent.get(sib.request_id, []), "", None, "abort", None))
            self._forget(sib)
        return out

    def reset(self, err: BaseException | None = None) -> list[SeqDelta]:
        """After a fault that may have left the engine's state inconsistent: fail
        every request in flight, free every block, empty the device prefix cache
        and the scheduler's queues. Returns the requests' error deltas."""
        reason = ("the engine was reset" if err is None
                  else f"a step failed as a whole and the engine was reset ({type(err).__name__}: {err})")
        if err is not None:
            log.error("an engine step failed; failing %d in-flight sequences and resetting the engine",
                      len(self.requests), exc_info=err)
            self.num_resets += 1
            self.consecutive_faults += 1
            self.last_fault = f"{type(err).__name__}: {err}"
        out: list[SeqDelta] = []
        for reqs in list(self.children.values()):
            for req in reqs:
                try:
                    if not req.is_finished:
                        self.scheduler.finish(req, "error")
                        req.finish_reason = "error"
                        out.append(SeqDelta(req.parent_id, req.index, [], "", None, "error", None, error=reason))
                    self._forget(req)
                except Exception:  # keep going: what is left is dropped below
                    log.exception("while failing %s", req.request_id)
        self.children.clear()
        self.requests.clear()
        self.scheduler.waiting.clear()
        self.scheduler.running.clear()
        self.kv.reset_after_fault()
        return out

    def _decode_one(self, token: int) -> str:
        return self.tokenizer.decode([token], skip_special_tokens=False)

    # --- introspection ------------------------------------------------------------
    def num_free_blocks(self) -> int:
        return self.kv.pool.num_free

    def stats(self) -> dict[str, float]:
        return {
            "num_requests_running": len(self.scheduler.running),
            "num_requests_waiting": len(self.scheduler.waiting),
            "kv_cache_usage_perc": self.kv.usage(),
            "prefix_cache_queries": self.kv.prefix_queries,
            "prefix_cache_hits": self.kv.prefix_hits,
            "num_preemptions": self.scheduler.num_preemptions,
            "prompt_tokens": self.prompt_tokens_total,
            "generation_tokens": self.generation_tokens_total,
            **self.scheduler.spec_stats.as_dict(),
            **self.kv.cache_stats(),
        }

    def close(self) -> None:
        """Finish queued disk-cache writes and stop the writer thread (and the workers)."""
        self.kv.close()
        self.executor.shutdown()

