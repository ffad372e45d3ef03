"""One attack swept over every radius of a threat model on a dataset (:class:`Sweep`): the passes (smallest radius
first, then each larger one on the triplets still robust), resume (every finished batch kept), sharding (each
torchrun rank its share, rank 0 the whole result) and precision (lower-precision steps, float32 re-checks and a
float32 finish). What judges a triplet is its :class:`~robustsim.attacks.decision.Decision`; what moves it is the
attack's :meth:`~robustsim.attacks.base.Attack.attack_batch`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Protocol

import torch

from robustsim.attacks.decision import Decision, Judge
from robustsim.attacks.geometry import Norm, RowNoise, rows_of
from robustsim.attacks.optim import Checked, apgd, classifier_objective, restrict
from robustsim.attacks.twoafc import CleanEmbeddings, TwoAFCClassifier, labels_from_p
from robustsim.ball import Ball
from robustsim.data.triplets import TripletDataset
from robustsim.dist import DistEnv, gather_objects, gather_rows, init_distributed, local_env, shard
from robustsim.precision import Precision, autocast
from robustsim.resume import BatchStore
from robustsim.runner import run_batches
from robustsim.threat import ThreatModel, format_eps


class Attack(Protocol):
    """What a sweep asks of an attack (:class:`robustsim.attacks.base.Attack` has it): the sweep module needs no
    import of the attacks' base, which imports it."""

    name: str
    norm: Norm
    seed: int
    precision: Precision

    @property
    def step_count(self) -> int | None: ...

    def with_steps(self, steps: int) -> Attack: ...

    @property
    def ball(self) -> Ball: ...

    def identity(self) -> str: ...

    def radii_together(self) -> bool: ...

    def work(self) -> int: ...

    def attack_batch(
        self, forward, x: torch.Tensor, y: torch.Tensor, eps: list[float], generator
    ) -> tuple[torch.Tensor, torch.Tensor]: ...

FINISH_SHARE = 0.5  # of a lower-precision attack's steps, run in float32 on the triplets it leaves standing


@dataclass
class AttackResult:
    """Per-triplet outcome of one attack at every epsilon."""

    attack: str
    norm: str
    eps: list[float]
    robust: torch.Tensor  # (n_eps, N) bool: still correct after the attack
    clean: torch.Tensor  # (N,) bool: correct without attack (p != 0.5 and margin > 0)
    keep: torch.Tensor  # (N,) bool: p != 0.5
    seconds: float = 0.0
    calls: int = 0
    seed: int = 0
    examples: dict[str, torch.Tensor] = field(default_factory=dict)
    abstain: torch.Tensor | None = None  # (N,) bool: the smoothed clean prediction abstained (smoothed metrics)

    @property
    def abstain_rate(self) -> float | None:
        """The share of counted triplets whose smoothed clean prediction abstained (None: not a smoothed metric)."""
        if self.abstain is None or not self.n:
            return None
        return float(self.abstain[self.keep].double().mean())

    @property
    def n(self) -> int:
        return int(self.keep.sum())

    @property
    def clean_accuracy(self) -> float:
        return float(self.clean[self.keep].double().mean()) if self.n else math.nan

    def robust_accuracy(self) -> list[float]:
        return [float(r[self.keep].double().mean()) if self.n else math.nan for r in self.robust]




def finish_steps(attack: Attack) -> int:
    """Float32 APGD steps for each triplet a lower-precision attack leaves standing: a share of the attack's own
    budget (:data:`FINISH_SHARE`; the lower-precision steps take the rest, so the total is the same)."""
    return max(1, round(FINISH_SHARE * (attack.step_count or 20)))


class Sweep:
    """``attack`` at every radius of ``threat`` on triplets judged by ``decision``: :meth:`over` runs it."""

    def __init__(
        self,
        attack: Attack,
        decision: Decision,
        threat: ThreatModel,
        n_examples: int = 4,
        store: BatchStore | None = None,
        clean: CleanEmbeddings | None = None,
    ) -> None:
        self.attack, self.decision, self.metric = attack, decision, decision.metric
        self.eps, self.target = list(threat.eps), threat.target
        self.n_examples, self.store, self.clean_cache = n_examples, store, clean
        self.counts: dict[int, int] = {}  # each triplet's RowNoise draws, carried from one pass to the next
        self.shown: dict[int, dict] = {}  # the examples (the share's first n_examples triplets): images, each point
        self.calls = 0

    def over(
        self, data: TripletDataset, batch_size: int, device, workers: int | None, env: DistEnv | None, progress: bool
    ) -> AttackResult | None:
        """Every triplet of ``data`` (this rank's share under torchrun; rank 0 gets the whole result, others None)."""
        self.metric = self.metric.to(device).eval()
        env = env or init_distributed(torch.device(device))
        share, mine = shard(data, env)
        t0 = time.perf_counter()
        robust, clean_ok, keep, abstain = self.passes(share, batch_size, device, workers, progress and env.main)
        stats = gather_objects((time.perf_counter() - t0, self.calls), env)
        n_all = len(data)
        robust = gather_rows(robust, mine, n_all, env, dim=1)
        clean_ok, keep = gather_rows(clean_ok, mine, n_all, env), gather_rows(keep, mine, n_all, env)
        abstain = gather_rows(abstain, mine, n_all, env)
        if robust is None or clean_ok is None or keep is None or abstain is None or stats is None:
            return None
        attack = self.attack
        return AttackResult(
            attack.name,
            attack.norm,
            self.eps,
            robust,
            clean_ok,
            keep,
            seconds=max(s for s, _ in stats),
            calls=sum(c for _, c in stats),
            seed=attack.seed,
            examples=_example_tensors(self.shown, len(self.eps)),
            abstain=abstain if self.decision.smoothed is not None else None,
        )

    def passes(self, share: TripletDataset, batch_size: int, device, workers: int | None, progress: bool):
        """Every radius over the share: one pass for all of them when the attack runs them together (an
        overridden :meth:`attack_batch`); else the smallest radius first, then each larger one on the triplets
        still robust, regathered into full batches (balls nest: at large radii few survive, and a batch of the
        survivors of many batches keeps the device busy where their own batches would run it on two or three
        rows). Returns (robust (n_eps, N), clean (N,), keep (N,), abstain (N,)) for the share's N triplets."""
        eps, attack = self.eps, self.attack
        if not len(share):  # a torchrun rank with no triplet (fewer triplets than ranks) still joins the gathers
            none = torch.zeros(0, dtype=torch.bool)
            return torch.zeros(len(eps), 0, dtype=torch.bool), none, none, none
        levels = [list(range(len(eps)))] if attack.radii_together() else [[i] for i in range(len(eps))]
        opts = dict(batch_size=batch_size, device=device, metric=self.metric, workers=workers, progress=progress)
        opts.update(env=local_env(device), unit="step", dims={"robust": 1})  # the share is this rank's already
        desc = f"{attack.name} {attack.norm}"
        first = run_batches(share, self.kept(levels[0], True), desc=desc, work=len(levels[0]) * attack.work(), **opts)
        assert first is not None
        robust = torch.zeros(len(eps), len(share), dtype=torch.bool)
        robust[: len(levels[0])] = first["robust"]
        for i in range(len(levels[0]), len(eps)):
            alive = robust[i - 1].nonzero()[:, 0]
            if not alive.numel():
                break
            desc = f"{attack.name} {attack.norm} eps {format_eps(eps[i])}"
            survivors = share.select(alive.tolist())
            rows = run_batches(survivors, self.kept([i], False), desc=desc, work=attack.work(), **opts)
            assert rows is not None
            robust[i, alive] = rows["robust"][0]
        return robust, first["clean"], first["keep"], first["abstain"]

    def kept(self, levels: list[int], first: bool):
        """The step over ``levels`` as a batch function, each finished batch kept in (and restored from) the store."""

        def run(batch: dict, tick) -> dict[str, torch.Tensor]:
            if self.store is None:
                return self.step(batch, tick, levels, first)
            part = f"v3|{self.attack.identity()}|{[self.eps[i] for i in levels]}|{self.target}"
            ids = batch["index"].tolist()
            saved = self.store.load(part, batch["index"], lambda r: record_problem(r, len(levels), ids))
            if saved is not None:
                self.calls += int(saved["calls"])
                for idx, ex in saved["examples"].items():
                    self.shown.setdefault(idx, {**ex, "adv": {}})["adv"].update(ex["adv"])
                self.counts.update(saved.get("counts", {}))
                return saved["rows"]
            before = self.calls
            rows = self.step(batch, tick, levels, first)
            shown = self.shown
            ex = {i: {**shown[i], "adv": {k: shown[i]["adv"][k] for k in levels}} for i in ids if i in shown}
            used = {i: self.counts[i] for i in ids if i in self.counts}
            self.store.save(part, batch["index"], {"rows": rows, "calls": self.calls - before, "examples": ex,
                                                   "counts": used})  # fmt: skip
            return rows

        return run

    def step(self, batch: dict, tick, levels: list[int], first: bool) -> dict[str, torch.Tensor]:
        """The radii ``levels`` on one batch; ``first``: the pass that also makes the clean decision (the later
        passes get only triplets still robust, so every row is a correct one)."""
        ref, x0, x1 = batch["ref"], batch["x0"], batch["x1"]
        cache = self.clean_cache if self.target != "all" else None
        known = cache.get(self.metric, batch) if cache is not None else None
        clf = TwoAFCClassifier(self.metric, ref, x0, x1, self.target, known)
        x = clf.clean_input()
        y, kp = labels_from_p(batch["p"].to(ref.device))
        ok, abstained = self.decision.clean(clf, batch, y, kp) if first else (kp, torch.zeros_like(kp))
        radii = [self.eps[i] for i in levels]
        rows = ok.nonzero()[:, 0]
        rob = torch.zeros(len(radii), x.shape[0], dtype=torch.bool, device=x.device)
        adv_all = x.unsqueeze(0).repeat(len(radii), *[1] * x.dim())
        if rows.numel():
            adv, broken = self.attack_rows(self.forward(clf, batch, y, tick), clf, batch, x, y, rows, radii)
            rob[:, rows] = ~broken
            adv_all[:, rows] = adv
        for j, idx in enumerate(batch["index"].tolist()):
            if first and len(self.shown) < self.n_examples:
                self.shown[idx] = {"ref": ref[j].cpu(), "x0": x0[j].cpu(), "x1": x1[j].cpu(), "adv": {}}
            if idx in self.shown:
                self.shown[idx]["adv"].update({i: adv_all[k, j].cpu() for k, i in enumerate(levels)})
        return {"robust": rob, "clean": ok, "keep": kp, "abstain": abstained}

    def forward(self, clf: TwoAFCClassifier, batch: dict, y: torch.Tensor, tick):
        """The model call the attack makes (counted, ticking the progress bar), with the decision's re-check."""
        attacked = self.decision.attacked(clf, batch, self.attack.seed)

        def forward(xa, rows):
            self.calls += 1
            tick(1)
            return attacked(xa, rows)

        confirm = self.decision.confirm(batch, y)  # a break counts when the smoothed prediction is wrong there too
        return forward if confirm is None else Checked(forward, confirm)

    def attack_rows(self, forward, clf, batch: dict, x, y, rows: torch.Tensor, radii: list[float]):
        """(points (n_radii, R, ...), broken (n_radii, R)) for the correct rows ``rows``: the attack's steps in its
        precision, every claim re-checked in float32, then the float32 finish of a lower precision."""
        attack, sub = self.attack, restrict(forward, rows)
        noise = RowNoise(attack.seed, batch["index"][rows.cpu()], self.counts)  # the same in any batch or shard
        with autocast(attack.precision, x.device):  # the re-check: float32
            adv, claimed = self.lower_precision(attack).attack_batch(sub, x[rows], y[rows], radii, noise)
        adv = adv.to(x.dtype)
        wrong = self.decision.wrong(clf, batch, rows, y)
        broken = self.decision.holds(claimed, self.verify(adv, x[rows], radii, wrong))
        if attack.precision != "fp32":
            adv, broken = self.finish(sub, x[rows], y[rows], radii, adv, broken, noise, wrong)
        return adv, broken

    @staticmethod
    def lower_precision(attack: Attack) -> Attack:
        """The attack as its lower-precision phase runs it: the budget less the float32 finish (a copy; an attack
        without a step count, or at fp32, runs as it is)."""
        full = attack.step_count
        if attack.precision == "fp32" or full is None:
            return attack
        return attack.with_steps(max(1, full - finish_steps(attack)))

    def finish(self, forward, x, y, radii, adv, broken, noise, wrong: Judge):
        """Mixed precision that does not weaken the attack: the rows still standing after the lower-precision steps
        get a float32 APGD-CE of :func:`finish_steps` from their best point at each radius (what bf16's rounding
        hid, float32 finds); every break it claims is verified like the others, and a break at one radius is one at
        every larger radius (the balls nest). Returns (adv, broken)."""
        shape = (-1, *[1] * (x.dim() - 1))
        steps, eot = finish_steps(self.attack), int(getattr(self.attack, "eot", 1))
        for i, e in enumerate(radii):
            left = (~broken[i]).nonzero()[:, 0]
            if not left.numel():
                continue
            eps_t = torch.full((left.numel(),), float(e), device=x.device)
            objective = classifier_objective(restrict(forward, left), y[left], "ce")
            found, _ = apgd(objective, x[left], eps_t, self.attack.norm, steps=steps, generator=rows_of(noise, left),
                            eot=eot, start=adv[i, left])  # fmt: skip
            new = adv[i].clone()
            new[left] = found.to(new.dtype)
            ok = self.verify(new.unsqueeze(0), x, [e], wrong)[0] & ~broken[i]
            for j in range(i, len(radii)):  # a break inside radius i lies inside every larger one
                take = ok & ~broken[j]
                adv[j] = torch.where(take.view(shape), new, adv[j])
                broken[j] = broken[j] | take
        return adv, broken

    def verify(self, adv: torch.Tensor, x: torch.Tensor, eps: list[float], wrong: Judge) -> torch.Tensor:
        """Claimed breaks that really are: inside ball and box, and ``wrong(point)`` says the decision there is not
        correct (the float32 metric's, or a smoothed metric's prediction)."""
        ok = torch.zeros(adv.shape[:2], dtype=torch.bool, device=adv.device)
        lp = self.attack.ball
        with torch.no_grad():
            for i, e in enumerate(eps):
                ok[i] = lp.contains(adv[i], x, e) & wrong(adv[i])
        return ok


def record_problem(record: dict, levels: int, ids: list[int]) -> str | None:
    """Why a resumed batch record cannot stand for its batch (None when it can): rows of the batch's shape, booleans
    obeying robust <= clean <= counted, a count of model calls, examples and noise counters of its own triplets."""
    rows, b = record.get("rows"), len(ids)
    if not isinstance(rows, dict):
        return "holds no rows"
    r, c, k = (rows.get(name) for name in ("robust", "clean", "keep"))
    if not all(isinstance(t, torch.Tensor) and t.dtype == torch.bool for t in (r, c, k)):
        return "holds rows that are not boolean tensors"
    if r.shape != (levels, b) or c.shape != (b,) or k.shape != (b,):
        return "holds rows of another batch's shape"
    if (r & ~c.unsqueeze(0)).any() or (c & ~k).any():
        return "breaks robust <= clean <= counted"
    calls = record.get("calls")
    if isinstance(calls, bool) or not isinstance(calls, int) or calls < 0:
        return "holds no count of model calls"
    examples, counts = record.get("examples"), record.get("counts")
    if not isinstance(examples, dict) or not isinstance(counts, dict) or not set(examples) | set(counts) <= set(ids):
        return "holds examples or noise counters of other triplets"
    if not all(isinstance(v, int) and v >= 0 for v in counts.values()):
        return "holds a noise counter that is not a count"
    return None


def _example_tensors(shown: dict[int, dict], n_eps: int) -> dict[str, torch.Tensor]:
    """The examples as tensors: ref, x0, x1 (k, ...), index (k,), adv (n_eps, k, ...), where a radius a triplet
    was not attacked at (broken at a smaller one, or wrong when clean) holds its point at the radius below."""
    if not shown:
        return {}
    out = {k: torch.stack([ex[k] for ex in shown.values()]) for k in ("ref", "x0", "x1")}
    out["index"] = torch.tensor(list(shown), dtype=torch.long)
    advs = []
    for ex in shown.values():
        points = [ex["adv"][0]]
        for i in range(1, n_eps):
            points.append(ex["adv"].get(i, points[-1]))
        advs.append(torch.stack(points))
    out["adv"] = torch.stack(advs, dim=1)
    return out
