"""The ``robustsim`` command line: the group, its entry point, one module per command.

Bad input: a one-line message on stderr and exit code 2. Shared options live in
:mod:`robustsim.cli.options`; command modules import only from there (never from this package).
"""

from __future__ import annotations

import contextlib
import faulthandler
import functools
import os
import sys

import click

from robustsim.cli.audit import audit_cmd
from robustsim.cli.bench import bench_cmd
from robustsim.cli.certify import certify_cmd
from robustsim.cli.demo import demo_cmd
from robustsim.cli.metrics import metrics_cmd
from robustsim.cli.plot import plot_cmd
from robustsim.cli.retrieval import retrieval_cmd
from robustsim.cli.score import score_cmd
from robustsim.cli.train import train_group
from robustsim.cli.weights import weights_group
from robustsim.errors import RobustsimError
from robustsim.text import visible


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="robustsim", default=False)
@click.option(
    "--threads",
    type=click.IntRange(1, 1024),
    default=None,
    envvar="ROBUSTSIM_THREADS",
    help="torch threads per process (env ROBUSTSIM_THREADS). Default: the CPUs this process may use "
    "(affinity and cgroup quota) less those busy with other work, split over torchrun processes.",
)
def cli(threads: int | None) -> None:
    """robustsim: audit, certify and train robust perceptual similarity metrics.

    Metrics take images in [0, 1]; 2AFC data comes from a spec (see `robustsim score --help`).
    """
    # the thread count is set when a command starts its work (_threads_first): a bad option or --help of a
    # command is answered before torch is imported


def _threads_first(command: click.Command) -> None:
    """Make ``command`` (every command of a group) set torch's threads (--threads) before its own work."""
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            _threads_first(sub)
        return
    body = command.callback
    if body is None:
        return

    @functools.wraps(body)
    def run(*args, **kwargs):
        from robustsim.threads import configure_threads

        configure_threads(click.get_current_context().find_root().params.get("threads"))
        return body(*args, **kwargs)

    command.callback = run


def _help_with_default(command: click.Command) -> None:
    """``-h / --help`` declared on every command with its default (False), so the reference page (mkdocs-click)
    shows a value, not click's internal sentinel; click then adds no help option of its own."""
    click.help_option("-h", "--help", default=False)(command)
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            _help_with_default(sub)


for _command in (
    metrics_cmd,
    weights_group,
    score_cmd,
    certify_cmd,
    audit_cmd,
    bench_cmd,
    retrieval_cmd,
    plot_cmd,
    demo_cmd,
    train_group,
):
    _threads_first(_command)
    cli.add_command(_command)
_help_with_default(cli)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: RobustsimError -> one line on stderr, exit 2; a crash in native code (a signal)
    still prints the Python stack of every thread."""
    from robustsim.memory import tune_malloc

    tune_malloc()  # the command's process only, before its large allocations (robustsim/memory.py)
    if not faulthandler.is_enabled():
        with contextlib.suppress(AttributeError, ValueError, OSError):  # stderr without a descriptor (captured)
            faulthandler.enable()
    try:
        cli.main(args=argv, prog_name="robustsim", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as err:
        _close_bars()
        err.message = visible(err.message)  # a value typed or read from a file is shown as text, escapes escaped
        err.show()
        sys.exit(2 if isinstance(err, click.UsageError) else err.exit_code)
    except RobustsimError as err:
        _close_bars()
        click.echo(f"error: {visible(err)}", err=True)
        sys.exit(2)
    except click.exceptions.Exit as err:
        sys.exit(err.exit_code)
    except RuntimeError as err:
        from robustsim.dist import timeout_message

        line = timeout_message(err)
        if line is None:
            raise
        click.echo(f"error: {line}", err=True)
        os._exit(3)  # the group is broken: leaving it would wait for the rank that stopped
    finally:
        _leave_process_group()


def _close_bars() -> None:
    """Close the progress bars a failed command left open, so its one error line starts a line of its own."""
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", ())):
        with contextlib.suppress(Exception):
            bar.close()


def _leave_process_group() -> None:
    """Under torchrun, leave the process group the command joined (every rank, after its last collective)."""
    if "torch" not in sys.modules:  # a command that never needed torch (--help, a bad option) joined no group
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        from robustsim.dist import barrier, env_from_os, shutdown

        env = env_from_os()
        barrier(env)
        shutdown(env)
