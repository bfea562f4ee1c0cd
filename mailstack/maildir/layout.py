"""Where each mailbox and folder lives on disk, and creating it safely.

Layout: ``<root>/<domain>/<localpart>/`` is a Maildir (``tmp/``, ``new/``,
``cur/``, https://cr.yp.to/proto/maildir.html); Maildir++ folders are sibling
Maildirs inside it named ``.<Folder>`` with ``.`` separating hierarchy levels
(``.Sent``, ``.Archive.2024``), each marked by an empty ``maildirfolder`` file
(Courier's Maildir++ convention, followed by Dovecot).

Every path is built from validated single components and then checked, with
symlinks resolved, to lie inside the root, so no address or folder name can
reach outside it. Directories are created with mode 0700 and each creation is
made durable by fsyncing the parent directory.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from mailstack.addresses import Address, InvalidAddress, parse
from mailstack.fsutil import fsync_directory

SUBDIRS = ("tmp", "new", "cur")
FOLDER_MARKER = "maildirfolder"
DIR_MODE = 0o700
FILE_MODE = 0o600
_MAX_COMPONENT = 255  # octets in one path component (NAME_MAX on Linux)
_CACHE_LIMIT = 50_000


class InvalidFolder(ValueError):
    """The folder name cannot be used as a Maildir++ folder."""


def check_component(part: str) -> str:
    """Refuse anything but one ordinary, printable path component."""
    if (
        not part
        or part in (".", "..")
        or part.startswith(".")
        or "/" in part
        or "\\" in part
        or not part.isprintable()
        or len(part.encode("utf-8", "surrogatepass")) > _MAX_COMPONENT
    ):
        raise InvalidAddress(f"{part!r} cannot be a mailbox path component")
    return part


def folder_dirname(folder: str | None) -> str | None:
    """``"Archive.2024"`` -> ``".Archive.2024"``; None or INBOX -> None (the mailbox).

    Refuses ``/``, ``\\``, NUL and other control characters, empty levels
    (so leading, trailing or doubled dots and ``..``), and over-long names.
    """
    if folder is None or folder.upper() == "INBOX":
        return None
    if (
        not folder
        or "/" in folder
        or "\\" in folder
        or not folder.isprintable()
        or any(not level for level in folder.split("."))
        or len(folder.encode("utf-8", "surrogatepass")) + 1 > _MAX_COMPONENT
    ):
        raise InvalidFolder(f"invalid folder name {folder!r}")
    return "." + folder


def mailbox_components(address: str) -> Address:
    """Parse an address and check both parts can be path components."""
    parsed = parse(address)
    check_component(parsed.domain)
    check_component(parsed.local)
    return parsed


def mailbox_of(maildir: Path) -> Path:
    """The mailbox a Maildir belongs to: itself, or for a ``.Folder`` its parent."""
    return maildir.parent if maildir.name.startswith(".") else maildir


class MaildirLayout:
    """Maps addresses to Maildir paths under one root and creates them on demand.

    Thread safe. Validated paths and created directories are cached, so the
    delivery hot path does no stat or mkdir for a mailbox it has seen.
    """

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self._resolved_root = self.root.resolve()
        self._paths: dict[tuple[str, str | None], Path] = {}
        self._ready: set[str] = set()
        self._lock = threading.Lock()

    def mailbox_path(self, address: str) -> Path:
        """The Maildir of an address (its INBOX)."""
        return self.maildir_path(address, None)

    def maildir_path(self, address: str, folder: str | None = None) -> Path:
        """The Maildir for ``address`` (and Maildir++ ``folder``), not created.

        Raises InvalidAddress or InvalidFolder; never returns a path outside
        the root, also when a directory on the way is a symlink.
        """
        key = (address, folder)
        cached = self._paths.get(key)
        if cached is not None:
            return cached
        parsed = mailbox_components(address)
        path = self.root / parsed.domain / parsed.local
        dirname = folder_dirname(folder)
        if dirname is not None:
            path = path / dirname
        self._check_inside_root(path)
        with self._lock:
            if len(self._paths) >= _CACHE_LIMIT:
                self._paths.clear()
            self._paths[key] = path
        return path

    def _check_inside_root(self, path: Path) -> None:
        try:
            resolved = path.resolve()
        except (OSError, RuntimeError) as exc:  # RuntimeError: symlink loop
            raise InvalidAddress(f"cannot resolve {path}") from exc
        if resolved == self._resolved_root or not resolved.is_relative_to(
            self._resolved_root
        ):
            raise InvalidAddress(f"{path} resolves outside the Maildir root")

    def ensure(self, maildir: Path) -> str:
        """Create ``maildir`` (for a folder, its mailbox too) if needed; return it."""
        key = str(maildir)
        if key in self._ready:
            return key
        mailbox = mailbox_of(maildir)
        if mailbox != maildir:
            self._create_maildir(mailbox, folder=False)
        self._create_maildir(maildir, folder=mailbox != maildir)
        self._check_inside_root(maildir)  # nothing was swapped in while creating
        with self._lock:
            if len(self._ready) >= _CACHE_LIMIT:
                self._ready.clear()
            self._ready.add(key)
        return key

    def forget(self, maildir: Path | str) -> None:
        """Drop a Maildir from the created cache (it was removed under us)."""
        with self._lock:
            self._ready.discard(str(maildir))

    def _create_maildir(self, maildir: Path, *, folder: bool) -> None:
        self._make_dirs(maildir)
        created = False
        for sub in SUBDIRS:
            created |= _mkdir(maildir / sub)
        if folder:
            created |= _touch(maildir / FOLDER_MARKER)
        if created:
            fsync_directory(str(maildir))

    def _make_dirs(self, path: Path) -> None:
        """mkdir the root and each missing level below it, fsyncing parents."""
        relative = path.relative_to(self.root)
        current = self.root
        if not current.is_dir():
            os.makedirs(current, DIR_MODE, exist_ok=True)
            fsync_directory(str(current.parent))
        for part in relative.parts:
            current = current / part
            if _mkdir(current):
                fsync_directory(str(current.parent))


def _mkdir(path: Path) -> bool:
    """Create one directory (0700); False if it already existed."""
    try:
        os.mkdir(path, DIR_MODE)
    except FileExistsError:
        if not path.is_dir():
            raise
        return False
    return True


def _touch(path: Path) -> bool:
    """Create an empty file (0600) unless it exists; True if created."""
    try:
        fd = os.open(
            path,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW,
            FILE_MODE,
        )
    except FileExistsError:
        return False
    os.close(fd)
    return True
