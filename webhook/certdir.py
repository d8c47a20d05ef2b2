"""The cert dir laid out the way kubelet lays out a mounted Secret, so every change is one atomic step.

`tls.crt` is a symlink to `..data/tls.crt`, and `..data` a symlink to a timestamped directory holding the
files. A new set is written into a new directory and `..data` is swapped to it with one rename: a reader
never sees a new certificate with an old key. The self-managed keeper writes this way; tests use it to
play kubelet updating a Secret volume.
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
import shutil
from pathlib import Path

DATA = "..data"


def publish(cert_dir: str | Path, files: dict[str, bytes]) -> None:
    """Make the files in `files` (name -> content; names ending in .key get mode 0600) appear at once."""
    cert_dir = Path(cert_dir)
    cert_dir.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y_%m_%d_%H_%M_%S")
    version = cert_dir / f"..{stamp}.{secrets.token_hex(4)}"
    version.mkdir(mode=0o755)
    for name, content in files.items():
        mode = 0o600 if name.endswith(".key") else 0o644
        fd = os.open(version / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "wb") as out:
            out.write(content)
            out.flush()
            os.fsync(out.fileno())
    data = cert_dir / DATA
    previous = os.readlink(data) if data.is_symlink() else None
    _link(cert_dir / "..data_tmp", version.name, data)
    for name in files:
        visible = cert_dir / name
        if os.path.islink(visible) and os.readlink(visible) == f"{DATA}/{name}":
            continue
        _link(cert_dir / f".{name}.link", f"{DATA}/{name}", visible)
    if previous and previous != version.name and previous.startswith(".."):
        shutil.rmtree(cert_dir / previous, ignore_errors=True)


def _link(tmp: Path, target: str, final: Path) -> None:
    """Point `final` at `target` with one rename, replacing whatever was there."""
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, final)


def read(cert_dir: str | Path, names: tuple[str, ...]) -> dict[str, bytes] | None:
    """The current contents, or None when any of them is missing."""
    try:
        return {name: (Path(cert_dir) / name).read_bytes() for name in names}
    except OSError:
        return None
