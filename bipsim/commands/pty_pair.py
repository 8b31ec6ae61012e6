"""`bipsim pty-pair`: two linked raw pseudo-terminals, printed and optionally symlinked, until Ctrl-C or SIGTERM."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import click
import trio

from bipsim.errors import CliError
from bipsim.link.pty_relay import DirectionStats, PtyPair


def _check_links(links: tuple[str, ...]) -> list[Path]:
    if len(links) not in (0, 2):
        raise CliError(f"--link must be given twice (one per side) or not at all, got {len(links)}")
    paths = [Path(link) for link in links]
    for path in paths:
        if not path.parent.is_dir():
            raise CliError(f"--link {path}: directory {path.parent} does not exist")
        if path.exists() and not path.is_symlink():
            raise CliError(f"--link {path}: exists and is not a symlink; refusing to replace it")
    if len(paths) == 2 and paths[0].absolute() == paths[1].absolute():
        raise CliError("the two --link paths must differ")
    return paths


def _describe(name: str, stats: DirectionStats) -> str:
    return f"{name}: {stats.bytes} bytes, {stats.rate:.0f} B/s"


def _describe_pacing(pair: PtyPair) -> str:
    if pair.baud is None:
        return "unpaced"
    return f"paced at {pair.baud} baud 8N1 ({pair.bytes_per_second:.0f} B/s per direction)"


async def _serve(links: list[Path], show_stats: bool, baud: int | None) -> None:
    pair = PtyPair.create(baud=baud)
    made: list[Path] = []
    try:
        # the handlers go in before the paths are printed: a SIGTERM right after the reader saw them must still
        # end the pair cleanly (links removed, --stats printed), not by the default action
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                await nursery.start(pair.run)
                for link, target in zip(links, pair.paths[: len(links)], strict=True):
                    if link.is_symlink():
                        link.unlink()
                    link.symlink_to(target)
                    made.append(link)
                if made:
                    for link, target in zip(made, pair.paths, strict=True):
                        click.echo(f"{link} -> {target}")
                else:
                    for target in pair.paths:
                        click.echo(target)
                sys.stdout.flush()
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    break
    finally:
        for link in made:
            try:
                if link.is_symlink():
                    link.unlink()
            except OSError:
                pass
        await pair.aclose()
        if show_stats:
            click.echo(
                _describe("A->B", pair.stats[0])
                + "; "
                + _describe("B->A", pair.stats[1])
                + "; "
                + _describe_pacing(pair),
                err=True,
            )


@click.command("pty-pair")
@click.option(
    "--link",
    "links",
    multiple=True,
    metavar="PATH",
    help="Make a symlink PATH to a side; give it twice (first for side A, then B). Removed on exit.",
)
@click.option("--stats", is_flag=True, help="On exit, print bytes and throughput per direction on stderr.")
@click.option(
    "--baud",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="Pace each direction like a real serial line at N baud, 8N1 (N/10 bytes a second); default: unpaced.",
)
def pty_pair(links: tuple[str, ...], stats: bool, baud: int | None) -> None:
    """Create two linked pseudo-terminals in raw mode (no echo, no CR/LF translation, all 256 byte values) and
    copy bytes between them until Ctrl-C or SIGTERM, like `socat -d -d pty,raw,echo=0 pty,raw,echo=0`.

    Prints the two device paths (one a line, side A first) or, with --link, the symlinks and their targets.
    Either side may be closed and opened again while the pair runs. With --baud N the pair moves bytes no
    faster than a real line at N baud would (a pty's own termios speed is ignored by the kernel).
    """
    paths = _check_links(links)
    if os.name != "posix":
        raise CliError("pseudo-terminals need a POSIX system")
    trio.run(_serve, paths, stats, baud)
