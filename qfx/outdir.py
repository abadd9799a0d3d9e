"""Writing generated files into a user's output folder without ever losing the user's files.

:func:`write_files` writes a set of generated files (relative path -> text)
under an output folder and records what it wrote in ``.qfx-files.json``
there. A later run may replace those files; a file that qfx did not write
(one not listed) is *foreign*:

* without ``force`` any foreign file in the way makes the call refuse
  (``FileExistsError`` naming the files) before anything is written;
* with ``force`` qfx writes beside foreign files and leaves them alone --
  never deleted, never rewritten: a foreign file at a path qfx writes is
  refused even then (move it away);
* a symbolic link on the way to a file qfx writes or removes (the file
  itself or a folder below ``out_dir``) is refused, ``force`` or not, so that
  nothing is written or deleted outside the output folder through it.

The output folder is untrusted too: a record naming paths outside it (``..``,
absolute paths) protects nothing and removes nothing. Files of an earlier run
that the new run does not produce are removed (they are qfx's own). Every file is first written beside its destination and then
moved into place with ``os.replace``, so a reader never sees a half-written
file, and nothing is written at all when generation fails (callers render
everything before calling this).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping

__all__ = ["write_files", "RECORD", "foreign_files", "blocking_file", "symlink_on_the_way"]

#: The record of the files qfx wrote into an output folder.
RECORD = ".qfx-files.json"


def _recorded(out: Path) -> set[str]:
    path = out / RECORD
    if not path.exists():
        return set()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return {str(p) for p in data["files"] if isinstance(p, str) and _inside(p)}
    except (ValueError, KeyError, TypeError):
        # An unreadable record protects nothing: treat every file as foreign.
        return set()


def _inside(rel: str) -> bool:
    """A relative POSIX path that stays below its folder (no ``..``, not absolute, not empty)."""
    parts = Path(rel).parts
    return bool(parts) and not Path(rel).is_absolute() and ".." not in parts and "\\" not in rel


def symlink_on_the_way(out: Path, rel: str) -> "Path | None":
    """The first symbolic link among ``out/rel`` and its folders below ``out``; None if there is none."""
    p = out
    for part in Path(rel).parts:
        p = p / part
        if p.is_symlink():
            return p
        if not p.exists():
            return None
    return None


def foreign_files(out_dir: "str | os.PathLike", under: str = "") -> list[str]:
    """Files below ``out_dir/under`` that qfx did not write (relative to ``out_dir``, sorted)."""
    out = Path(out_dir)
    ours = _recorded(out)
    base = out / under if under else out
    if not base.exists():
        return []
    found = []
    for p in sorted(base.rglob("*")):
        if p.is_dir():
            continue
        rel = p.relative_to(out).as_posix()
        if rel != RECORD and rel not in ours:
            found.append(rel)
    return found


def blocking_file(out: Path) -> "Path | None":
    """What stops ``out`` from being (or becoming) a folder: ``out`` itself when it is a file, else
    its nearest existing parent when that is a file; None when nothing does."""
    if out.exists() and not out.is_dir():
        return out
    for parent in out.absolute().parents:
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


def write_files(out_dir: "str | os.PathLike", files: Mapping[str, "str | bytes"], *, force: bool = False,
                replace: "tuple[str, ...]" = ()) -> list[Path]:
    """Write ``files`` (relative POSIX path -> text or bytes) under ``out_dir``; return the paths written.

    ``replace`` names sub-folders (e.g. ``("rtl", "board")``) that this call regenerates as a
    whole: qfx's own files there that are not in ``files`` are removed.

    Raises
    ------
    FileExistsError
        ``out_dir`` is a file, or holds foreign files at or below the paths this call writes
        and ``force`` is false (nothing is written).
    ValueError
        A path that is absolute or climbs out of ``out_dir``.
    """
    out = Path(out_dir)
    blocker = blocking_file(out)
    if blocker is out:
        raise FileExistsError(f"{out} exists and is not a folder; choose another -o")
    if blocker is not None:
        raise FileExistsError(f"{blocker} is a file, so {out} cannot be created; choose another -o")
    for rel in files:
        if not _inside(rel):
            raise ValueError(f"generated path {rel!r} must be relative and stay inside the output folder")
    ours = _recorded(out)
    stale = sorted(rel for rel in ours if rel not in files and any(rel.startswith(f"{d}/") for d in replace))
    links = [str(link) for rel in (*sorted(files), *stale) if (link := symlink_on_the_way(out, rel)) is not None]
    if links:
        raise FileExistsError(
            f"{sorted(set(links))[0]} is a symbolic link where qfx writes; qfx does not write or delete through "
            "links (they may lead out of the output folder), --force or not: remove the link or choose another -o")
    if out.exists():
        # a file at a path qfx writes that qfx did not write: never overwritten, --force or not
        taken = [rel for rel in sorted(files) if (out / rel).exists() and rel not in ours]
        if taken and force:
            more = f" and {len(taken) - 5} more" if len(taken) > 5 else ""
            raise FileExistsError(
                f"{out} holds files qfx did not write where it writes its own: {', '.join(taken[:5])}{more}; "
                "--force never overwrites them: move them away, or choose another -o")
        clash = list(taken)
        for folder in replace:
            clash += [f for f in foreign_files(out, folder) if f not in files]
        clash = sorted(set(clash))
        if clash and not force:
            more = f" and {len(clash) - 5} more" if len(clash) > 5 else ""
            raise FileExistsError(
                f"{out} holds files qfx did not write: {', '.join(clash[:5])}{more}; "
                "choose an empty folder, or pass --force to write anyway (files qfx does not write are kept)"
            )
    written = []
    for rel, content in sorted(files.items()):
        dest = out / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.parent / f".{dest.name}.qfx-tmp{os.getpid()}"
        data = content.encode("utf-8") if isinstance(content, str) else bytes(content)
        tmp.write_bytes(data)
        os.replace(tmp, dest)
        written.append(dest)
    for rel in stale:
        p = out / rel
        if p.is_file() and not p.is_symlink():
            p.unlink()
    record = sorted((ours - set(stale)) | set(files))
    tmp = out / f".{RECORD}.tmp{os.getpid()}"
    tmp.write_text(json.dumps({"files": record}, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, out / RECORD)
    return written
