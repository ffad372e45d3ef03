"""``robustsim audit``: attack a metric with several attacks, take the per-triplet worst case, add the
certified accuracy when the metric has a Lipschitz certificate, check the laws, and report."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from robustsim.attacks.base import AttackResult
from robustsim.attacks.registry import make_attack
from robustsim.attacks.twoafc import CleanEmbeddings
from robustsim.certify.adaptive import decisions, describe
from robustsim.data.triplets import TripletDataset
from robustsim.dist import DistEnv, init_distributed
from robustsim.errors import RobustsimError
from robustsim.metrics.base import Metric, evaluating
from robustsim.metrics.smoothed import SmoothedMetric
from robustsim.precision import resolve_precision
from robustsim.provenance import metric_fingerprint, package_versions
from robustsim.score2afc import evaluate_2afc
from robustsim.settings import AttackSettings
from robustsim.table import format_table, pct, percent
from robustsim.text import md_code
from robustsim.threads import runtime_info
from robustsim.threat import ThreatModel

SCHEMA_VERSION = 2


class AuditLawError(RobustsimError, RuntimeError):
    """certified <= robust <= clean (per epsilon) or monotonicity in epsilon does not hold."""


@dataclass
class AttackSummary:
    robust: list[float]
    seconds: float
    calls: int


@dataclass
class AuditReport:
    """The outcome of an audit: accuracies are fractions in [0, 1], one entry per radius of ``threat``;
    ``robust`` is the per-triplet worst case over ``attacks``; ``certified`` is None without a certificate."""

    metric: str
    data: str
    threat: ThreatModel
    n: int
    skipped_ties: int
    clean: float
    robust: list[float]
    certified: list[float] | None
    attacks: dict[str, AttackSummary]
    settings: dict
    per_triplet: dict
    seconds: float
    versions: dict = field(default_factory=package_versions)
    runtime: dict = field(default_factory=dict)
    examples: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    score: float | None = None  # the 2AFC score of `robustsim score` on the same triplets (None: smoothed)

    @property
    def eps(self) -> list[float]:
        return list(self.threat.eps)

    def to_json(self) -> dict:
        return {
            "version": SCHEMA_VERSION,
            "kind": "audit",
            "metric": self.metric,
            "data": self.data,
            "norm": self.threat.norm,
            "target": self.threat.target,
            "threat_model": self.threat.to_json(),
            "eps": self.eps,
            "n": self.n,
            "skipped_ties": self.skipped_ties,
            "score": self.score,
            "clean": self.clean,
            "robust": self.robust,
            "certified": self.certified,
            "attacks": {a: asdict(s) for a, s in self.attacks.items()},
            "settings": self.settings,
            "per_triplet": self.per_triplet,
            "versions": self.versions,
            "runtime": self.runtime,
            "seconds": self.seconds,
        }

    def rows(self) -> list[dict]:
        """One row per radius, accuracies in % (as the CLI prints them; ``clean``, ``robust`` and ``certified``
        attributes are fractions): ``eps`` (its label), ``clean``, ``robust``, ``certified`` (None: no certificate)."""
        cert = self.certified or [None] * len(self.eps)
        return [
            {
                "eps": self.threat.label(e),
                "clean": percent(self.clean),
                "robust": percent(r),
                "certified": None if c is None else percent(c),
            }
            for e, r, c in zip(self.eps, self.robust, cert, strict=True)
        ]

    def __repr__(self) -> str:
        robust = " / ".join(f"{100 * r:.1f}" for r in self.robust)
        cert = f", certified {' / '.join(f'{100 * c:.1f}' for c in self.certified)}" if self.certified else ""
        return (
            f"AuditReport({self.metric} on {self.data}, n={self.n}, {self.threat.norm} {self.threat.target}: clean "
            f"{100 * self.clean:.1f} %, robust {robust}{cert} % at {', '.join(self.threat.labels())}; .rows() in %, "
            "the attributes fractions)"
        )

    def table(self, markdown: bool = False) -> str:
        """Rows: epsilon; columns: clean, robust, certified, each attack's robust accuracy (%); a footer."""
        names = list(self.attacks)
        rows = []
        for i, e in enumerate(self.eps):
            cert = pct(self.certified[i]) if self.certified is not None else "-"
            each = (pct(self.attacks[a].robust[i]) for a in names)
            rows.append((self.threat.label(e), pct(self.clean), pct(self.robust[i]), cert, *each))
        headers = [f"eps ({self.threat.norm})", "clean", "robust", "certified", *names]
        times = ", ".join(f"{a} {self.attacks[a].seconds:.1f}s" for a in names)
        footer = f"(2AFC accuracy %, n={self.n}, skipped ties={self.skipped_ties}; {times})"
        if self.score is not None:
            footer += (
                f"\n(accuracy: the decision right on the majority label, p = 0.5 skipped, an exact tie d0 = d1 wrong; "
                f"`robustsim score` weights soft labels and counts a tie 1/2: {pct(self.score)} on these triplets)"
            )
        seed = self.settings.get("seed")
        footer += (
            f"\n(one run at seed {seed}: another seed's random starts can tip a few borderline triplets, about 2 in "
            "100 at 20 steps; --restarts takes the worst case over more starts)"
        )
        smoothing = self.settings.get("smoothing")
        if smoothing and smoothing.get("abstain_rate") is not None:
            footer += (
                f"\n(smoothed metric, sigma={smoothing['sigma']:g}, n={smoothing['n']}: its clean prediction abstained "
                f"on {100 * smoothing['abstain_rate']:.1f} % of the triplets, each counted wrong)"
            )
        how = describe(self.settings.get("decisions") or {})
        if how:
            footer += f"\n({how})"
        return format_table(headers, rows, markdown=markdown) + ("\n\n" if markdown else "\n") + footer

    def markdown(self) -> str:
        return (
            f"# Audit of {md_code(self.metric)} on {md_code(self.data)}\n\n"
            f"Threat model: {self.threat.describe()}, [0, 1] box.\n\n" + self.table(markdown=True) + "\n"
        )

    def figures(self) -> dict:
        """``robust.png`` (accuracy vs epsilon) and, with examples, ``examples.png``."""
        from robustsim.plots import Curve, accuracy_figure, example_grid

        eps, norm = self.eps, self.threat.norm
        curves = [Curve("clean", eps, [self.clean] * len(eps), "--"), Curve("robust (worst case)", eps, self.robust)]
        curves += [Curve(a, eps, s.robust, ":") for a, s in self.attacks.items()]
        if self.certified is not None:
            curves.append(Curve("certified", eps, self.certified, "-."))
        out = {"robust.png": accuracy_figure(curves, norm, f"{self.metric} on {self.data}")}
        ex = self.examples
        if ex.get("ref") is not None and len(ex["ref"]):
            needed = ("index", "d0", "d1", "adv_d0", "adv_d1", "norm", "flipped")
            info = {k: ex[k] for k in (*needed, "p") if k in ex}
            full = all(k in info for k in needed)
            out["examples.png"] = example_grid(
                ex["ref"], ex["adv"], ex["x0"], ex["x1"], self.threat, info if full else None
            )
        return out


def certified_per_triplet(
    metric: Metric,
    data: TripletDataset,
    threat: ThreatModel,
    batch_size: int,
    device: torch.device | str,
    env: DistEnv | None = None,
) -> torch.Tensor | None:
    """(n_eps, N) bool: decision correct and certified at each radius of ``threat`` (its target moving; linf
    through the l2 ball of radius sqrt(d) eps); None when the metric has no Lipschitz certificate (and on
    torchrun ranks other than 0)."""
    from robustsim.certify import certify_2afc, has_certificate

    if not has_certificate(metric):
        return None
    res = certify_2afc(metric, data, threat, batch_size=batch_size, device=device, progress=False, env=env)
    return None if res is None else res.certified_per_triplet()


def run_audit(
    metric: Metric | SmoothedMetric,
    data: TripletDataset,
    threat: ThreatModel,
    attacks: Sequence[str],
    *,
    steps: int = AttackSettings.steps,
    restarts: int = AttackSettings.restarts,
    seed: int = AttackSettings.seed,
    eot: int = AttackSettings.eot,
    precision: str = AttackSettings.precision,
    clean: CleanEmbeddings | None = None,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    progress: bool = True,
    env: DistEnv | None = None,
    resume: Path | None = None,
) -> AuditReport | None:
    """Run every attack at every radius of ``threat``; the report (rank 0; None on other torchrun ranks) holds
    the per-triplet worst case, the certified accuracy where the metric has a certificate, and examples.
    ``resume``: a folder keeping every finished batch, so the same call after an interruption continues (the
    CLI's ``--out``/.resume; delete it, or let the CLI do so, once the report is written).

    Under torchrun each rank attacks every ``world``-th triplet and rank 0 gathers the report one process would
    write. ``eot`` > 1 averages each gradient over that many draws of a randomised metric; a
    :class:`~robustsim.certify.SmoothedMetric` is attacked through its noise and judged by its prediction
    (an abstention is not robust). ``precision`` (fp32, bf16, fp16 or auto: bf16 on a CUDA device that has it)
    is the attack steps' autocast: every clean decision and every re-check of a claimed break stays float32, so a
    lower precision can only miss breaks, never report one that float32 rejects. The clean images are embedded
    once and shared by the attacks (``clean``: a caller's :class:`CleanEmbeddings` shares them further, e.g. over
    a bench's threat models)."""
    if not attacks:
        raise RobustsimError("no attacks given; pass e.g. --attacks apgd-ce,apgd-margin")
    if not isinstance(threat, ThreatModel):
        raise RobustsimError(f"threat must be a ThreatModel, got {threat!r}; e.g. ThreatModel('l2', 'ref', (0.5,))")
    t0 = time.perf_counter()
    steps_in = resolve_precision(precision, device)
    settings = AttackSettings(steps, restarts, seed, eot, steps_in)  # checked there
    built = [make_attack(a, threat, **settings.to_json()) for a in attacks]
    clean = CleanEmbeddings() if clean is None else clean
    smoothed = metric if isinstance(metric, SmoothedMetric) else None
    base = smoothed.metric if smoothed is not None else metric
    assert isinstance(base, Metric)
    env = env or init_distributed(torch.device(device))
    store = None
    if resume is not None:
        key = [steps, restarts, seed, batch_size, list(attacks), eot, steps_in]
        store = _batch_store(Path(resume), base, smoothed, data, threat, key, env)
    run = dict(batch_size=batch_size, device=device, progress=progress and env.main, env=env, store=store, clean=clean)
    results = [att(metric, data, threat, **run) for att in built]
    if store is not None and store.restored:
        print(f"audit: {store.restored} of {store.total} batches restored from an interrupted run", file=sys.stderr)
    cert = None if smoothed is not None else certified_per_triplet(base, data, threat, batch_size, device, env)
    scored = None if smoothed is not None else evaluate_2afc(base, data, batch_size, device, progress=False, env=env)
    if not env.main:
        return None
    done = [r for r in results if r is not None]
    shown = picked_examples(built[0], metric, data, threat, _worst(done), done[0], device)
    facts = {"steps": steps, "restarts": restarts, "seed": seed, "batch_size": batch_size, "eot": eot}
    facts["precision"] = steps_in
    if smoothed is not None:
        facts["smoothing"] = _smoothing_facts(smoothed, done[0])
    facts["decisions"] = decisions(base)
    extra = {"examples": example_info(base, shown, threat, device), "score": None if scored is None else scored.score}
    extra.update(runtime=runtime_info(device), seconds=time.perf_counter() - t0)
    report = _report(base, data, threat, dict(zip(attacks, done, strict=True)), cert, facts, extra)
    check_laws(report)
    return report


def _batch_store(resume: Path, base: Metric, smoothed, data, threat: ThreatModel, key: list, env: DistEnv):
    """The resume folder's store of this rank's finished batches, keyed by everything that decides them."""
    from robustsim.resume import BatchStore

    context = {
        "metric": metric_fingerprint(base),
        "smoothing": None if smoothed is None else repr(smoothed),
        "data": getattr(data, "identity", getattr(data, "name", "")),
        "threat": threat.to_json(),
        "settings": key,
        "rank": [env.rank, env.world],
    }
    return BatchStore(resume / f"rank{env.rank}", context, root=resume.parent)


def _worst(done: list[AttackResult]) -> torch.Tensor:
    """(n_eps, N) robust under every attack (robust iff no attack broke it)."""
    return torch.stack([r.robust for r in done]).all(dim=0)


def _smoothing_facts(smoothed: SmoothedMetric, first: AttackResult) -> dict:
    """The smoothed prediction's settings and how often it abstained (a warning when it always did)."""
    rate = first.abstain_rate
    if rate == 1.0:
        print(
            f"warning: every smoothed clean prediction abstained ({smoothed.n} noise samples cannot pass the "
            f"binomial test at alpha {smoothed.alpha:g}); raise --smoothing-n (e.g. 128)",
            file=sys.stderr,
        )
    return {"sigma": smoothed.sigma, "n": smoothed.n, "alpha": smoothed.alpha, "abstain_rate": rate}


def _report(base: Metric, data, threat: ThreatModel, results: dict, cert, settings: dict, extra: dict) -> AuditReport:
    """The audit report of the attacks' ``results`` (by name), the certified triplets ``cert`` and the ``extra``
    fields (examples, score, runtime, seconds)."""
    first = next(iter(results.values()))
    keep, worst = first.keep, _worst(list(results.values()))
    if cert is not None:  # exact-arithmetic correctness can differ from the float32 decision at a near-tie
        cert &= first.clean[None, :]
    acc = lambda t: float(t[keep].double().mean()) if keep.any() else math.nan  # noqa: E731
    smoothed = settings.get("smoothing")
    return AuditReport(
        metric=base.name if smoothed is None else f"{base.name} (smoothed, sigma={smoothed['sigma']:g})",
        data=getattr(data, "name", "data"),
        threat=threat,
        n=int(keep.sum()),
        skipped_ties=int((~keep).sum()),
        clean=first.clean_accuracy,
        robust=[acc(worst[i]) for i in range(len(threat.eps))],
        certified=[acc(cert[i]) for i in range(len(threat.eps))] if cert is not None else None,
        attacks={a: AttackSummary(r.robust_accuracy(), r.seconds, r.calls) for a, r in results.items()},
        settings=settings,
        per_triplet={
            "clean": first.clean.int().tolist(),
            "robust": worst.int().tolist(),
            "certified": cert.int().tolist() if cert is not None else None,
        },
        **extra,
    )


N_EXAMPLES = 4  # triplets shown in examples.png


def picked_examples(
    attack, metric, data: TripletDataset, threat: ThreatModel, worst: torch.Tensor, first: AttackResult, device
) -> dict[str, torch.Tensor]:
    """The triplets examples.png shows and their points: the ones the attacks flipped first (at the smallest radius
    first), then rightly decided ones, then the rest; each radius's image is the first attack run at that radius
    alone on them (one image per radius, never a copy of a smaller radius's break)."""
    from robustsim.dist import local_env

    order = sorted(
        range(len(data)),
        key=lambda i: (
            not bool(first.clean[i]),
            next((k for k in range(len(threat.eps)) if first.clean[i] and not worst[k, i]), len(threat.eps)),
            i,
        ),
    )
    picked = data.select(order[:N_EXAMPLES])
    if not len(picked):
        return {}
    points = []
    for e in threat.eps:
        one = ThreatModel(threat.norm, threat.target, (e,))
        res = attack(metric, picked, one, device=device, progress=False, n_examples=len(picked), env=local_env(device))
        points.append(res.examples["adv"][0])
    out = {k: v for k, v in res.examples.items() if k != "adv"}
    out["adv"] = torch.stack(points)
    out["index"] = torch.tensor([int(picked[i]["index"]) for i in range(len(picked))])
    out["p"] = torch.stack([picked[i]["p"].float() for i in range(len(picked))])
    return out


@torch.no_grad()
def example_info(
    metric: Metric, examples: dict[str, torch.Tensor], threat: ThreatModel, device: torch.device | str
) -> dict[str, torch.Tensor]:
    """The examples with what a reader needs beside them: d(ref, x0), d(ref, x1) clean and after each
    epsilon's attack, the perturbation's norm, and whether the decision flipped."""
    if examples.get("ref") is None or not len(examples["ref"]) or "adv" not in examples:
        return examples
    ref, x0, x1, adv = (examples[k].to(device) for k in ("ref", "x0", "x1", "adv"))
    with evaluating(metric):
        d0, d1 = metric(ref, x0), metric(ref, x1)
        a0 = torch.stack([metric(a, x0) for a in adv])
        a1 = torch.stack([metric(a, x1) for a in adv])
    norm = torch.stack([threat.ball.measure(a - ref) for a in adv])
    flipped = (a1 < a0) != (d1 < d0)
    out = dict(examples)
    out.update(d0=d0.cpu(), d1=d1.cpu(), adv_d0=a0.cpu(), adv_d1=a1.cpu(), norm=norm.cpu(), flipped=flipped.cpu())
    return out


def check_laws(report: AuditReport, tol: float = 1e-9) -> None:
    """Raise AuditLawError unless certified <= robust <= clean per epsilon and robust is non-increasing."""
    clean, robust, cert = report.clean, report.robust, report.certified
    for i, e in enumerate(report.eps):
        if robust[i] > clean + tol:
            raise AuditLawError(
                f"robust accuracy {robust[i]:.4f} > clean {clean:.4f} at eps={e}: an attack result is wrong"
            )
        if cert is not None and cert[i] > robust[i] + tol:
            raise AuditLawError(
                f"certified {cert[i]:.4f} > robust {robust[i]:.4f} at eps={e}: the certificate is unsound"
            )
        for name, a in report.attacks.items():
            if robust[i] > a.robust[i] + tol:
                raise AuditLawError(f"worst case {robust[i]:.4f} above attack {name} ({a.robust[i]:.4f}) at eps={e}")
    if any(b > a + tol for a, b in zip(robust, robust[1:], strict=False)):
        raise AuditLawError(f"robust accuracy increases with epsilon: {robust}")
