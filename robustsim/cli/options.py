"""What every ``robustsim`` command shares: option declarations, value parsers, data and output checks.

Callbacks return typed values (floats, a torch.device, paths), so command functions receive what
they use; bad values raise ``click.BadParameter`` (one line, exit 2).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import click

from robustsim.limits import MAX_BATCH, MAX_COUNT, MAX_SEED, MAX_SIGMA, AutoBatch
from robustsim.settings import AttackSettings
from robustsim.threat import NORMS, TARGETS, Norm, Target, ThreatModel

if TYPE_CHECKING:
    import torch

DEFAULT_EPS = {"l2": "0.5,1,2", "linf": "1/255,2/255,4/255"}


class LazyHelp(click.Option):
    """An option whose help text is made when it is shown: it may need imports (torch, the registries) that
    ``robustsim --help`` and the other commands should not pay."""

    def __init__(self, *args: Any, help_text: Callable[[], str], **kwargs: Any) -> None:
        self._help_text, self._help = help_text, None
        super().__init__(*args, **kwargs)

    @property
    def help(self) -> str | None:
        if self._help is None:
            self._help = self._help_text()
        return self._help

    @help.setter
    def help(self, value: str | None) -> None:
        if value is not None:
            self._help = value


class LazyChoice(click.Choice):
    """A choice among names a registry gives when first asked (importing it only then)."""

    def __init__(self, load: Callable[[], Sequence[str]]) -> None:
        self._load, self._choices, self.case_sensitive = load, None, True

    @property
    def choices(self) -> Sequence[str]:
        if self._choices is None:
            self._choices = tuple(self._load())
        return self._choices


def registry_choice(module: str, name: str, first: Sequence[str] = ()) -> LazyChoice:
    """A choice among the names ``module.name`` registers (``first`` put before them, e.g. ``auto``), imported when
    the choices are first needed: a CLI list is never a hand-written copy of its registry."""

    def load() -> Sequence[str]:
        import importlib

        return [*first, *getattr(importlib.import_module(module), name)]

    return LazyChoice(load)


def parse_floats(text: str, what: str = "value") -> list[float]:
    """'36/255,72/255' or '0.5,1' -> radii, each read by :func:`robustsim.threat.parse_eps` (finite, >= 0,
    fractions allowed); raises click.BadParameter with its reason."""
    from robustsim.errors import InputError
    from robustsim.threat import parse_eps

    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise click.BadParameter("needs at least one number, e.g. 0.5,1 or 36/255,72/255", param_hint=what)
    try:
        return [parse_eps(p) for p in parts]
    except InputError as err:
        raise click.BadParameter(str(err), param_hint=what) from None


class FiniteFloat(click.FloatRange):
    """A click float range that also refuses NaN and infinities (every comparison with NaN is false, so a plain
    FloatRange lets ``nan`` through)."""

    name = "finite float"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not math.isfinite(click.FLOAT.convert(value, param, ctx)):  # said first: inf is no number, not too big
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return super().convert(value, param, ctx)


class UserPath(click.ParamType):
    """Every path option: :func:`robustsim.checks.user_path` (``~user`` expanded, not empty, names and the whole
    within the kernel's lengths), then for an ``output`` not inside robustsim's installed package (a shipped model's
    folder), for an ``existing`` folder or file one that is there. Returns a :class:`~pathlib.Path`."""

    name = "path"

    def __init__(self, output: bool = False, existing: str | None = None) -> None:
        self.output, self.existing = output, existing  # existing: None, "file" or "folder"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        from robustsim.checks import user_path
        from robustsim.errors import InputError, OutputError
        from robustsim.io import not_in_package
        from robustsim.text import visible

        what = param.opts[0] if param is not None and param.opts else "path"
        try:
            path = user_path(value, what)
            if self.output:
                not_in_package(path, what)
        except (InputError, OutputError) as err:
            self.fail(str(err), param, ctx)
        if self.existing and not path.exists():
            self.fail(f"{visible(path)!r} does not exist", param, ctx)
        if self.existing == "folder" and not path.is_dir():
            self.fail(f"{visible(path)!r} is not a folder", param, ctx)
        return path


def say(message: object = "", err: bool = False) -> None:
    """``click.echo`` for every line a command prints: names, paths and data-file text in it escaped
    (:func:`robustsim.text.terminal`)."""
    from robustsim.text import terminal

    click.echo(terminal(message), err=err)


def parse_names(text: str, what: str) -> list[str]:
    """'a, b,c' -> ['a', 'b', 'c']; names with control characters are refused (they could forge output)."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise click.BadParameter("needs at least one name", param_hint=what)
    for n in names:
        if any(ord(c) < 32 or ord(c) == 127 for c in n):
            raise click.BadParameter(f"{n!r} contains a control character", param_hint=what)
    return names


def metric_option(*decls: str, many: bool = False, help: str, **kwargs: Any) -> Callable[[Callable], Callable]:
    """``--metric``: zoo names, ``a+b`` ensembles or checkpoint paths (``many``: comma-separated). Checked first
    (an eager option), against the zoo's rows, before anything imports torch: an unknown name costs no torch
    import. (``bench`` lists an unknown name on its leaderboard instead.)"""

    def check(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
        from robustsim.zoo.names import check_metric_name

        if value is not None and not ctx.resilient_parsing:
            for name in parse_names(value, param.opts[0]) if many else [value]:
                check_metric_name(name)
        return value  # unchanged: a command run through ctx.invoke (the demo) gets the same value, unchecked

    kwargs.setdefault("default", None)
    return click.option(*decls, is_eager=True, callback=check, help=help, **kwargs)


def resolve_device(device: str) -> torch.device:
    """cpu, cuda, cuda:N or auto -> a usable torch.device (:func:`robustsim.checks.device_arg`; click.BadParameter
    otherwise)."""
    from robustsim.checks import device_arg
    from robustsim.errors import InputError

    try:
        return device_arg(device)
    except InputError as err:
        raise click.BadParameter(str(err), param_hint="--device") from None


def _device_callback(ctx: click.Context, param: click.Parameter, value: str) -> torch.device:
    return resolve_device(value)


def threat_options(
    default_eps: Mapping[str, str],
    *,
    norms: Sequence[str] = NORMS,
    targets: Sequence[str] = TARGETS,
    target_help: str = "Which image the attacker perturbs.",
    eps_help: str = "Comma-separated radii; fractions allowed (36/255).",
    keep_zero: bool = True,
) -> Callable:
    """``--norm``, ``--eps`` and ``--target`` as one value: the command receives ``threat: ThreatModel``
    (radii parsed and sorted; ``keep_zero=False`` drops 0, which means "clean only" there)."""

    def decorate(command: Callable) -> Callable:
        @functools.wraps(command)
        def wrapper(*args: Any, norm: str, eps_text: str | None, target: str, **kwargs: Any) -> Any:
            eps = parse_floats(eps_text or default_eps[norm], "--eps")
            eps = eps if keep_zero else [e for e in eps if e > 0]
            threat = ThreatModel(cast(Norm, norm), cast(Target, target), tuple(eps))
            warning = threat.implausible()
            if warning:
                say(warning, err=True)
            return command(*args, threat=threat, **kwargs)

        defaults = "; ".join(f"{n}: {default_eps[n]}" for n in norms)
        options = [
            click.option("--norm", type=click.Choice(list(norms)), default=norms[0], show_default=True),
            click.option("--eps", "eps_text", default=None, help=f"{eps_help} Default ({defaults})."),
        ]
        if len(targets) > 1:
            choice = click.Choice(list(targets))
            target = click.option("--target", type=choice, default=targets[0], show_default=True, help=target_help)
            options.append(target)
        else:  # fixed by the command (retrieval moves the query): not an option
            wrapper = _fixed(wrapper, target=targets[0])
        for option in reversed(options):
            wrapper = option(wrapper)
        return wrapper

    return decorate


def _fixed(command: Callable, **values: Any) -> Callable:
    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return command(*args, **values, **kwargs)

    return wrapper


device_option = click.option(
    "--device",
    default="auto",
    show_default=True,
    callback=_device_callback,
    help="cpu, cuda, cuda:N, or auto (cuda when available).",
)
AUTO_BATCH = 32  # `--batch-size auto`: the batch a GPU's free memory is measured on (and the batch on a CPU)


class BatchSize(click.ParamType):
    """A batch size: an integer in [1, MAX_BATCH], kept exactly, or ``auto``: an :class:`AutoBatch` of AUTO_BATCH
    (a CPU runs it as it is; a GPU grows it to its free memory)."""

    name = "N|auto"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, int):
            return value
        if str(value).strip().lower() == "auto":
            return AutoBatch(AUTO_BATCH)
        try:
            return click.IntRange(1, MAX_BATCH).convert(value, param, ctx)
        except click.BadParameter:
            self.fail(f"{value!r} is not a batch size: write a number from 1 to {MAX_BATCH}, or auto", param, ctx)


batch_option = click.option(
    "--batch-size",
    default="auto",
    show_default=True,
    type=BatchSize(),
    help=f"Triplets per batch, or auto: {AUTO_BATCH}, and on a GPU as many as its free memory holds (measured on "
    f"the first {AUTO_BATCH}; the report's runtime records it).",
)
data_option = click.option(
    "--data",
    "data_spec",
    default="mini",
    show_default=True,
    cls=LazyHelp,
    help_text=lambda: f"2AFC triplets: {_triplet_usage()}.",
)


def _triplet_usage() -> str:
    from robustsim.data.specs import triplet_usage

    return triplet_usage()


allow_outside_option = click.option(
    "--allow-outside", is_flag=True, default=False, help="Let a csv: spec name images outside the CSV's folder."
)
SEED = click.IntRange(0, MAX_SEED)
COUNT = click.IntRange(1, MAX_COUNT)
seed_option = click.option("--seed", default=0, show_default=True, type=SEED, help="Seed of every random choice.")
restarts_option = click.option(
    "--restarts",
    default=AttackSettings.restarts,
    show_default=True,
    type=click.IntRange(1, 1000),
    help="Random restarts per attack.",
)


def steps_option(default: int) -> Callable:
    """``--steps N``: iterations per attack (each entry point's default from :mod:`robustsim.settings`)."""
    return click.option(
        "--steps", default=default, show_default=True, type=click.IntRange(1, 100_000), help="Iterations per attack."
    )


def limit_option(what: str = "triplets") -> Callable:
    """``--limit N``: use only the first N ``what`` (annotation files are read only that far)."""
    return click.option(
        "--limit", type=COUNT, default=None, help=f"Use only the first N {what} (stops reading there)."
    )


overwrite_option = click.option("--overwrite", is_flag=True, default=False, help="Replace a report already in --out.")


def out_dir_option(files: str) -> Callable:
    """``--out DIR``: the folder the command writes ``files`` into (atomically)."""
    return click.option("--out", "out_dir", type=UserPath(output=True), default=None, help=f"Write {files} here.")


def file_output_option(name: str, help: str) -> Callable:
    """An output file option (``--json`` / ``--plot``), checked by :func:`robustsim.io.check_output` early."""
    return click.option(name, type=UserPath(output=True), default=None, help=help)


def check_file_outputs(**paths: Path | None) -> None:
    """Apply the output rule to every given path before any work (one line, exit 2 on a bad one)."""
    from robustsim.io import check_output

    for opt, path in paths.items():
        if path is not None:
            check_output(path, f"--{opt.replace('_', '-')}")


def open_data(spec: str, limit: int | None, size: int | None = None, allow_outside: bool = False) -> Any:
    """The triplets of ``spec`` at ``size``, cut to the first ``limit``."""
    from robustsim.data import open_triplets

    return open_triplets(spec, size=size, limit=limit, allow_outside=allow_outside)


def load_metrics(names: list[str], device: torch.device, dtype: str | None = None) -> list[Any]:
    """Load every metric before any work, so a bad name fails first."""
    from robustsim.zoo import load_metric

    return [load_metric(n, device=device, dtype=dtype) for n in names]


dtype_option = click.option(
    "--dtype",
    type=registry_choice("robustsim.zoo.registry", "DTYPES"),
    default=None,
    help="How the metric is deployed (default: its own; the shipped certified metrics decide adaptively, the rest "
    "in float32). float64 computes in double precision: its certificates lose almost nothing to rounding, at "
    "several times a float32 forward's cost on a CPU. adaptive computes in float32 and takes every 2AFC decision "
    "float32 cannot resolve from the float64 twin: the exact decisions, certified as float64's, at about "
    "float32's cost. float32: plain float32 decisions.",
)


def is_main() -> bool:
    """True outside torchrun and on its rank 0: the process that prints and writes."""
    from robustsim.dist import env_from_os

    return env_from_os().main


def dry_run_option(f: Callable) -> Callable:
    return click.option(
        "--dry-run",
        is_flag=True,
        default=False,
        help="Time one calibration batch, print the estimated cost (passes and time on this device) and stop.",
    )(f)


def say_cost(estimate, dry_run: bool) -> bool:
    """Print a run's estimated cost (and the warning of a long CPU run) on stderr; True when the run should stop
    there (``--dry-run``)."""
    if is_main():
        say(estimate.describe(), err=True)
        if estimate.warning():
            say(f"warning: {estimate.warning()}", err=True)
    return dry_run


precision_option = click.option(
    "--precision",
    type=registry_choice("robustsim.settings", "PRECISIONS"),
    default="auto",
    show_default=True,
    help="The attack steps' autocast: auto is bf16 on a CUDA device that has it, else fp32. Clean decisions, the "
    "re-check of every claimed break and certificates always run in float32.",
)


def smoothing_option(help_text: str) -> Callable:
    """``--smoothing SIGMA`` (into ``sigma``; default None: no smoothing)."""
    return click.option(
        "--smoothing", "sigma", type=FiniteFloat(0, MAX_SIGMA, min_open=True), default=None, help=help_text
    )
