"""Reading and writing the user's files: only regular files are read, with a size bound, and
outputs are written whole or not at all (temporary file or folder, then a rename).
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path

from .errors import BnncError

# protobuf cannot parse more than 2 GiB, and no input bnnc reads is larger
MAX_READ_BYTES = 2**31 - 1


def _reason(e: OSError) -> str:
    return e.strerror or type(e).__name__


def read_bytes(path, what: str, max_bytes: int = MAX_READ_BYTES) -> bytes:
    """The bytes of the regular file `path` (`what` names it in errors: "model", "input file"...)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise BnncError(f"cannot read {what} '{path}': no such file (it does not exist)") from None
    except OSError as e:
        raise BnncError(f"cannot read {what} '{path}': {_reason(e)}") from None
    if stat.S_ISDIR(st.st_mode):
        raise BnncError(f"{what} '{path}' is a folder, not a file")
    if not stat.S_ISREG(st.st_mode):  # /dev/zero, a FIFO, a socket: endless or blocking reads
        raise BnncError(f"{what} '{path}' is not a regular file")
    if st.st_size > max_bytes:
        raise BnncError(f"{what} '{path}' has {st.st_size} bytes; bnnc reads at most {max_bytes}")
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as e:
        raise BnncError(f"cannot read {what} '{path}': {_reason(e)}") from None
    if len(data) > max_bytes:
        raise BnncError(f"{what} '{path}' has more than {max_bytes} bytes; bnnc reads at most {max_bytes}")
    if not data:
        raise BnncError(f"{what} '{path}' is empty")
    return data


def check_output_file(path, flag: str) -> None:
    """Refuse an output file path that cannot be written (checked before any work is done)."""
    p = Path(path)
    try:
        if p.is_dir():
            raise BnncError(f"{flag} '{path}' is a folder, not a file")
        parent = p.parent
        if not parent.is_dir():
            raise BnncError(f"{flag} '{path}': folder '{parent}' does not exist")
        if not os.access(parent, os.W_OK):
            raise BnncError(f"{flag} '{path}': folder '{parent}' is not writable")
        if len(p.name.encode()) > _name_max(parent):
            raise BnncError(f"{flag} '{path}': file name longer than the file system allows")
    except OSError as e:
        raise BnncError(f"{flag} '{path}': {_reason(e)}") from None


def _name_max(folder: Path) -> int:
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def write_files_atomically(contents: dict) -> None:
    """{path: bytes}: every file replaced whole (temporary sibling + os.replace), all temporary
    files written before the first is moved into place, so a full disk changes nothing."""
    temps = {}
    umask = os.umask(0)
    os.umask(umask)
    try:
        for path, data in contents.items():
            p = Path(path)
            fd, tmp = tempfile.mkstemp(prefix=f".{p.name[:40]}.", suffix=".tmp", dir=p.parent)
            temps[path] = tmp
            os.fchmod(fd, 0o666 & ~umask)  # as open() would create it (mkstemp makes it private)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        for path, tmp in temps.items():
            os.replace(tmp, path)
    except OSError as e:
        raise BnncError(f"cannot write '{path}': {_reason(e)}") from None
    finally:
        for tmp in temps.values():
            if os.path.exists(tmp):
                os.unlink(tmp)


def check_output_folder(out: Path, names) -> None:
    """Refuse an output folder bnnc cannot fill with the files `names` (paths relative to it)."""
    try:
        if len(out.name.encode()) > _name_max(out.parent if out.parent.is_dir() else Path(".")):
            raise BnncError(f"output folder '{out}': name longer than the file system allows")
        if out.exists() and not out.is_dir():
            raise BnncError(f"output '{out}' exists and is not a directory")
        if not out.exists():
            return
        for n in names:
            dest = out / n
            if dest.is_dir() and not dest.is_symlink():
                raise BnncError(f"cannot write '{dest}': it is a folder")
            for parent in list(Path(n).parents)[:-1]:
                if (out / parent).exists() and not (out / parent).is_dir():
                    raise BnncError(f"cannot write '{dest}': '{out / parent}' is not a folder")
    except OSError as e:
        raise BnncError(f"output folder '{out}': {_reason(e)}") from None


def write_folder_atomically(out: Path, files: dict) -> None:
    """Write {relative name: text} under `out`: all files go to a temporary sibling folder first;
    a new `out` is that folder renamed, an existing one gets the files moved in, and any failure
    puts back what was there before."""
    check_output_folder(out, files)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".bnnc-", dir=out.parent))
    except OSError as e:
        raise BnncError(f"cannot create output folder '{out}': {_reason(e)}") from None
    try:
        staged = tmp / "new"
        for n, text in sorted(files.items()):
            (staged / n).parent.mkdir(parents=True, exist_ok=True)
            (staged / n).write_text(text)
        if not out.exists():
            os.replace(staged, out)
        else:
            _move_into(staged, out, sorted(files), tmp / "old")
    except OSError as e:
        raise BnncError(f"cannot write to '{out}': {_reason(e)}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _move_into(staged: Path, out: Path, names: list, backup: Path) -> None:
    """Move staged files into the existing folder `out`, undoing every move if one fails."""
    moved, created = [], []  # (dest, backup or None); folders made
    try:
        for n in names:
            dest = out / n
            for parent in reversed(list(Path(n).parents)[:-1]):
                if not (out / parent).exists():
                    (out / parent).mkdir()
                    created.append(out / parent)
            kept = None
            if dest.exists() or dest.is_symlink():
                kept = backup / n
                kept.parent.mkdir(parents=True, exist_ok=True)
                os.replace(dest, kept)
            moved.append((dest, kept))
            os.replace(staged / n, dest)
    except OSError:
        for dest, kept in reversed(moved):
            try:
                if kept is not None:
                    os.replace(kept, dest)
                elif dest.exists():
                    dest.unlink()
            except OSError:
                pass
        for d in reversed(created):
            try:
                d.rmdir()
            except OSError:
                pass
        raise
