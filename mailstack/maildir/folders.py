"""A user's folders: listing, create, delete, rename, subscriptions, special-use.

Maildir++ (Courier's layout, followed by Dovecot): INBOX is the Maildir
itself; folder ``A.B`` is the sibling Maildir ``.A.B`` with a ``maildirfolder``
marker, so ``.`` is the hierarchy delimiter IMAP clients see (RFC 3501 §5.1.1)
and cannot appear inside one level of a name. Names are stored on disk as
UTF-8 (the IMAP layer converts from modified UTF-7). Every path comes from
:class:`MaildirLayout`, which refuses ``/``, ``..``, NUL and anything that
would resolve outside the root.

Subscriptions (RFC 3501 §6.3.6) are kept one name per line in ``subscriptions``
at the top of the Maildir. The special-use folders of RFC 6154 are created at
first login; ``mailstack-special-use`` (written then, empty) holds the uses given
to other folders since, one ``<use> <name>`` per line (CREATE ... (USE (...)), RFC
6154 §3, or a RENAME of such a folder): a use written there leaves its default
folder.

IMAP APPEND and COPY are held to the user's quota (the account store's
``User.quota``) the way local delivery is: a soft quota over the usage of the
whole Maildir, measured by :class:`~mailstack.maildir.quota.UsageCache`.

The :class:`MailStore` is the one owner of every user's Maildir state in this
process: changes to a user's folder tree and files (first-login setup,
subscriptions, create, delete, rename) run one at a time per user, and each
folder's changes one at a time through its :class:`Mailbox`. All file-system
work runs on ``io`` (the bounded io thread pool); the store's own maps (open
mailboxes, loads in progress) change only on the calling (reactor) thread.
Every file is replaced through a temp file of its own.
"""

from __future__ import annotations

import itertools
import os
import shutil
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from mailstack.addresses import InvalidAddress
from mailstack.fsutil import fsync_directory, write_file_synced
from mailstack.maildir.flags import TooManyKeywords
from mailstack.maildir.index import issue_uidvalidity
from mailstack.maildir.layout import InvalidFolder, MaildirLayout
from mailstack.maildir.mailbox import Mailbox
from mailstack.maildir.owner import Owner
from mailstack.maildir.quota import NOTHING, Usage, UsageCache
from mailstack.maildir.watch import Watcher
from mailstack.notify import MailboxEvents

if TYPE_CHECKING:
    from mailstack.accounts.store import AccountLookup

log = Logger()

SPECIAL_USE = {"Sent": "\\Sent", "Drafts": "\\Drafts", "Trash": "\\Trash", "Junk": "\\Junk",
               "Archive": "\\Archive"}
SUBSCRIPTIONS_FILE = "subscriptions"
SPECIAL_USE_FILE = "mailstack-special-use"
USES = frozenset(SPECIAL_USE.values())  # the uses a folder can be given (not \\All or \\Flagged)
DELIMITER = "."

IO = Callable[..., Awaitable[Any]]


def _utf8(name: str) -> bool:
    """A directory name as os.listdir gives it (undecodable bytes as surrogates) is UTF-8."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
T = TypeVar("T")


class FolderError(Exception):
    """A folder operation was refused; ``code`` is an RFC 5530 response code or ''."""

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.code = code


def is_inbox(name: str) -> bool:
    return name.upper() == "INBOX"


def normal_name(name: str) -> str:
    """INBOX in any case is INBOX (RFC 3501 §5.1); other names are case-sensitive."""
    if is_inbox(name):
        return "INBOX"
    if name.upper().startswith("INBOX."):
        return "INBOX" + name[5:]
    return name


class MailStore:
    """Hands out one shared :class:`Mailbox` per folder path and manages folders."""

    def __init__(self, layout: MaildirLayout, hostname: str = "localhost", *,
                 accounts: AccountLookup | None = None,
                 monotonic: Callable[[], float] = time.monotonic, watcher: Watcher | None = None,
                 events: MailboxEvents | None = None) -> None:
        self.layout = layout
        self.watcher = watcher  # tells open folders of changes by others (see .watch); None: look
        self.events = events  # where such a change is published (IDLE sessions wake up)
        self.monotonic = monotonic
        self.own_change = False  # set while IMAP sessions announce a change made through a Mailbox
        self.hostname = hostname
        self.accounts = accounts  # quotas; None: no limits
        self._usage = UsageCache()
        self._open: dict[Path, Mailbox] = {}
        self._loading: dict[Path, list[Deferred[Mailbox]]] = {}
        self._replaced: set[Path] = set()  # vanished while open: load with a new UIDVALIDITY
        self._owners: dict[str, Owner] = {}  # user -> one change to their folders at a time
        self._temp_names = itertools.count()
        self._uidvalidity_lock = threading.Lock()  # io threads issue UIDVALIDITY values
        self._last_uidvalidity: dict[str, int] = {}

    def _path(self, user: str, name: str) -> Path:
        try:
            return self.layout.maildir_path(user, None if is_inbox(name) else normal_name(name))
        except (InvalidFolder, InvalidAddress):
            raise FolderError(f"invalid mailbox name {name!r}", "CANNOT") from None

    def _issue_uidvalidity(self, user: str) -> int:
        """Strictly increasing per user, also when the user's Maildir was removed meanwhile."""
        root = self.layout.maildir_path(user, None)
        with self._uidvalidity_lock:
            value = issue_uidvalidity(root, self._last_uidvalidity.get(user, 0) + 1)
            self._last_uidvalidity[user] = value
        return value

    def _ensure(self, path: Path) -> None:
        """Create a Maildir, also when it was created before and removed since (io thread)."""
        if not (path / "cur").is_dir():
            self.layout.forget(path)
        self.layout.ensure(path)

    async def _as_owner(self, user: str, work: Coroutine[Any, Any, T]) -> T:
        """Run ``work`` once no other change to ``user``'s folders is running (to its end)."""
        owner = self._owners.get(user)
        if owner is None:
            owner = self._owners[user] = Owner(user)
        try:
            return await owner.run(work)
        finally:
            if not owner.busy:
                self._owners.pop(user, None)

    async def _on_io(self, user: str, io: IO, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on ``io`` as the owner of ``user``'s folders."""
        async def call() -> T:
            result: T = await io(fn, *args)
            return result

        return await self._as_owner(user, call())

    def _temp_path(self, directory: Path, name: str) -> Path:
        """A temp file name no other writer in any process uses at the same time."""
        return directory / f"{name}.tmp.{os.getpid()}.{threading.get_ident()}.{next(self._temp_names)}"

    # -- quota ------------------------------------------------------------------------

    def quota_of(self, user: str) -> Usage:
        """The user's limits, octets and messages (0: none), read from the account store's memory
        each time."""
        account = self.accounts.get_user(user) if self.accounts is not None else None
        return Usage(account.quota, account.max_messages) if account is not None else NOTHING

    async def quota_usage(self, user: str, io: IO) -> tuple[Usage, Usage]:
        """(what all of the user's folders hold, the user's limits; 0: none), in octets and messages."""
        root = str(self.layout.maildir_path(user, None))
        return await io(self._usage.usage, root), self.quota_of(user)

    async def check_quota(self, user: str, size: int, io: IO, messages: int = 1) -> None:
        """Refuse ``messages`` more of ``size`` bytes together that would not fit (RFC 5530
        OVERQUOTA); usage is read on ``io``."""
        quota = self.quota_of(user)
        if messages <= 0 or (quota.octets <= 0 and quota.messages <= 0):
            return
        root = str(self.layout.maildir_path(user, None))
        used = await io(self._usage.usage, root)
        too_big = 0 < quota.octets < used.octets + size
        too_many = 0 < quota.messages < used.messages + messages
        if too_big or too_many:
            log.info("quota refused {count} messages, {size} bytes for {user}: {used} of {quota} bytes, "
                     "{have} of {limit} messages used", count=messages, size=size, user=user, used=used.octets,
                     quota=quota.octets or "unlimited", have=used.messages, limit=quota.messages or "unlimited")
            raise FolderError("Message exceeds the mailbox quota" if 0 < quota.octets < size else
                              "Too many messages in the mailbox" if too_many else "Mailbox is full", "OVERQUOTA")

    def usage_added(self, user: str, size: int, messages: int = 1) -> None:
        self._usage.add(str(self.layout.maildir_path(user, None)), size, messages)

    def usage_changed(self, user: str) -> None:
        """Messages were removed: measure again next time."""
        self._usage.invalidate(str(self.layout.maildir_path(user, None)))

    # -- mailboxes --------------------------------------------------------------------

    async def exists(self, user: str, name: str, io: IO) -> bool:
        return bool(await io(os.path.isdir, self._path(user, name) / "cur"))

    async def open(self, user: str, name: str, io: IO, *, restore_folders: bool = True) -> Mailbox:
        """The folder's shared :class:`Mailbox`, refreshed; a folder not open yet is read on ``io``.

        Reading a large folder's index and directories takes long; concurrent
        openers of the same folder wait for the one load. An open mailbox whose
        directory vanished or was replaced is dropped and loaded again with a
        new UIDVALIDITY (whatever index a restored backup brought), so no client
        mistakes new UIDs for old ones. When INBOX vanished, the whole Maildir
        did: the special-use folders are made again too, unless the caller
        already owns the user's folder tree (``restore_folders=False``).
        """
        path = self._path(user, name)
        box = self._open.get(path)
        if box is not None:
            await box.refresh()
            if not box.gone:
                return box
            if self._open.get(path) is box:
                del self._open[path]
                self._replaced.add(path)
            if is_inbox(name) and restore_folders:  # the Maildir went: special-use folders come back
                await self.setup_user(user, io)
        waiters = self._loading.get(path)
        if waiters is not None:
            d: Deferred[Mailbox] = Deferred()
            waiters.append(d)
            return await d
        self._loading[path] = []
        fresh = path in self._replaced
        try:
            loaded = await io(self._load, user, name, path, io, fresh)
        except Exception as e:
            for waiter in self._loading.pop(path, []):
                waiter.errback(e)
            raise
        self._replaced.discard(path)
        box = self._open.setdefault(path, loaded)
        if box is loaded:
            box.save_in_background()
        for waiter in self._loading.pop(path, []):
            waiter.callback(box)
        return box

    def _publisher(self, user: str, name: str) -> Callable[[], None] | None:
        """What a folder calls when another program changed it: publish it, as a delivery does."""
        events = self.events
        if events is None:
            return None
        folder = None if is_inbox(name) else normal_name(name)
        return lambda: events.publish(user, folder)

    def _load(self, user: str, name: str, path: Path, io: IO, fresh: bool) -> Mailbox:
        if is_inbox(name):
            self._ensure(path)
        try:
            return Mailbox.load(path, self.hostname, io=io, uidvalidity=lambda: self._issue_uidvalidity(user),
                                fresh=fresh, monotonic=self.monotonic, save_later=True, watcher=self.watcher,
                                on_change=self._publisher(user, name))
        except FileNotFoundError:
            raise FolderError(f"no mailbox {name!r}", "NONEXISTENT") from None

    async def keyword_letters(self, user: str, name: str, keywords: list[str], io: IO) -> str:
        """The info letters of *keywords* in a folder (made if needed), for a copy delivered with
        them (Sieve's imap4flags): letters new to the folder go into its keyword table through
        the folder's open :class:`Mailbox`, the one owner of that table. Keywords past the
        table's 26 letters are left out (logged)."""
        try:
            box = await self.open(user, name, io)
        except FolderError:  # not there yet: made, as the delivery would
            try:
                await self.create(user, name, io)
            except FolderError:  # made meanwhile
                pass
            box = await self.open(user, name, io)
        fitting = list(keywords)
        while True:
            try:
                return await box.letters_of(fitting)
            except TooManyKeywords as e:
                gone = e.args[0] if e.args else None
                log.warn("keyword {keyword} not kept for <{user}> in {folder}: the folder has 26 keywords",
                         keyword=gone, user=user, folder=name)
                fitting = [k for k in fitting if gone is not None and k.lower() != str(gone).lower()]

    async def setup_user(self, user: str, io: IO) -> None:
        """INBOX and the RFC 6154 special-use folders, on first login (once per user at a time)."""
        await self._on_io(user, io, self._setup_user, user)

    def _setup_user(self, user: str) -> None:
        inbox = self.layout.maildir_path(user, None)
        self._ensure(inbox)  # also after the whole Maildir was removed under a running server
        marker = inbox / SPECIAL_USE_FILE  # written once the folders exist
        if marker.exists():
            return
        for name in SPECIAL_USE:
            self._ensure(self.layout.maildir_path(user, name))
        if SUBSCRIPTIONS_FILE not in os.listdir(inbox):
            self._write_subscriptions(user, ["INBOX", *SPECIAL_USE])
        marker.touch()

    async def folders(self, user: str, io: IO) -> list[str]:
        """Every existing folder name (INBOX first), UTF-8 decoded; listed on ``io``."""
        names: list[str] = await io(self._folders, user)
        return names

    def _folders(self, user: str) -> list[str]:
        root = self.layout.maildir_path(user, None)
        names = ["INBOX"]
        try:
            entries = os.listdir(root)
        except FileNotFoundError:
            return names
        for entry in sorted(entries):
            if entry.startswith(".") and not entry.startswith("..") and len(entry) > 1 and (
                    root / entry / "cur").is_dir():
                if not _utf8(entry):  # made by another program: no IMAP name can stand for it
                    log.warn("folder {entry!r} of {user} is not named in UTF-8: not listed", entry=entry, user=user)
                    continue
                names.append(entry[1:])
        return names

    def _exists(self, user: str, name: str) -> bool:
        return (self._path(user, name) / "cur").is_dir()

    # -- CREATE / DELETE / RENAME -------------------------------------------------------

    async def create(self, user: str, name: str, io: IO, uses: tuple[str, ...] = ()) -> None:
        """Create a folder (and its missing superiors); ``uses`` gives it special-use
        attributes (RFC 6154 §3), taken from the folders that had them."""
        self._path(user, name.rstrip(DELIMITER) or name)  # validates before queueing
        if any(use not in USES for use in uses):
            raise FolderError("that special use cannot be given to a mailbox", "USEATTR")
        await self._on_io(user, io, self._create_with, user, name, uses)

    def _create_with(self, user: str, name: str, uses: tuple[str, ...]) -> None:
        self._create(user, name)
        if uses:
            given = self._given_uses(user)
            given.update({use: normal_name(name.rstrip(DELIMITER) or name) for use in uses})
            self._give_uses(user, given)

    def _create(self, user: str, name: str) -> None:
        name = normal_name(name.rstrip(DELIMITER)) if name.endswith(DELIMITER) else normal_name(name)
        if is_inbox(name) or self._exists(user, name):
            raise FolderError("mailbox already exists", "ALREADYEXISTS")
        levels = name.split(DELIMITER)
        for i in range(1, len(levels) + 1):  # RFC 3501 §6.3.3: create missing superiors
            part = DELIMITER.join(levels[:i])
            if not is_inbox(part):
                self._ensure(self._path(user, part))

    async def delete(self, user: str, name: str, io: IO) -> None:
        if is_inbox(name):
            raise FolderError("INBOX cannot be deleted", "CANNOT")
        path = self._path(user, name)

        async def delete() -> None:
            await io(self._delete, path)
            self._retire(path)
            self.usage_changed(user)  # its messages no longer count against the quota
            await io(self._forget_uses, user, normal_name(name))

        await self._as_owner(user, delete())

    def _delete(self, path: Path) -> None:
        if not (path / "cur").is_dir():
            raise FolderError("no such mailbox", "NONEXISTENT")
        grave = path.parent / (".." + path.name[1:] + f".deleted-{os.getpid()}-{next(self._temp_names)}")
        os.rename(path, grave)  # atomic: the folder is gone for everyone at once
        fsync_directory(str(path.parent))
        self.layout.forget(path)
        shutil.rmtree(grave, ignore_errors=True)

    async def rename(self, user: str, old: str, new: str, io: IO) -> None:
        old, new = normal_name(old), normal_name(new)
        self._path(user, old), self._path(user, new)  # validates

        async def rename() -> None:
            if is_inbox(old):
                await self._rename_inbox(user, new, io)
                return
            moved: list[Path] = await io(self._rename, user, old, new)
            for src in moved:
                self._retire(src)

        await self._as_owner(user, rename())

    def _retire(self, path: Path) -> None:
        """Forget the mailbox of a folder deleted or renamed; sessions holding it see it gone."""
        box = self._open.pop(path, None)
        if box is not None:
            box.retire()

    def _rename(self, user: str, old: str, new: str) -> list[Path]:
        if is_inbox(new) or self._exists(user, new):
            raise FolderError("target mailbox already exists", "ALREADYEXISTS")
        if not self._exists(user, old):
            raise FolderError("no such mailbox", "NONEXISTENT")
        root = self.layout.maildir_path(user, None)
        moves = [(self._path(user, old), self._path(user, new))]
        prefix = old + DELIMITER
        for child in self._folders(user)[1:]:
            if child.startswith(prefix):
                moves.append((self._path(user, child), self._path(user, new + child[len(old):])))
        levels = new.split(DELIMITER)
        for i in range(1, len(levels)):
            part = DELIMITER.join(levels[:i])
            if not is_inbox(part) and not self._exists(user, part):
                self._ensure(self._path(user, part))
        for src, dst in moves:
            os.rename(src, dst)
            self.layout.forget(src)
        fsync_directory(str(root))
        uses = {use: folder for folder, use in self._special_uses(user).items()}
        moved = {use: new + folder[len(old):] for use, folder in uses.items()
                 if folder == old or folder.startswith(prefix)}
        if moved:  # a special use follows its folder
            self._give_uses(user, {**self._given_uses(user), **moved})
        return [src for src, _ in moves]

    async def _rename_inbox(self, user: str, new: str, io: IO) -> None:
        """RFC 3501 §6.3.5: move INBOX's messages to the new folder, leave INBOX empty."""
        await io(self._create, user, new)
        src = await self.open(user, "INBOX", io, restore_folders=False)  # we own the folder tree now
        dst = await self.open(user, new, io)
        await src.refresh(force=True)
        moving = list(src.messages)
        try:  # keyword letters are per folder: translate
            items = [(src.file_path(m), m.size, await dst.letters_of(src.flags(m)), m.internal_date)
                     for m in moving]
        except TooManyKeywords:
            raise FolderError("too many keywords in the target mailbox", "LIMIT") from None
        placed = await dst.add_links(items, move=True)
        await src.detach(*(m for m, p in zip(moving, placed, strict=True) if p is not None))

    # -- special use (RFC 6154) -------------------------------------------------------

    async def special_uses(self, user: str, io: IO) -> dict[str, str]:
        """Folder name -> its special-use attribute."""
        uses: dict[str, str] = await io(self._special_uses, user)
        return uses

    async def folder_with_use(self, user: str, use: str, io: IO) -> str:
        """The folder that has ``use`` (``\\Junk``...): the one a user gave it, else its default."""
        for name, has in (await self.special_uses(user, io)).items():
            if has == use:
                return name
        raise FolderError(f"no folder can have the use {use}", "USEATTR")

    def _special_uses(self, user: str) -> dict[str, str]:
        by_use = {use: name for name, use in SPECIAL_USE.items()}
        by_use.update(self._given_uses(user))
        return {name: use for use, name in by_use.items()}

    def _given_uses(self, user: str) -> dict[str, str]:
        """The uses given to folders other than their defaults: use -> folder."""
        try:
            text = (self.layout.maildir_path(user, None) / SPECIAL_USE_FILE).read_text("utf-8")
        except (FileNotFoundError, UnicodeDecodeError):
            return {}
        given = {}
        for line in text.splitlines():
            use, _, name = line.partition(" ")
            if use in USES and name:
                given[use] = name
        return given

    def _forget_uses(self, user: str, name: str) -> None:
        """A deleted folder's uses go back to their default folders."""
        given = self._given_uses(user)
        kept = {use: folder for use, folder in given.items() if folder != name}
        if kept != given:
            self._give_uses(user, kept)

    def _give_uses(self, user: str, given: dict[str, str]) -> None:
        self._replace_file(user, SPECIAL_USE_FILE, "".join(f"{use} {name}\n" for use, name in sorted(given.items())))

    # -- subscriptions --------------------------------------------------------------

    async def subscriptions(self, user: str, io: IO) -> list[str]:
        names: list[str] = await io(self._subscriptions, user)
        return names

    def _subscriptions(self, user: str) -> list[str]:
        path = self.layout.maildir_path(user, None) / SUBSCRIPTIONS_FILE
        try:
            return [line for line in path.read_text("utf-8").splitlines() if line]
        except FileNotFoundError:
            return []

    async def subscribe(self, user: str, name: str, on: bool, io: IO) -> None:
        self._path(user, name)  # validates
        await self._on_io(user, io, self._subscribe, user, normal_name(name), on)

    def _subscribe(self, user: str, name: str, on: bool) -> None:
        subs = [s for s in self._subscriptions(user) if s != name]
        if on:
            subs.append(name)
        self._write_subscriptions(user, subs)

    def _write_subscriptions(self, user: str, names: list[str]) -> None:
        self._replace_file(user, SUBSCRIPTIONS_FILE, "".join(n + "\n" for n in names))

    def _replace_file(self, user: str, name: str, text: str) -> None:
        """A file at the top of the user's Maildir replaced whole: a temp file, fsync, rename."""
        root = self.layout.maildir_path(user, None)
        self._ensure(root)
        tmp = self._temp_path(root, name)
        try:
            write_file_synced(str(tmp), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, text.encode("utf-8"))
            os.replace(tmp, root / name)
        finally:
            tmp.unlink(missing_ok=True)  # only left if the write failed
