"""``robustsim audit``: attack a metric with several attacks, take the per-triplet worst case, add the
certified accuracy when the metric has a Lipschitz guarantee, check the laws and write the report."""

from __future__ import annotations

import importlib.metadata as md
import math
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from robustsim.attacks.base import AttackResult
from robustsim.attacks.geometry import Norm
from robustsim.attacks.registry import make_attack
from robustsim.attacks.twoafc import Target
from robustsim.data.triplets import TripletDataset
from robustsim.dist import DistEnv, gather_objects, gather_rows, init_distributed, local_env, shard
from robustsim.errors import RobustsimError
from robustsim.metrics.base import Metric
from robustsim.table import format_table, pct
from robustsim.threads import runtime_info
from robustsim.threat import ThreatModel

SCHEMA_VERSION = 1


class AuditLawError(RuntimeError):
    """certified <= robust <= clean (per epsilon) or monotonicity in epsilon does not hold."""


def package_versions() -> dict[str, str]:
    """Versions of the packages an attack report depends on ("not installed" where absent)."""
    out = {}
    for pkg in ("robustsim", "torch", "pyautoattack", "foolbox", "numpy"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def certified_per_triplet(
    metric: Metric,
    data: TripletDataset,
    eps: Sequence[float],
    norm: Norm,
    batch_size: int,
    device: torch.device,
    target: Target = "ref",
) -> torch.Tensor | None:
    """(n_eps, N) bool: decision correct and certified at eps for the threat model being attacked
    (``target`` moving); None if the metric has no Lipschitz guarantee.

    l2 radii certify linf balls through ||delta||_2 <= sqrt(d) ||delta||_inf (d = pixels x channels of
    one image; with ``all``, each image's own ball)."""
    from robustsim.certify import certify_2afc
    from robustsim.certify.lipschitz import network_lipschitz

    try:
        network_lipschitz(metric)
    except RobustsimError:
        return None
    res = certify_2afc(
        metric,
        data,
        list(eps),
        batch_size=batch_size,
        device=device,
        progress=False,
        target=target,
        env=local_env(device),  # ``data`` is already this rank's share
    )
    correct = res.clean == 1.0
    dim = math.prod(data[0]["ref"].shape)
    scale = math.sqrt(dim) if norm == "linf" else 1.0
    return torch.stack([correct & (res.radius > e * scale) for e in eps])


def run_audit(
    metric: Metric,
    data: TripletDataset,
    norm: Norm,
    eps: Sequence[float],
    attacks: Sequence[str],
    steps: int = 50,
    restarts: int = 1,
    seed: int = 0,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    target: Target = "ref",
    progress: bool = True,
    env: DistEnv | None = None,
) -> tuple[dict, dict]:
    """Run every attack at every epsilon; return (report dict, example tensors for the grid).

    Under torchrun (``env`` with several ranks) each rank attacks every ``world``-th triplet and rank 0
    gathers the per-triplet results into the report one process would write (other ranks get (None, None)).
    """
    if not attacks:
        raise RobustsimError("no attacks given; pass e.g. --attacks apgd-ce,apgd-margin")
    eps = sorted(float(e) for e in eps)
    t0 = time.perf_counter()
    built = [make_attack(a, norm, steps, restarts, seed) for a in attacks]
    env = env or init_distributed(torch.device(device))
    n_all = len(data)
    share, mine = shard(data, env)
    results: list[AttackResult] = [
        att(metric, share, eps, batch_size=batch_size, device=device, target=target, progress=progress and env.main)
        for att in built
    ]
    cert = certified_per_triplet(metric, share, eps, norm, batch_size, device, target)
    if env.world > 1:
        results, cert = _gather_results(results, cert, mine, n_all, env)
        if not env.main:
            return None, None  # type: ignore[return-value]
    first = results[0]
    keep = first.keep
    worst = torch.stack([r.robust for r in results]).all(dim=0)  # robust iff no attack broke it
    if cert is not None:  # exact-arithmetic correctness can differ from the float32 decision at a near-tie
        cert &= first.clean[None, :]
    acc = lambda t: float(t[keep].double().mean()) if keep.any() else math.nan  # noqa: E731
    report = {
        "version": SCHEMA_VERSION,
        "kind": "audit",
        "metric": metric.name,
        "data": getattr(data, "name", "data"),
        "norm": norm,
        "target": target,
        "threat_model": ThreatModel(norm, target, tuple(eps)).to_json(),
        "eps": eps,
        "n": int(keep.sum()),
        "skipped_ties": int((~keep).sum()),
        "clean": first.clean_accuracy,
        "robust": [acc(worst[i]) for i in range(len(eps))],
        "certified": [acc(cert[i]) for i in range(len(eps))] if cert is not None else None,
        "attacks": {
            a: {"robust": r.robust_accuracy(), "seconds": r.seconds, "calls": r.calls}
            for a, r in zip(attacks, results, strict=True)
        },
        "settings": {"steps": steps, "restarts": restarts, "seed": seed, "batch_size": batch_size},
        "per_triplet": {
            "clean": first.clean.int().tolist(),
            "robust": worst.int().tolist(),
            "certified": cert.int().tolist() if cert is not None else None,
        },
        "versions": package_versions(),
        "runtime": runtime_info(device),
        "seconds": time.perf_counter() - t0,
    }
    check_laws(report)
    examples = {k: v.clone() for k, v in first.examples.items()}
    if "adv" in examples:  # show, per example and epsilon, the first attack that broke it
        k = examples["adv"].shape[1]
        done = ~first.robust[:, :k]
        for r in results[1:]:
            use = ~r.robust[:, :k] & ~done
            examples["adv"][use] = r.examples["adv"][use]
            done |= use
    return report, examples


def _gather_results(
    results: list[AttackResult], cert: torch.Tensor | None, mine: list[int], n: int, env: DistEnv
) -> tuple[list[AttackResult], torch.Tensor | None]:
    """Every rank's per-triplet outcomes, in the original order, on rank 0 (time: the slowest rank's)."""
    out = []
    for r in results:
        robust = gather_rows(r.robust, mine, n, env, dim=1)
        clean, keep = gather_rows(r.clean, mine, n, env), gather_rows(r.keep, mine, n, env)
        stats = gather_objects((r.seconds, r.calls), env)
        if env.main:
            assert robust is not None and clean is not None and keep is not None and stats is not None
            merged = AttackResult(
                r.attack,
                r.norm,
                r.eps,
                robust,
                clean,
                keep,
                max(s for s, _ in stats),
                sum(c for _, c in stats),
                r.seed,
                r.examples,
            )
            out.append(merged)
    gathered = gather_rows(cert, mine, n, env, dim=1) if cert is not None else None
    return out, gathered


def check_laws(report: dict, tol: float = 1e-9) -> None:
    """Raise AuditLawError unless certified <= robust <= clean per epsilon and robust is non-increasing."""
    clean, robust, cert = report["clean"], report["robust"], report["certified"]
    for i, e in enumerate(report["eps"]):
        if robust[i] > clean + tol:
            raise AuditLawError(
                f"robust accuracy {robust[i]:.4f} > clean {clean:.4f} at eps={e}: an attack result is wrong"
            )
        if cert is not None and cert[i] > robust[i] + tol:
            raise AuditLawError(
                f"certified {cert[i]:.4f} > robust {robust[i]:.4f} at eps={e}: the certificate is unsound"
            )
        for name, a in report["attacks"].items():
            if robust[i] > a["robust"][i] + tol:
                raise AuditLawError(f"worst case {robust[i]:.4f} above attack {name} ({a['robust'][i]:.4f}) at eps={e}")
    if any(b > a + tol for a, b in zip(robust, robust[1:], strict=False)):
        raise AuditLawError(f"robust accuracy increases with epsilon: {robust}")


def audit_table(report: dict, markdown: bool = False) -> str:
    """Table: epsilon, clean, robust, certified, each attack's robust accuracy; a footer with n and times."""
    names = list(report["attacks"])
    unit = (lambda e: f"{e * 255:g}/255") if report["norm"] == "linf" else (lambda e: f"{e:g}")
    rows = []
    for i, e in enumerate(report["eps"]):
        cert = pct(report["certified"][i]) if report["certified"] is not None else "-"
        rows.append(
            (
                unit(e),
                pct(report["clean"]),
                pct(report["robust"][i]),
                cert,
                *(pct(report["attacks"][a]["robust"][i]) for a in names),
            )
        )
    headers = [f"eps ({report['norm']})", "clean", "robust", "certified", *names]
    times = ", ".join(f"{a} {report['attacks'][a]['seconds']:.1f}s" for a in names)
    footer = f"(2AFC accuracy %, n={report['n']}, skipped ties={report['skipped_ties']}; {times})"
    return format_table(headers, rows, markdown=markdown) + ("\n\n" if markdown else "\n") + footer


def write_audit(report: dict, examples: dict, out: Path) -> list[Path]:
    """report.json, report.md, robust.png (curves) and examples.png (adversarial grid), atomically."""
    from robustsim.io import atomic_write, write_json
    from robustsim.plots import Curve, accuracy_figure, example_grid, save_figure

    out.mkdir(parents=True, exist_ok=True)
    files = [write_json(out / "report.json", report)]
    md_text = (
        f"# Audit of `{report['metric']}` on `{report['data']}`\n\n"
        f"Threat model: perturb the {report['target']} image, {report['norm']} ball, [0, 1] box.\n\n"
        + audit_table(report, markdown=True)
        + "\n"
    )
    files.append(atomic_write(out / "report.md", lambda p: p.write_text(md_text)))
    eps = report["eps"]
    curves = [
        Curve("clean", eps, [report["clean"]] * len(eps), "--"),
        Curve("robust (worst case)", eps, report["robust"]),
    ]
    curves += [Curve(a, eps, v["robust"], ":") for a, v in report["attacks"].items()]
    if report["certified"] is not None:
        curves.append(Curve("certified", eps, report["certified"], "-."))
    fig = accuracy_figure(curves, report["norm"], f"{report['metric']} on {report['data']}")
    files.append(save_figure(fig, out / "robust.png"))
    if examples.get("ref") is not None and len(examples["ref"]):
        fig = example_grid(examples["ref"], examples["adv"], examples["x0"], examples["x1"], eps, report["norm"])
        files.append(save_figure(fig, out / "examples.png"))
    return files
