"""Attack objects: ``attack(metric, data, eps=[...])`` returns results for every epsilon in one run.

The runner feeds the 2AFC classifier batch by batch, attacks only triplets still robust at the
previous (smaller) epsilon (balls nest, so a break stays a break), and re-checks every claimed
adversarial independently: it must lie in the ball and the [0, 1] box and flip the decision, or it
does not count. Robust accuracy is over triplets with p != 0.5; ties count as wrong.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from robustsim.attacks.geometry import NORMS, Norm, RowNoise, in_threat_model, rows_of
from robustsim.attacks.pgd import apgd, classifier_objective, restrict
from robustsim.attacks.twoafc import CleanEmbeddings, NoisyReference, TwoAFCClassifier, labels_from_p, margin
from robustsim.certify.smoothing import ABSTAIN, SmoothedMetric, stream_seed
from torch import nn

from robustsim.data.triplets import TripletDataset
from robustsim.dist import DistEnv, gather_objects, gather_rows, init_distributed, shard
from robustsim.errors import InputError
from robustsim.metrics.base import Metric
from robustsim.precision import Precision, autocast
from robustsim.resume import BatchStore
from robustsim.runner import run_batches
from robustsim.threat import ThreatModel, format_eps


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


FINISH_SHARE = 0.5  # of a lower-precision attack's steps, run in float32 on the triplets it leaves standing


class Attack:
    """Base class. Subclasses implement :meth:`run` (one epsilon tensor) or :meth:`attack_batch`."""

    name = "attack"

    def __init__(self, norm: Norm = "l2", seed: int = 0) -> None:
        if norm not in NORMS:
            raise InputError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
        self.norm, self.seed = norm, seed
        self.precision: Precision = "fp32"  # the attack steps' autocast; decisions and re-checks stay float32

    def work(self) -> int:
        """Model calls one epsilon of one batch costs at most (roughly): what a progress bar counts (with the float32
        finish of a lower precision)."""
        eot = int(getattr(self, "eot", 1))
        steps = int(getattr(self, "steps", 1)) * eot
        return steps * int(getattr(self, "restarts", 1) or 1) + 1  # the float32 finish comes out of the same budget

    def run(
        self, forward, x: torch.Tensor, y: torch.Tensor, eps: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Attack rows ``x`` (labels ``y``) within per-sample ``eps``; return (x_adv, claimed broken)."""
        raise NotImplementedError

    def attack_batch(
        self, forward, x: torch.Tensor, y: torch.Tensor, eps: list[float], generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """All epsilons (ascending) for one batch: (x_adv (n_eps, B, ...), claimed broken (n_eps, B)).

        x_adv holds each sample's break, else the attack's best (unverified) point for that epsilon."""
        adv = x.unsqueeze(0).repeat(len(eps), *[1] * x.dim())
        broken = torch.zeros(len(eps), x.shape[0], dtype=torch.bool, device=x.device)
        alive = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        for i, e in enumerate(eps):
            if i > 0:  # nested balls: a break at a smaller radius is a break here
                adv[i], broken[i] = adv[i - 1], broken[i - 1]
            rows = alive.nonzero()[:, 0]
            if rows.numel() == 0 or e == 0:
                continue
            eps_t = torch.full((rows.numel(),), float(e), device=x.device)
            xa, b = self.run(restrict(forward, rows), x[rows], y[rows], eps_t, rows_of(generator, rows))
            adv[i, rows] = xa  # the break, else the attack's best point
            broken[i, rows[b]] = True
            alive[rows[b]] = False
        return adv, broken

    def __call__(
        self,
        metric: Metric | SmoothedMetric,
        data: TripletDataset,
        threat: ThreatModel | Sequence[float],
        batch_size: int = 32,
        device: str | torch.device = "cpu",
        progress: bool = True,
        n_examples: int = 4,
        workers: int | None = None,
        env: DistEnv | None = None,
        store: BatchStore | None = None,
        clean: CleanEmbeddings | None = None,
    ) -> AttackResult | None:
        """Attack every triplet at every radius of ``threat`` (a list of radii: this attack's norm, the reference
        moving). A :class:`SmoothedMetric` is attacked through one noise draw per model call (use ``eot`` to
        average them) and judged by its prediction: an abstention or a flip is not robust.
        Under torchrun each rank attacks its share and rank 0 gets the whole result (others None).
        ``store`` keeps every finished batch (its results, model calls and examples), so an interrupted run
        continues where it stopped (:mod:`robustsim.resume`). ``clean`` shares the clean embeddings between the
        attacks of one run (:class:`~robustsim.attacks.twoafc.CleanEmbeddings`)."""
        threat = ThreatModel(self.norm, "ref", tuple(threat)) if not isinstance(threat, ThreatModel) else threat
        if threat.norm != self.norm:
            raise InputError(f"{self.name} attacks {self.norm} balls, not {threat.norm}: make_attack(name, threat)")
        eps, target = list(threat.eps), threat.target
        smoothed = metric if isinstance(metric, SmoothedMetric) else None
        if smoothed is not None:
            threat.require_reference("an attack on a smoothed metric")
            metric = smoothed.metric
        metric = metric.to(device).eval()
        env = env or init_distributed(torch.device(device))
        share, mine = shard(data, env)
        counts: dict[int, int] = {}  # each triplet's RowNoise draws, carried from one pass to the next
        shown: dict[int, dict] = {}  # the examples (the share's first n_examples triplets): images, each radius' point
        calls = [0]
        t0 = time.perf_counter()

        def step(batch: dict, tick, levels: list[int], first: bool) -> dict[str, torch.Tensor]:
            """The radii ``levels`` on one batch; ``first``: the pass that also makes the clean decision (the
            later passes get only triplets still robust, so every row is a correct one)."""
            ref, x0, x1 = batch["ref"], batch["x0"], batch["x1"]
            shared = clean is not None and target != "all"
            clf = TwoAFCClassifier(metric, ref, x0, x1, target, clean.get(metric, batch) if shared else None)
            attacked: nn.Module = clf
            if smoothed is not None:  # the attack sees one noise draw per call; decisions are the smoothed ones
                g = torch.Generator(device=ref.device).manual_seed(stream_seed(self.seed, int(batch["index"][0]), 3))
                attacked = NoisyReference(clf, smoothed.sigma, g)

            def forward(xa, rows):
                calls[0] += 1
                tick(1)
                return attacked(xa, rows)

            if smoothed is not None:  # a break counts when the smoothed prediction (the re-check) is wrong there

                def confirm(xa: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
                    ids = batch["index"][rows.cpu()]
                    with torch.autocast(xa.device.type, enabled=False):  # the re-check's own arithmetic
                        decided = smoothed.predict(xa.float(), x0[rows], x1[rows], ids=ids)
                    return decided.to(y.device) != y[rows]

                forward.confirm = confirm  # type: ignore[attr-defined]

            x = clf.clean_input()
            y, kp = labels_from_p(batch["p"].to(ref.device))
            abstained = torch.zeros_like(kp)
            with torch.no_grad():
                if not first:
                    ok = kp
                elif smoothed is None:
                    ok = (margin(clf.clean_logits(), y) > 0) & kp
                else:  # an abstention is not a correct decision
                    decided = smoothed.predict(ref, x0, x1, ids=batch["index"]).to(y.device)
                    ok, abstained = (decided == y) & kp, (decided == ABSTAIN) & kp
            radii = [eps[i] for i in levels]
            rows = ok.nonzero()[:, 0]
            rob = torch.zeros(len(radii), x.shape[0], dtype=torch.bool, device=x.device)
            adv_all = x.unsqueeze(0).repeat(len(radii), *[1] * x.dim())
            if rows.numel():
                sub = restrict(forward, rows)
                noise = RowNoise(self.seed, batch["index"][rows.cpu()], counts)  # the same in any batch or shard
                with autocast(self.precision, x.device), self._lower_precision_steps():  # the re-check: float32
                    adv, broken = self.attack_batch(sub, x[rows], y[rows], radii, noise)
                adv = adv.to(x.dtype)
                yr = y[rows]
                if smoothed is None:

                    def wrong(a: torch.Tensor) -> torch.Tensor:
                        return margin(clf(a, rows), yr) <= 0

                    broken = broken & self._verify(adv, x[rows], radii, wrong)
                else:  # every final point is judged by the smoothed decision (PREDICT: abstaining is not correct),
                    ids = batch["index"][rows.cpu()]  # claimed by a noisy draw or not

                    def wrong(a: torch.Tensor) -> torch.Tensor:
                        return smoothed.predict(a, x0[rows], x1[rows], ids=ids).to(yr.device) != yr

                    broken = self._verify(adv, x[rows], radii, wrong)
                if self.precision != "fp32":
                    adv, broken = self._finish(sub, x[rows], yr, radii, adv, broken, noise, wrong)
                rob[:, rows] = ~broken
                adv_all[:, rows] = adv
            for j, idx in enumerate(batch["index"].tolist()):
                if first and len(shown) < n_examples:
                    shown[idx] = {"ref": ref[j].cpu(), "x0": x0[j].cpu(), "x1": x1[j].cpu(), "adv": {}}
                if idx in shown:
                    shown[idx]["adv"].update({i: adv_all[k, j].cpu() for k, i in enumerate(levels)})
            return {"robust": rob, "clean": ok, "keep": kp, "abstain": abstained}

        def kept(levels: list[int], first: bool):
            def run(batch: dict, tick) -> dict[str, torch.Tensor]:
                if store is None:
                    return step(batch, tick, levels, first)
                radii = [eps[i] for i in levels]  # every setting of the attack (norm, seed, steps, ...)
                part = f"v2|{self.name}|{radii}|{target}|{vars(self)}"
                ids = batch["index"].tolist()
                saved = store.load(part, batch["index"], lambda r: record_problem(r, len(levels), ids))
                if saved is not None:
                    calls[0] += int(saved["calls"])
                    for idx, ex in saved["examples"].items():
                        shown.setdefault(idx, {**ex, "adv": {}})["adv"].update(ex["adv"])
                    counts.update(saved.get("counts", {}))
                    return saved["rows"]
                before = calls[0]
                rows = step(batch, tick, levels, first)
                ex = {i: {**shown[i], "adv": {k: shown[i]["adv"][k] for k in levels}} for i in ids if i in shown}
                used = {i: counts[i] for i in ids if i in counts}
                record = {"rows": rows, "calls": calls[0] - before, "examples": ex, "counts": used}
                store.save(part, batch["index"], record)
                return rows

            return run

        robust, clean_ok, keep, abstain = self._passes(
            share, kept, eps, batch_size, device, metric, workers, progress and env.main
        )
        stats = gather_objects((time.perf_counter() - t0, calls[0]), env)
        n_all = len(data)
        robust = gather_rows(robust, mine, n_all, env, dim=1)
        clean_ok, keep = gather_rows(clean_ok, mine, n_all, env), gather_rows(keep, mine, n_all, env)
        abstain = gather_rows(abstain, mine, n_all, env)
        if robust is None or clean_ok is None or keep is None or abstain is None or stats is None:
            return None
        result = AttackResult(
            self.name,
            self.norm,
            eps,
            robust,
            clean_ok,
            keep,
            max(s for s, _ in stats),
            sum(c for _, c in stats),
            self.seed,
        )
        result.examples = _example_tensors(shown, len(eps))
        result.abstain = abstain if smoothed is not None else None
        return result

    def _passes(self, share, kept, eps, batch_size, device, metric, workers, progress):
        """Every radius over the share: one pass for all of them when the attack runs them together (an
        overridden :meth:`attack_batch`); else the smallest radius first, then each larger one on the triplets
        still robust, regathered into full batches (balls nest: at large radii few survive, and a batch of the
        survivors of many batches keeps the device busy where their own batches would run it on two or three
        rows). Returns (robust (n_eps, N), clean (N,), keep (N,), abstain (N,)) for the share's N triplets."""
        if not len(share):  # a torchrun rank with no triplet (fewer triplets than ranks) still joins the gathers
            none = torch.zeros(0, dtype=torch.bool)
            return torch.zeros(len(eps), 0, dtype=torch.bool), none, none, none
        together = type(self).attack_batch is not Attack.attack_batch
        levels = [list(range(len(eps)))] if together else [[i] for i in range(len(eps))]
        opts = dict(batch_size=batch_size, device=device, metric=metric, workers=workers, progress=progress)
        opts.update(env=DistEnv(0, 1, 0, torch.device(device)), unit="step", dims={"robust": 1})
        first = run_batches(
            share, kept(levels[0], True), desc=f"{self.name} {self.norm}", work=len(levels[0]) * self.work(), **opts
        )
        assert first is not None
        robust = torch.zeros(len(eps), len(share), dtype=torch.bool)
        robust[: len(levels[0])] = first["robust"]
        for i in range(len(levels[0]), len(eps)):
            alive = robust[i - 1].nonzero()[:, 0]
            if not alive.numel():
                break
            rows = run_batches(
                share.select(alive.tolist()),
                kept([i], False),
                desc=f"{self.name} {self.norm} eps {format_eps(eps[i])}",
                work=self.work(),
                **opts,
            )
            assert rows is not None
            robust[i, alive] = rows["robust"][0]
        return robust, first["clean"], first["keep"], first["abstain"]

    def finish_steps(self) -> int:
        """Float32 APGD steps for each triplet a lower-precision attack leaves standing: a share of the attack's own
        budget (:data:`FINISH_SHARE`; the lower-precision steps take the rest, so the total is the same)."""
        return max(1, round(FINISH_SHARE * int(getattr(self, "steps", 20))))

    @contextlib.contextmanager
    def _lower_precision_steps(self):
        """The lower-precision phase runs the attack's budget less the float32 finish (an attack without a step
        count, or at fp32, runs as it is)."""
        full = getattr(self, "steps", None)
        if self.precision == "fp32" or not isinstance(full, int):
            yield
            return
        finish = self.finish_steps()
        self.steps = max(1, full - finish)
        try:
            yield
        finally:
            self.steps = full

    def _finish(self, forward, x, y, radii, adv, broken, noise, wrong):
        """Mixed precision that does not weaken the attack: the rows still standing after the lower-precision steps
        get a float32 APGD-CE of :meth:`finish_steps` from their best point at each radius (what bf16's rounding hid,
        float32 finds); every break it claims is verified like the others, and a break at one radius is one at every
        larger radius (the balls nest). Returns (adv, broken)."""
        shape = (-1, *[1] * (x.dim() - 1))
        for i, e in enumerate(radii):
            left = (~broken[i]).nonzero()[:, 0]
            if not left.numel():
                continue
            eps_t = torch.full((left.numel(),), float(e), device=x.device)
            objective = classifier_objective(restrict(forward, left), y[left], "ce")
            steps, eot = self.finish_steps(), int(getattr(self, "eot", 1))
            found, _ = apgd(objective, x[left], eps_t, self.norm, steps=steps, generator=rows_of(noise, left),
                            eot=eot, start=adv[i, left])  # fmt: skip
            new = adv[i].clone()
            new[left] = found.to(new.dtype)
            ok = self._verify(new.unsqueeze(0), x, [e], wrong)[0] & ~broken[i]
            for j in range(i, len(radii)):  # a break inside radius i lies inside every larger one
                take = ok & ~broken[j]
                adv[j] = torch.where(take.view(shape), new, adv[j])
                broken[j] = broken[j] | take
        return adv, broken

    def _verify(
        self, adv: torch.Tensor, x: torch.Tensor, eps: list[float], wrong: Callable[[torch.Tensor], torch.Tensor]
    ) -> torch.Tensor:
        """Claimed breaks that really are: inside ball and box, and ``wrong(point)`` says the decision there is not
        correct (the float32 metric's, or a smoothed metric's prediction)."""
        ok = torch.zeros(adv.shape[:2], dtype=torch.bool, device=adv.device)
        with torch.no_grad():
            for i, e in enumerate(eps):
                ok[i] = in_threat_model(adv[i], x, e, self.norm) & wrong(adv[i])
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
