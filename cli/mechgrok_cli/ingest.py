"""``mechgrok ingest``."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from mechgrok_cli.app import app, out, run_guarded


@app.command()
def ingest(
    src: Annotated[str, typer.Argument(help="Run directory, .pth/.pt/.safetensors file, folder of {epoch}.pth files, or Zarr store; a path or an fsspec URL (s3://...).")],
    out_path: Annotated[str, typer.Option("--out", "-o", help="Zarr store to write (e.g. run.zarr, s3://bucket/run.zarr).")],
    format: Annotated[Optional[str], typer.Option(
        "--format",
        help="Override format detection: mechgrok-run, zarr, paper-epochs, paper-full-run, paper-model, tl-demo, tl-model.",
    )] = None,
    trust_checkpoint: Annotated[bool, typer.Option(
        "--trust-checkpoint", help="Allow a full unpickle of .pth files (can run arbitrary code: trusted files only).",
    )] = False,
    seed: Annotated[Optional[int], typer.Option(help="Split seed, for sources that do not store their split (default: the source config's, else 0).")] = None,
    frac_train: Annotated[Optional[float], typer.Option(help="Training fraction, for sources that do not store their split (default: the source config's, else 0.3).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing store.")] = False,
) -> None:
    """Load a checkpoint trajectory (any supported format) and write it as a Zarr v3 store.

    Bad input exits with code 2 and writes nothing.
    """
    from mechgrok.store import ingest as run_ingest
    from mechgrok.store import open_run

    path = run_guarded(run_ingest, src, out_path, format=format, trusted=trust_checkpoint, seed=seed,
                       frac_train=frac_train, overwrite=overwrite)
    ds = run_guarded(open_run, path)
    epochs = ds["checkpoint"].values
    p = ds.attrs.get("p")
    out.print(
        f"wrote [bold]{path}[/]: {ds.sizes['checkpoint']} checkpoints (epochs {int(epochs[0])}..{int(epochs[-1])}), "
        f"format {ds.attrs['source_format']}, {ds.attrs['n_layers']} layer(s)"
        + (f", p = {p}" if p is not None else ", no modulus")
        + (f", split {ds.attrs['split']}" if "split" in ds.attrs else ""),
        highlight=False,
    )
    if ds.attrs.get("split") == "rebuilt":  # the source stores no split: say which one was assumed
        out.print(f"[yellow]assumed split:[/] seed {ds.attrs.get('split_seed')}, frac_train "
                  f"{ds.attrs.get('split_frac_train')} ({ds.attrs.get('split_rule', '')}); the store's attrs "
                  "split_seed and split_frac_train record it. Pass --seed/--frac-train if the run used others.",
                  highlight=False, soft_wrap=True)
