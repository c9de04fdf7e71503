"""``replaystore export``, ``import`` and ``merge``: rows between stores, npz, HDF5 and Minari."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from .output import emit_json, size
from .params import STORE


def _report(result: Any, verb: str, as_json: bool) -> None:
    if as_json:
        emit_json(result.to_dict())
        return
    where = Path(result.path)
    nbytes = (sum(p.stat().st_blocks * 512 for p in where.rglob("*") if p.is_file())
              if where.is_dir() else where.stat().st_size)
    click.echo(f"{verb} {result.rows:,} rows ({result.episodes:,} finished episodes"
               + (", with priorities" if result.priorities else "") + f") -> {result.path} "
               f"({result.format}, {size(nbytes)})")
    click.echo(f"fields  {', '.join(result.fields)}")
    for note in result.notes:
        click.echo(f"note    {note}")


def _format_of(path: Path, given: str | None, hint: str) -> str:
    from replaystore.transfer import TransferError, detect_format

    if given:
        return given
    try:
        return detect_format(path)
    except TransferError as exc:
        raise click.BadParameter(f"{exc} (or pass --format)", param_hint=hint) from None


def _check_new(path: Path, hint: str, *, overwrite: bool = False) -> None:
    if path.exists() and not (overwrite and path.is_file()) and not (
            path.is_dir() and not any(path.iterdir())):
        raise click.BadParameter(f"{str(path)!r} exists"
                                 + ("; pass --overwrite to replace it" if path.is_file() else
                                    "; choose a new path"), param_hint=hint)
    if not path.parent.is_dir():
        raise click.BadParameter(f"folder {str(path.parent)!r} does not exist", param_hint=hint)


@click.command(short_help="Write a store's rows to npz or D4RL-style HDF5.", epilog="""\b
Examples:
  replaystore export runs/cartpole cartpole.npz
  replaystore export runs/cartpole cartpole.h5          # D4RL-style HDF5 (needs h5py)
  replaystore export runs/breakout breakout.npz --compress""")
@click.argument("path", type=STORE)
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["npz", "hdf5"]),
              help="Output format (default: from OUT's extension: .npz, .h5, .hdf5).")
@click.option("--compress", is_flag=True, help="Deflate (npz) or gzip (HDF5) the arrays.")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists (atomically).")
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON.")
def export(path: Path, out: Path, fmt: str | None, compress: bool, overwrite: bool,
           as_json: bool) -> None:
    """Write the committed rows of the store at PATH to OUT (npz or D4RL-style HDF5).

    Rows are written oldest first, as a learner reads them (next_obs in full, frame stacks
    stacked), with the schema and any priorities, so 'replaystore import' restores the store
    exactly. HDF5 uses D4RL's names: observations, actions, rewards, terminals, timeouts,
    next_observations. OUT is written under a temporary name and renamed when complete.
    """
    from replaystore.transfer import export_store

    fmt = _format_of(out, fmt, "OUT")
    _check_new(out, "OUT", overwrite=overwrite)
    _report(export_store(path, out, format=fmt, compress=compress, overwrite=overwrite),
            "exported", as_json)


@click.command("import", short_help="Create a store from npz, HDF5 (D4RL) or a Minari dataset.",
               epilog="""\b
Examples:
  replaystore import cartpole.npz runs/cartpole-copy
  replaystore import hopper-medium-v2.hdf5 runs/hopper --capacity 1000000
  replaystore import ~/.minari/datasets/D4RL/door/human-v2 runs/door   # needs minari""")
@click.argument("src", type=click.Path(exists=True, path_type=Path))
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["npz", "hdf5", "minari"]),
              help="Input format (default: from SRC's extension, or a Minari folder).")
@click.option("--capacity", type=click.IntRange(min=1), metavar="N",
              help="Ring size of the new store (default: the exported store's, else unbounded).")
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON.")
def import_(src: Path, path: Path, fmt: str | None, capacity: int | None,
            as_json: bool) -> None:
    """Create a store at PATH from SRC: an npz or HDF5 file (D4RL names are understood) or a
    Minari dataset folder (if minari is installed).

    Files written by 'replaystore export' come back exactly (schema, codecs, rows, episodes,
    priorities); other files get a schema inferred from their arrays. The store is built
    under a temporary name and renamed into place when committed, so PATH never holds a
    half-imported store.
    """
    from replaystore.transfer import import_store

    fmt = _format_of(src, fmt, "SRC")
    _check_new(path, "PATH")
    _report(import_store(src, path, format=fmt, capacity=capacity), "imported", as_json)


@click.command(short_help="Combine stores of the same schema into a new store.", epilog="""\b
Examples:
  replaystore merge runs/seed0 runs/seed1 runs/both
  replaystore merge runs/a runs/b runs/c runs/abc --capacity 1000000""")
@click.argument("stores", nargs=-1, type=STORE, metavar="A B [C ...]")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--capacity", type=click.IntRange(min=1), metavar="N",
              help="Ring size of the new store (default: unbounded).")
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON.")
def merge(stores: tuple[Path, ...], out: Path, capacity: int | None, as_json: bool) -> None:
    """Create the store OUT holding the rows of A, then B (then C ...).

    The schemas must match field for field (the error names the first field that differs;
    codecs may differ, A's are used). Episodes stay whole; a source that ends in an unfinished
    episode has its last step marked truncated=True, so no episode runs from one source into
    the next and OUT ends between episodes.
    Priorities are kept when every source has a priority index with the same alpha. OUT is
    built under a temporary name and renamed into place when committed.
    """
    from replaystore.transfer import merge_stores

    if len(stores) < 2:
        raise click.UsageError("merge needs at least two source stores and OUT")
    _check_new(out, "OUT")
    _report(merge_stores(stores, out, capacity=capacity), "merged", as_json)
