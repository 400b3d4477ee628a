"""The output folder: a writability check before any computation, and atomic
publishing of the results once everything is written.

Results are first written into a staging folder inside the output folder, then
moved into place file by file with atomic renames as one transaction: a failure
while writing or while moving leaves the earlier results as they were. (A hard
crash of the process between two renames can still leave the previous files in
a hidden `.flowtools-previous-*` folder inside the output folder.)
"""

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from flowtools.config import Config
from flowtools.experiment._common import ExperimentError


def check_writable(out_dir: str | os.PathLike) -> Path:
    """Make sure results can be written into `out_dir`, before any computation.

    Creates the folder (and its parents) when missing and writes, then removes, a
    scratch file in it.

    **Arguments:**

    - `out_dir`: the output folder.

    **Returns:** the folder as an absolute `Path`.

    **Raises:** `ExperimentError` naming the folder and the reason when it cannot be
    created or written.
    """
    out = Path(out_dir).expanduser().absolute()
    try:
        if out.exists() and not out.is_dir():
            raise ExperimentError(
                f"the output folder {out} exists and is not a folder; choose another "
                "--out."
            )
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".flowtools-probe-", dir=out)
        os.close(fd)
        os.remove(probe)
    except OSError as err:
        reason = err.strerror or str(err)
        raise ExperimentError(
            f"cannot write results into {out}: {reason}. Choose a writable folder "
            "with --out (or output.out=...); nothing was computed."
        ) from None
    return out


def _guarded(out_dir, body):
    """Check `out_dir`, run `body(out)`; remove `out_dir` again if the run created
    it and failed before writing anything."""
    existed = Path(out_dir).expanduser().exists()
    out = check_writable(out_dir)
    try:
        return body(out)
    except BaseException:
        if not existed and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise


def _publish(staging: Path, out: Path) -> None:
    """Move every file of `staging` into `out` as one transaction.

    Each file goes in by one atomic rename; a file it replaces is first moved
    aside, and if any move fails every file already moved is taken out again and
    the files moved aside are put back, so `out` holds either all the new files
    or all the old ones. A folder standing where a file must go is refused before
    anything moves.
    """
    files = [src for src in sorted(staging.rglob("*")) if not src.is_dir()]
    blocked = [
        str(out / src.relative_to(staging))
        for src in files
        if (out / src.relative_to(staging)).is_dir()
    ]
    if blocked:
        raise ExperimentError(
            f"cannot write results into {out}: {', '.join(blocked)} "
            f"{'is a folder' if len(blocked) == 1 else 'are folders'} where a result "
            "file must go. Move it away or choose another --out."
        )

    aside = Path(tempfile.mkdtemp(prefix=".flowtools-previous-", dir=out))
    done = []  # (destination, its previous file moved aside or None, placed)
    try:
        for src in files:
            relative = src.relative_to(staging)
            dest = out / relative
            previous = None
            if os.path.lexists(dest):
                previous = aside / relative
                previous.parent.mkdir(parents=True, exist_ok=True)
                os.replace(dest, previous)
            done.append((dest, previous, False))
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dest)
            done[-1] = (dest, previous, True)
    except BaseException:
        for dest, previous, placed in reversed(done):
            if placed:
                os.remove(dest)
            if previous is not None:
                os.replace(previous, dest)
        raise
    finally:
        shutil.rmtree(aside, ignore_errors=True)


def _write_outputs(
    out: Path,
    results,
    config: Config,
    extra: Callable[[Path], None] | None = None,
) -> None:
    """Write results, config and figures to a staging folder, then publish them."""
    staging = Path(tempfile.mkdtemp(prefix=".flowtools-staging-", dir=out))
    try:
        results.save(staging)
        (staging / "config.toml").write_text(config.to_toml(), encoding="utf-8")
        if config.output.figures:
            from flowtools import plots

            plots.draw_all(
                results,
                staging / "figures",
                formats=config.output.formats,
                dpi=config.output.dpi,
            )
        if extra is not None:
            extra(staging)
        _publish(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
