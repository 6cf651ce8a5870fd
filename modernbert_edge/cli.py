"""`mbedge`: a thin typer CLI over the library functions.

Each subpackage keeps its commands in its own `commands.py` (heavy imports inside the command
bodies); this module only registers them. A UserError ends in one line on stderr and exit code 2.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable

import typer
from typer.core import TyperGroup

from modernbert_edge.errors import OptionError, UserError

# click's UsageError (typer may vendor click, so it is found through typer's BadParameter)
UsageError = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")


class OneLineErrors(TyperGroup):
    """click's usage errors (an unknown option, a value not among an option's choices) as one line on
    stderr and exit code 2, as a UserError ends, instead of the usage text and a framed message."""

    def main(self, *args: object, standalone_mode: bool = True, **kwargs: object) -> object:
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        argv = list(kwargs.get("args") or (args[0] if args else None) or sys.argv[1:])
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except UsageError as e:
            if type(e).__name__ == "NoArgsIsHelpError":  # `mbedge` alone: the help is the answer, not an error
                typer.echo(e.format_message())
                sys.exit(0)
            where = e.ctx.command_path if e.ctx is not None else self._command_path(argv)
            message = e.format_message().replace("Value error, ", "").rstrip(".")  # typer 0.29's prefix
            typer.echo(f"error: {message}; see {where} --help.", err=True)
            sys.exit(2)
        except typer.Abort:
            typer.echo("interrupted", err=True)
            sys.exit(130)
        sys.exit(code if isinstance(code, int) else 0)

    def _command_path(self, argv: list[str]) -> str:
        """'mbedge CMD' for the first argument that names a command (click leaves some errors without a
        context, e.g. an option missing its value), else 'mbedge'."""
        name = next((a for a in argv if a in self.commands), None)
        return f"mbedge {name}" if name else "mbedge"


app = typer.Typer(
    name="mbedge",
    cls=OneLineErrors,
    help="Export ModernBERT checkpoints to fused ONNX graphs, quantize them, and run them on CPU.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        from modernbert_edge import __version__
        from modernbert_edge.cpu import cpu_info

        typer.echo(f"mbedge {__version__} (Python {sys.version.split()[0]}; {cpu_info().line()})")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(
        False, "--version", help="Print the version and this CPU's int8 kernel class.", callback=_version, is_eager=True
    ),
) -> None:
    """Export ModernBERT checkpoints to fused ONNX graphs, quantize them, and run them on CPU."""


def user_errors(fn: Callable) -> Callable:
    """Turn UserError (and Ctrl-C) into a one-line message and a non-zero exit code."""

    @functools.wraps(fn)
    def wrapper(*args: object, **kwargs: object) -> object:
        try:
            return fn(*args, **kwargs)
        except UserError as e:  # an option's error names its flag, as the user typed it
            typer.echo(f"error: {e.as_flags() if isinstance(e, OptionError) else e}", err=True)
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None

    return wrapper


def register(name: str, fn: Callable) -> None:
    app.command(name)(user_errors(fn))


def _register_all() -> None:
    from modernbert_edge.export import commands as export_commands

    register("export", export_commands.export_cmd)
    register("parity", export_commands.parity_cmd)

    from modernbert_edge.quantize import commands as quantize_commands

    register("quantize", quantize_commands.quantize_cmd)
    register("compare", quantize_commands.compare_cmd)

    from modernbert_edge.bench import commands as bench_commands

    register("bench", bench_commands.bench_cmd)

    from modernbert_edge.runtime import commands as runtime_commands

    register("run", runtime_commands.run_cmd)
    register("info", runtime_commands.info_cmd)

    from modernbert_edge.ray import commands as ray_commands

    register("batch", ray_commands.batch_cmd)

    from modernbert_edge.serve import commands as serve_commands

    register("serve", serve_commands.serve_cmd)
    register("loadtest", serve_commands.loadtest_cmd)

    from modernbert_edge import demo

    register("demo", demo.demo_cmd)


_register_all()


def main() -> None:
    sys.exit(app(prog_name="mbedge"))


if __name__ == "__main__":
    main()
