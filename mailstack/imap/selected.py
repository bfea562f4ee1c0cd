"""Selected-state commands: CHECK, CLOSE, UNSELECT, EXPUNGE, SEARCH, FETCH, STORE,
COPY, MOVE and their UID forms.

RFC 3501 §6.4 (and §6.4.8 UID), RFC 3691 (UNSELECT), RFC 4315 (UID EXPUNGE,
COPYUID), RFC 6851 (MOVE), RFC 4731 (ESEARCH: SEARCH RETURN (MIN MAX ALL COUNT)),
RFC 5182 (SEARCHRES: RETURN (SAVE) and "$" wherever a sequence set goes).
Message files are read on the I/O thread pool in batches; index facts (flags,
sizes, dates) come from memory.
"""

from __future__ import annotations

import time
import weakref
from typing import Any

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import Logger

from mailstack.imap import fetch as F
from mailstack.imap.condstore import (
    FetchModifiers,
    contains,
    fetch_modifiers,
    merge,
    store_modifiers,
    vanished_earlier,
)
from mailstack.imap.context import (
    MAX_UPDATES,
    Returns,
    UpdateContext,
    changes,
    ordered_set,
    parse_returns,
    result_items,
)
from mailstack.imap.mime import split_message
from mailstack.imap.parse import Atom, ParseError, String, Token, atom, paren_list, resolve_set, sequence_set
from mailstack.imap.response import imap_date
from mailstack.imap.search import CHARSETS, Candidate, Criteria
from mailstack.imap.sort import (
    MAX_MESSAGES,
    THREAD_ALGORITHMS,
    THREAD_NEEDS,
    Basics,
    SortKey,
    Values,
    cached_values,
    needed,
    saved,
    sort_criteria,
    sort_messages,
    thread,
    values_of,
)
from mailstack.imap.view import Bad, No, View, ViewMixin
from mailstack.maildir.files import read_file
from mailstack.maildir.flags import SYSTEM_LETTERS, TooManyKeywords, canonical_flag
from mailstack.maildir.folders import FolderError
from mailstack.maildir.mailbox import LetterChange, Message

log = Logger()
BATCH_BYTES = 8 << 20
COPY_STEP = 1000  # messages linked per step of a COPY or MOVE



def saved_part(hits: list[int], returns: Returns) -> list[int]:
    """What RETURN (SAVE ...) keeps: only MIN and/or MAX when those are all that was asked
    for besides SAVE, the whole result otherwise (RFC 5182 §2.4)."""
    options = returns.options
    if not hits or options & {"ALL", "COUNT", "PARTIAL"} or not options & {"MIN", "MAX"}:
        return hits
    return sorted({hits[0]} if options & {"MIN", "MAX"} == {"MIN"} else
                  {hits[-1]} if options & {"MIN", "MAX"} == {"MAX"} else {hits[0], hits[-1]})


def esearch(tag: str, uid: bool, hits: list[int], returns: Returns, modseq: int = 0, *,
            sorted_order: bool = False) -> bytes:
    """The ESEARCH response (RFC 4731 §3.1, RFC 5267 §3 for SORT): MIN, MAX and ALL only when
    something matched; MODSEQ (RFC 7162 §3.1.10) when the search had a MODSEQ key and found
    something."""
    parts = [f'* ESEARCH (TAG "{tag}")'] + (["UID"] if uid else [])
    parts += result_items(hits, returns, sorted_order=sorted_order)
    if modseq:
        parts.append(f"MODSEQ {modseq}")
    return (" ".join(parts) + "\r\n").encode()


uid_set_text = ordered_set  # ascending UIDs: the compact ``1:3,7`` form (RFC 4315 uid-set)


class SelectedCommands(ViewMixin):
    user: str | None
    store: Any
    io: Any
    events: Any
    publish_change: Any

    def _view(self) -> View:
        assert self.view is not None
        return self.view

    def _publish(self) -> None:
        view = self._view()
        self.publish_change(None if view.name == "INBOX" else view.name)

    def _targets(self, args_set: Token, uid: bool) -> list[tuple[int, int]]:
        view = self._view()
        if isinstance(args_set, Atom) and args_set.value == "$":  # RFC 5182: the saved result
            return view.select_saved()
        seq = sequence_set(args_set)
        if uid:
            return view.select_uids(seq)
        try:
            return view.select_msns(seq)
        except ValueError as e:
            raise Bad(str(e)) from None

    # -- CHECK / CLOSE / UNSELECT / EXPUNGE -------------------------------------------------

    async def cmd_check(self, tag: str, args: list[Token]) -> Any:
        self.no_args(args)  # type: ignore[attr-defined]
        return self.ok(tag, "CHECK")  # type: ignore[attr-defined]

    async def cmd_close(self, tag: str, args: list[Token]) -> Any:
        self.no_args(args)  # type: ignore[attr-defined]
        view = self._view()
        if not view.readonly:  # RFC 3501 §6.4.2: expunge silently
            deleted = [m.uid for m in view.box.messages if "T" in m.letters]
            if deleted:
                await view.box.expunge(deleted)
                self.store.usage_changed(self.user)
                self._publish()
        self.deselect()
        return self.ok(tag, "CLOSE")  # type: ignore[attr-defined]

    async def cmd_unselect(self, tag: str, args: list[Token]) -> Any:
        self.no_args(args)  # type: ignore[attr-defined]
        self.deselect()
        return self.ok(tag, "UNSELECT")  # type: ignore[attr-defined]

    async def cmd_expunge(self, tag: str, args: list[Token], uid: bool = False) -> Any:
        view = self._view()
        if uid:
            if len(args) != 1:
                raise ParseError("UID EXPUNGE needs a UID set")
            allowed = {u for _, u in self._targets(args[0], True)}
        else:
            self.no_args(args)  # type: ignore[attr-defined]
            allowed = None
        if view.readonly:
            raise No("Mailbox is read-only", "READ-ONLY")
        deleted = [m.uid for m in view.box.messages
                   if "T" in m.letters and (allowed is None or m.uid in allowed)]
        code = ""
        if deleted:
            removed = await view.box.expunge(deleted)
            log.info("imap {session_id}: {user} expunged {count} from {mailbox}",
                     session_id=self.session_id, user=self.user, count=len(removed),  # type: ignore[attr-defined]
                     mailbox=view.name)
            self.store.usage_changed(self.user)
            self._publish()
            if removed and self.qresync:  # RFC 7162 §3.2.7, §3.2.9
                code = f"HIGHESTMODSEQ {view.box.highestmodseq}"
        return self.ok(tag, "UID EXPUNGE" if uid else "EXPUNGE", code=code)  # type: ignore[attr-defined]

    # -- SEARCH (RFC 3501 §6.4.4) ---------------------------------------------------------

    async def cmd_search(self, tag: str, args: list[Token], uid: bool = False) -> Any:
        view = self._view()
        returns = None  # RFC 4731 result options; None: a plain SEARCH response
        if len(args) >= 2 and isinstance(args[0], Atom) and args[0].upper() == "RETURN":
            returns = parse_returns(args[1])
            args = args[2:]
        elif self.rev2:  # RFC 9051 §6.4.4: ESEARCH, ALL when no option is given
            returns = Returns(frozenset({"ALL"}))
        self._check_update_tag(tag, returns)
        saving = returns is not None and "SAVE" in returns
        charset = None
        if len(args) >= 2 and isinstance(args[0], Atom) and args[0].upper() == "CHARSET":
            charset = _charset(args[1])
            args = args[2:]
        # "$" inside this very command is the old result; a SEARCH answered BAD leaves it as
        # it was, one answered NO empties it (RFC 5182 §2.1)
        criteria = Criteria(args, charset=charset, saved=view.saved, now=time.time())
        if saving:
            view.saved = frozenset()
        if charset is not None and charset.upper() not in CHARSETS:
            raise No("Unsupported charset", "BADCHARSET (US-ASCII UTF-8)")
        if criteria.uses_modseq:  # RFC 7162 §3.1: an enabling command
            self.enable_condstore()
        hits = await self._matching(view, criteria)
        if saving:
            assert returns is not None
            view.saved = frozenset(view.uids[n - 1] for n in saved_part(hits, returns))
        modseq = self._highest_modseq(view, hits, returns) if criteria.uses_modseq and hits else 0
        uids = [view.uids[n - 1] for n in hits]
        if uid:
            hits = uids
        if returns is None:
            tail = f" (MODSEQ {modseq})" if modseq else ""  # RFC 7162 §3.1.6
            self.send(("* SEARCH" + "".join(f" {n}" for n in hits) + tail + "\r\n").encode())  # type: ignore[operator]
        elif returns.options - {"SAVE", "CONTEXT", "UPDATE"}:  # SAVE alone answers only OK (RFC 5182 §2.1)
            self.send(esearch(tag, uid, hits, returns, modseq))  # type: ignore[operator]
        if returns is not None and "UPDATE" in returns:
            self._keep_updated(tag, uid, criteria, args, charset, None, uids)
        return self.ok(tag, "UID SEARCH" if uid else "SEARCH",  # type: ignore[attr-defined]
                       hold_expunges=criteria.uses_numbers)

    # -- CONTEXT (RFC 5267 §4.3): results kept current ----------------------------------------

    def _check_update_tag(self, tag: str, returns: Returns | None) -> None:
        """§4.3: a tag already naming an updated result cannot ask for another."""
        if returns is not None and "UPDATE" in returns and tag in self._view().contexts:
            raise Bad("Tag reuse: that tag names a result already kept current")

    def _keep_updated(self, tag: str, uid: bool, criteria: Criteria, tokens: list[Token], charset: str | None,
                      keys: list[SortKey] | None, uids: list[int]) -> None:
        """Keep a UID SEARCH's or UID SORT's result current, or say NOUPDATE (§4.3.1)."""
        view = self._view()
        if not uid or criteria.uses_numbers or criteria.uses_saved or criteria.drifts or \
                len(view.contexts) >= MAX_UPDATES:
            why = ("Too many results kept current" if len(view.contexts) >= MAX_UPDATES else
                   "Only UID SEARCH and UID SORT without message numbers, $, * or OLDER/YOUNGER are kept current")
            self.send(f'* NO [NOUPDATE "{tag}"] {why}\r\n'.encode())  # type: ignore[operator]
            return
        view.contexts[tag] = UpdateContext(tag, tokens, charset, keys, uids, _stamp(view), view.box.highestmodseq,
                                           view.uids[-1] if view.uids else 0)

    async def cmd_cancelupdate(self, tag: str, args: list[Token]) -> Any:
        """§4.3.5: stop telling of changes to the results of these commands."""
        if not args or not all(isinstance(a, String) for a in args):
            raise Bad("CANCELUPDATE needs the quoted tags of the commands")
        contexts = self._view().contexts
        for a in args:
            contexts.pop(a.text(), None)  # type: ignore[union-attr]
        return self.ok(tag, "CANCELUPDATE")  # type: ignore[attr-defined]

    async def refresh_contexts(self) -> None:
        """Tell of changes to the results kept current (ADDTO, REMOVEFROM), after a command or
        an IDLE wake-up. Never raises: a result that cannot be worked out again is dropped
        with ``* NO [NOUPDATE ...]`` and a log line."""
        view = self.view
        if view is None or not view.contexts:
            return
        for context in list(view.contexts.values()):
            if context.pending:  # another wake-up is at it: it looks again before it stops
                continue
            context.pending = True
            try:
                await self._refresh_context(view, context)
            except Exception:
                log.failure("imap {session_id}: result {tag} could not be kept current",
                            session_id=self.session_id, tag=context.tag)  # type: ignore[attr-defined]
                if view.contexts.pop(context.tag, None) is not None and self.view is view:
                    self.send(f'* NO [NOUPDATE "{context.tag}"] Result no longer kept current\r\n'.encode())  # type: ignore[operator]
            finally:
                context.pending = False

    async def _refresh_context(self, view: View, context: UpdateContext) -> None:
        for _ in range(3):  # a result overtaken while it was worked out is worked out again
            stamp = _stamp(view)
            if context.version == stamp or self.view is not view or view.contexts.get(context.tag) is not context:
                return
            modseq, last_uid = view.box.highestmodseq, (view.uids[-1] if view.uids else 0)
            result = await self._result_of(view, context)
            if self.view is not view or view.contexts.get(context.tag) is not context:
                return  # deselected, or cancelled meanwhile
            if _stamp(view) != stamp:
                continue
            items = changes(context.result, result, sorted_order=context.sort_keys is not None)
            context.result, context.version, context.modseq, context.last_uid = result, stamp, modseq, last_uid
            if items:
                self.send((f'* ESEARCH (TAG "{context.tag}") UID ' + " ".join(items) + "\r\n").encode())  # type: ignore[operator]

    async def _result_of(self, view: View, context: UpdateContext) -> list[int]:
        """A kept result worked out again, as UIDs in its order: only the messages new to it or
        whose mod-sequence rose since are looked at again (RFC 5267 Appendix B), so a change
        to one message in a big mailbox costs about one message."""
        criteria = Criteria(context.criteria, charset=context.charset, now=time.time())
        uids = list(view.uids)
        by_uid = view.box.by_uid
        since, last_uid = context.modseq, context.last_uid
        looked = [n for n, u in enumerate(uids, 1)
                  if u > last_uid or ((m := by_uid.get(u)) is not None and m.modseq > since)]
        hits = await self._matching(view, criteria, looked)
        seen = {uids[n - 1] for n in looked}
        members = {u for u in context.result if u not in seen and u in by_uid} | {uids[n - 1] for n in hits}
        if context.sort_keys is None:
            return sorted(members)
        numbers = [n for n, u in enumerate(uids, 1) if u in members]
        values = await self._values(view, numbers, needed(context.sort_keys))
        ordered = sort_messages(numbers, context.sort_keys, values, self._basics(view, numbers, numbers))
        return [uids[n - 1] for n in ordered]

    @staticmethod
    def _highest_modseq(view: View, msns: list[int], returns: Returns | None = None) -> int:
        """The mod-sequence a SEARCH or SORT with a MODSEQ key reports (RFC 7162 §3.1.6, RFC 4731
        §3.2): the highest of the messages returned (only MIN's or MAX's when that is all)."""
        shown = msns
        options = returns.options if returns is not None else frozenset()
        if not options & {"ALL", "COUNT", "PARTIAL"} and options & {"MIN", "MAX"}:
            shown = ([msns[0]] if "MIN" in options else []) + ([msns[-1]] if "MAX" in options else [])
        by_uid = view.box.by_uid
        return max((m.modseq for n in shown if (m := by_uid.get(view.uids[n - 1])) is not None), default=0)

    async def _matching(self, view: View, criteria: Criteria, only: list[int] | None = None) -> list[int]:
        """Sequence numbers of the messages ``criteria`` matches (among ``only``, when given),
        ascending. Flags, sizes, dates and UIDs come from memory; headers from the cache; files
        are read only for the rest."""
        box = view.box
        uids = list(view.uids)
        numbers = range(1, len(uids) + 1) if only is None else only
        if criteria.everything:  # SORT and THREAD over ALL: no Candidate per message
            by_uid = box.by_uid
            return [msn for msn in numbers if uids[msn - 1] in by_uid]
        largest_uid = uids[-1] if uids else 0
        largest_msn = len(uids)
        hits: list[int] = []
        unknown: list[tuple[int, Candidate, Any]] = []
        for msn in numbers:
            u = uids[msn - 1]
            msg = box.by_uid.get(u)
            if msg is None:
                continue
            cand = Candidate(msn, u, view.flags(msg), u in view.recent, msg.size, msg.internal_date,
                             lambda: b"", msg.modseq)
            verdict = criteria.prefilter(cand, largest_msn, largest_uid)
            if verdict is None:
                unknown.append((msn, cand, box.file_path(msg)))
            elif verdict:
                hits.append(msn)
        cache = None if criteria.needs_body else box.header_cache
        if cache is not None:  # header-only keys: answer from cached headers where possible
            missing = []
            for item in unknown:
                header = cache.get(item[1].uid)
                if header is None:
                    missing.append(item)
                    continue
                item[1]._data = header
                if criteria.matches(item[1], largest_msn, largest_uid):
                    hits.append(item[0])
            unknown = missing
        for start in range(0, len(unknown), 200):  # read the files that matter, in batches
            chunk = unknown[start:start + 200]
            paths = [p for _, _, p in chunk]
            datas = await self.io(lambda paths=paths: [read_file(p) for p in paths])
            for (msn, cand, _), data in zip(chunk, datas, strict=True):
                if data is None and (msg := box.by_uid.get(cand.uid)) is not None:
                    data = await box.read(msg) or None  # renamed meanwhile (a flag change): look again
                cand._data = data or b""
                if cache is not None and data is not None:
                    box.remember_header(cand.uid, split_message(data)[0])
                if criteria.matches(cand, largest_msn, largest_uid):
                    hits.append(msn)
        hits.sort()
        return hits

    async def _values(self, view: View, msns: list[int], wanted: set[str]) -> Values:
        """The header values SORT and THREAD need (``wanted`` keys) of these messages, by
        sequence number: kept per mailbox once worked out, else from the header cache or
        read from the files in batches."""
        box = view.box
        keep = frozenset(wanted)
        for key in wanted:
            if key not in cached_values(box, keep):  # what earlier runs, of this process or another, worked out
                loaded = saved(key, await box.saved_values(key))
                cached_values(box, keep).setdefault(key, loaded)
        known = cached_values(box, keep)
        for key in wanted:
            known.setdefault(key, {})
        uids = view.uids
        out: Values = {}
        unknown: set[int] = set()  # messages lacking a value for some key
        for key in wanted:  # what is known, in one pass per key
            found = known[key]
            out[key] = {msn: found[u] for msn in msns if (u := uids[msn - 1]) in found}
            if len(out[key]) < len(msns):
                unknown.update(msn for msn in msns if msn not in out[key])
        new: dict[str, list[tuple[int, Any]]] = {key: [] for key in wanted}
        missing: list[tuple[int, int, Any]] = []
        for msn in sorted(unknown):
            uid = uids[msn - 1]
            lacking = [key for key in wanted if uid not in known[key]]
            if lacking:
                header = box.header_cache.get(uid)
                if header is None:
                    msg = box.by_uid.get(uid)
                    if msg is not None:
                        missing.append((msn, uid, box.file_path(msg)))
                    continue
                for key, value in values_of(header, set(lacking)).items():
                    known[key][uid] = value
                    new[key].append((uid, value))
            for key in wanted:
                out[key][msn] = known[key][uid]
        chunks = [missing[start:start + 200] for start in range(0, len(missing), 200)]

        def read(chunk: list[tuple[int, int, Any]]) -> Deferred[list[bytes | None]]:
            paths = [p for _, _, p in chunk]
            return ensureDeferred(self.io(lambda: [_header_of(p) for p in paths]))

        reading: Deferred[list[bytes | None]] | None = read(chunks[0]) if chunks else None
        try:
            for i, chunk in enumerate(chunks):
                assert reading is not None
                heads = await reading
                # the io pool reads the next files while these are parsed here
                reading = read(chunks[i + 1]) if i + 1 < len(chunks) else None
                for (msn, uid, _), header in zip(chunk, heads, strict=True):
                    if header is None:  # gone meanwhile
                        continue
                    for key, value in values_of(header, wanted).items():
                        if uid not in known[key]:
                            new[key].append((uid, value))
                        known[key][uid] = out[key][msn] = value
        except BaseException:
            if reading is not None:  # nobody will wait for it: its failure, if any, is not news
                reading.addErrback(lambda _: None)
            raise
        for key, pairs in new.items():
            if pairs:  # kept for the next SORT or THREAD after a restart
                box.save_values(key, pairs, known[key])
        return out

    def _basics(self, view: View, hits: list[int], ids: list[int]) -> dict[int, Basics]:
        """The message record (size, internal date) of each message, by the numbers the answer uses."""
        by_uid, uids = view.box.by_uid, view.uids
        return {ident: by_uid.get(uids[msn - 1], _GONE) for msn, ident in zip(hits, ids, strict=True)}

    async def _to_arrange(self, command: str, view: View, charset: Token, tokens: list[Token]
                          ) -> tuple[list[int], Criteria]:
        """The messages a SORT or THREAD arranges (its charset checked, its criteria matched), and
        the criteria."""
        if _charset(charset).upper() not in CHARSETS:
            raise No("Unsupported charset", "BADCHARSET (US-ASCII UTF-8)")
        criteria = Criteria(tokens, charset=_charset(charset), saved=view.saved, now=time.time())
        if criteria.uses_modseq:  # RFC 7162 §3.1: an enabling command
            self.enable_condstore()
        hits = await self._matching(view, criteria)
        if len(hits) > MAX_MESSAGES:
            raise No(f"{command} arranges at most {MAX_MESSAGES} messages; narrow the search", "LIMIT")
        return hits, criteria

    # -- SORT (RFC 5256, RFC 5957 DISPLAYFROM/DISPLAYTO) -------------------------------------

    async def cmd_sort(self, tag: str, args: list[Token], uid: bool = False) -> Any:
        returns = None  # ESORT (RFC 5267 §3): an ESEARCH answer in sort order
        if len(args) >= 2 and isinstance(args[0], Atom) and args[0].upper() == "RETURN":
            returns = parse_returns(args[1], sort=True)
            args = args[2:]
        if len(args) < 3:
            raise Bad("SORT needs sort criteria, a charset and search criteria")
        keys = sort_criteria(args[0])
        view = self._view()
        self._check_update_tag(tag, returns)
        hits, criteria = await self._to_arrange("SORT", view, args[1], args[2:])
        values = await self._values(view, hits, needed(keys))
        ordered = sort_messages(hits, keys, values, self._basics(view, hits, hits))
        # RFC 7162 §3.1.9; with MIN or MAX alone, that of the first or last in sort order
        modseq = self._highest_modseq(view, ordered, returns) if criteria.uses_modseq and hits else 0
        uids = [view.uids[n - 1] for n in ordered]
        if uid:
            ordered = uids
        if returns is None:
            tail = f" (MODSEQ {modseq})" if modseq else ""
            self.send(("* SORT" + "".join(f" {n}" for n in ordered) + tail + "\r\n").encode())  # type: ignore[operator]
        else:
            if returns.options - {"CONTEXT", "UPDATE"}:
                self.send(esearch(tag, uid, ordered, returns, modseq, sorted_order=True))  # type: ignore[operator]
            if "UPDATE" in returns:
                self._keep_updated(tag, uid, criteria, args[2:], _charset(args[1]), keys, uids)
        return self.ok(tag, "UID SORT" if uid else "SORT", hold_expunges=criteria.uses_numbers)  # type: ignore[attr-defined]

    # -- THREAD (RFC 5256 §4) -------------------------------------------------------------------

    async def cmd_thread(self, tag: str, args: list[Token], uid: bool = False) -> Any:
        if len(args) < 3 or not isinstance(args[0], Atom):
            raise Bad("THREAD needs an algorithm, a charset and search criteria")
        algorithm = args[0].upper()
        if algorithm not in THREAD_ALGORITHMS:
            raise Bad("Unknown threading algorithm")
        view = self._view()
        hits, criteria = await self._to_arrange("THREAD", view, args[1], args[2:])
        ids = [view.uids[n - 1] if uid else n for n in hits]  # the numbers the answer uses
        # A thread depends only on which messages take part and the numbers they go by (what
        # it reads of each never changes): a webmail asking again for the same gets it at once.
        key = (algorithm, tuple(view.uids[n - 1] for n in hits), tuple(ids))
        last = _THREADS.get(view.box)
        if last is not None and last[0] == key:
            data = last[1]
        else:
            values = await self._values(view, hits, set(THREAD_NEEDS))
            renumbered = {k: {i: found[n] for n, i in zip(hits, ids, strict=True) if n in found}
                          for k, found in values.items()}
            data = thread(algorithm, ids, renumbered, self._basics(view, hits, ids))
            _THREADS[view.box] = (key, data)
        self.send(("* THREAD" + (" " + data if data else "") + "\r\n").encode())  # type: ignore[operator]
        return self.ok(tag, "UID THREAD" if uid else "THREAD", hold_expunges=criteria.uses_numbers)  # type: ignore[attr-defined]

    # -- FETCH (RFC 3501 §6.4.5) ------------------------------------------------------------

    async def cmd_fetch(self, tag: str, args: list[Token], uid: bool = False) -> Any:
        if len(args) not in (2, 3):
            raise Bad("FETCH needs a sequence set and items")
        items = F.parse_items(args[1])
        mods = fetch_modifiers(args[2]) if len(args) == 3 else FetchModifiers()
        # UID FETCH ... (CHANGEDSINCE) looks at the changed messages only, not at the whole set
        targets = [] if uid and mods.changed_since is not None else self._targets(args[0], uid)
        if mods.vanished:  # RFC 7162 §3.2.6
            if not uid or mods.changed_since is None or not self.qresync:
                raise Bad("VANISHED is for UID FETCH with CHANGEDSINCE, after ENABLE QRESYNC")
        if uid and "UID" not in items:
            items.insert(0, "UID")
        view = self._view()
        box = view.box
        if mods.changed_since is not None or "MODSEQ" in items:  # RFC 7162 §3.1: enabling
            self.enable_condstore()
        if mods.changed_since is not None:
            since = mods.changed_since
            if "MODSEQ" not in items:  # §3.1.4.1: CHANGEDSINCE brings MODSEQ along
                items.append("MODSEQ")
            if mods.vanished:  # §3.2.6: before any FETCH
                self.send(self._vanished_in(args[0], since))  # type: ignore[operator]
            targets = self._changed(targets, since) if not uid else self._changed_uids(args[0], since)
        quick = F.metadata_fetch(items)
        if quick is not None:
            self._fetch_metadata(targets, quick)
            return self.ok(tag, "UID FETCH" if uid else "FETCH")  # type: ignore[attr-defined]
        want_body = F.needs_body(items)
        mark_seen = F.sets_seen(items) and not view.readonly
        if mark_seen and F.binary_parts(items):  # a BINARY that must fail fails before any \Seen
            await self._check_binary(targets, items)
        batch: list[tuple[int, Message]] = []
        size = 0
        for msn, u in targets:
            msg = box.by_uid.get(u)
            if msg is None:
                continue
            batch.append((msn, msg))
            size += msg.size
            if size >= BATCH_BYTES or len(batch) >= 500:
                await self._fetch_batch(batch, items, want_body, mark_seen)
                batch, size = [], 0
        if batch:
            await self._fetch_batch(batch, items, want_body, mark_seen)
        return self.ok(tag, "UID FETCH" if uid else "FETCH")  # type: ignore[attr-defined]

    def _changed(self, targets: list[tuple[int, int]], since: int) -> list[tuple[int, int]]:
        by_uid = self._view().box.by_uid
        return [(n, u) for n, u in targets if (m := by_uid.get(u)) is not None and m.modseq > since]

    def _changed_uids(self, uids: Token, since: int) -> list[tuple[int, int]]:
        """(msn, UID) of the messages of a UID set whose mod-sequence is above ``since``: found
        from the mailbox's changed messages, so a resync of a big folder costs what changed."""
        view = self._view()
        if not view.uids:
            return []
        if isinstance(uids, Atom) and uids.value == "$":
            wanted = merge([(u, u) for u in view.saved])
        else:
            wanted = merge(resolve_set(sequence_set(uids), view.uids[-1]))
        out = []
        for m in view.box.messages:
            if m.modseq > since and contains(wanted, m.uid):
                msn = view.msn_of(m.uid)
                if msn:
                    out.append((msn, m.uid))
        return out

    def _vanished_in(self, uids: Token, since: int) -> bytes:
        """``VANISHED (EARLIER)`` for the UIDs of a UID FETCH's set expunged after ``since``.

        ``*`` stands for the highest UID ever given (UIDNEXT - 1), so the expunge of what was
        the last message is told too."""
        view = self._view()
        box = view.box
        if isinstance(uids, Atom) and uids.value == "$":
            asked = merge([(u, u) for u in view.saved])
        else:
            asked = merge(resolve_set(sequence_set(uids), max(box.uidnext - 1, 1)))
        return vanished_earlier(box.vanished_since(since), asked, 0)

    async def _check_binary(self, targets: list[tuple[int, int]], items: list[F.Item]) -> None:
        """Raise UnknownEncoding if a BINARY item fails for any of the messages (read in batches)."""
        box = self._view().box
        paths = [box.file_path(m) for _, u in targets if (m := box.by_uid.get(u)) is not None]
        for start in range(0, len(paths), 200):
            chunk = paths[start:start + 200]
            datas = await self.io(lambda chunk=chunk: [read_file(p) for p in chunk])
            F.check_binary(items, datas)

    def _fetch_metadata(self, targets: list[tuple[int, int]], fetch: F.MetadataFetch) -> None:
        """FETCH of flags, sizes, dates and UIDs only: from memory, flags rendered once per set."""
        view = self._view()
        by_uid, recent, flags_of = view.box.by_uid, view.recent, view.box.keywords.flags_of
        template, pick, dated = fetch.template, fetch.pick, fetch.dated
        rendered: dict[tuple[str, bool], bytes] = {}
        out = []
        date = b""
        for msn, u in targets:
            msg = by_uid.get(u)
            if msg is None:
                continue
            key = (msg.letters, u in recent)
            flags = rendered.get(key)
            if flags is None:
                names = flags_of(msg.letters) + (["\\Recent"] if key[1] else [])
                flags = rendered[key] = " ".join(names).encode("utf-8")
            if dated:
                date = imap_date(msg.internal_date).encode()
            out.append(template % pick((msn, u, flags, msg.size, date, msg.modseq)))
        self.send(b"".join(out))  # type: ignore[operator]

    async def _fetch_batch(self, batch: list[tuple[int, Message]], items: list[F.Item],
                           want_body: bool, mark_seen: bool) -> None:
        view = self._view()
        box = view.box
        datas: list[bytes | None] = [None] * len(batch)
        if want_body:
            paths = [box.file_path(m) for _, m in batch]
            datas = await self.io(lambda: [read_file(p) for p in paths])
        for i, ((_, msg), data) in enumerate(zip(batch, datas, strict=True)):
            if want_body and data is None:
                datas[i] = await box.read(msg)  # renamed meanwhile (a flag change): look again
        seen: set[int] = set()
        if mark_seen:  # RFC 3501 §6.4.5: BODY[] sets \Seen; one trip to the io pool per batch
            unseen: list[tuple[Message, LetterChange]] = [(msg, _add_seen) for _, msg in batch
                                                          if "S" not in msg.letters]
            seen = {msg.uid for msg in await box.set_letters(unseen)} if unseen else set()
        out = []
        for (msn, msg), data in zip(batch, datas, strict=True):
            its = items
            if msg.uid in seen:
                view.known[msg.uid] = msg.modseq
                # RFC 3501 §6.4.5: the new flags; RFC 7162 §3.2.4: with UID and MODSEQ under CONDSTORE
                extra = ["FLAGS"] + (["UID", "MODSEQ"] if self.condstore else [])
                its = [*its, *(e for e in extra if e not in its)]
            flags = view.flags(msg)
            out.append(b"* %d FETCH " % msn + F.render(its, uid=msg.uid, flags=flags, size=msg.size,
                                                       internal_date=msg.internal_date, data=data,
                                                       modseq=msg.modseq) + b"\r\n")
        self.send(b"".join(out))  # type: ignore[operator]
        if seen:
            self._publish()

    async def _take_back(self, src: Any, dest: Any, placed: list[Message], *, move: bool) -> None:
        """A COPY or MOVE failed part way: undo the steps done (RFC 3501 §6.4.7, RFC 6851 §3.3).

        Copies are expunged from the destination; moved messages go back to the source
        (under new UIDs there: the client was told NO, and nothing is lost or doubled).
        """
        if not placed:
            return
        try:
            if not move:
                await dest.expunge([n.uid for n in placed])
                return
            back = [(dest.file_path(n), n.size, await src.letters_of(dest.flags(n)), n.internal_date)
                    for n in placed]
            await src.add_links(back, move=True)
            await dest.detach(*placed)
        except Exception:
            log.failure("imap {session_id}: undoing a failed COPY/MOVE of {count} messages failed",
                        session_id=self.session_id, count=len(placed))  # type: ignore[attr-defined]

    # -- STORE (RFC 3501 §6.4.6) --------------------------------------------------------------

    async def cmd_store(self, tag: str, args: list[Token], uid: bool = False) -> Any:
        unchanged_since = None
        if len(args) >= 2 and isinstance(args[1], list):  # RFC 4466 store-modifiers
            unchanged_since = store_modifiers(args[1])
            args = [args[0], *args[2:]]
        if len(args) < 3:
            raise Bad("STORE needs a sequence set, an item and flags")
        targets = self._targets(args[0], uid)
        item = atom(args[1]).upper()
        silent = item.endswith(".SILENT")
        op = item.removesuffix(".SILENT")
        if op not in ("FLAGS", "+FLAGS", "-FLAGS"):
            raise Bad("STORE item must be FLAGS, +FLAGS or -FLAGS")
        raw_flags = paren_list(args[2]) if len(args) == 3 and isinstance(args[2], list) else args[2:]
        flags = []
        for tok in raw_flags:
            if not isinstance(tok, Atom):
                raise Bad("Flags must be atoms")
            flag = canonical_flag(tok.value)
            if flag.startswith("\\") and flag not in SYSTEM_LETTERS and flag != "\\Recent":
                raise Bad(f"Unknown system flag {flag[:30]}")
            if flag != "\\Recent":
                flags.append(flag)
        view = self._view()
        if view.readonly:
            raise No("Mailbox is read-only", "READ-ONLY")
        box = view.box
        try:
            if op == "-FLAGS":  # removing a keyword the folder never had defines nothing
                letters = "".join(filter(None, (box.keywords.letter(f, create=False) if not f.startswith("\\")
                                                else SYSTEM_LETTERS.get(f) for f in flags)))
            else:
                letters = await box.letters_of(flags)
        except TooManyKeywords:
            raise No("Too many keywords in this mailbox", "LIMIT") from None
        out = self.flags_announcement()
        chosen = [(msn, msg) for msn, u in targets if (msg := box.by_uid.get(u)) is not None]
        change: LetterChange  # applied to each message's letters by the folder's owner, not here
        if op == "FLAGS":
            change = letters
        elif op == "+FLAGS":
            def change(current: str) -> str:
                return current + letters
        else:
            def change(current: str) -> str:
                return "".join(ch for ch in current if ch not in letters)
        if unchanged_since is not None:  # RFC 7162 §3.1: an enabling command
            self.enable_condstore()
        # one trip to the io pool; the UNCHANGEDSINCE test and the change are one step (§3.1.3)
        _, refused = await box.store_letters([(msg, change) for _, msg in chosen], unchanged_since)
        failed = {m.uid for m in refused}
        condstore = self.condstore
        for msn, msg in chosen:
            u = msg.uid
            if u in failed or u not in box.by_uid:
                continue
            view.known[u] = msg.modseq
            ident = f"UID {u} " if uid or condstore else ""
            modseq = f" MODSEQ ({msg.modseq})" if condstore else ""
            if not silent:
                fl = " ".join(view.flags(msg))
                out.append(f"* {msn} FETCH ({ident}FLAGS ({fl}){modseq})\r\n".encode())
            elif condstore:  # §3.1.3: the new mod-sequence even for .SILENT
                out.append(f"* {msn} FETCH ({ident}MODSEQ ({msg.modseq}))\r\n".encode())
        self.send(b"".join(out))  # type: ignore[operator]
        self._publish()
        code = ""
        if failed:  # §3.1.3: UIDs for UID STORE, message numbers for STORE
            code = "MODIFIED " + uid_set_text(sorted(failed) if uid else
                                              [msn for msn, msg in chosen if msg.uid in failed])
        return self.ok(tag, "UID STORE" if uid else "STORE", code=code)  # type: ignore[attr-defined]

    # -- COPY / MOVE (RFC 3501 §6.4.7, RFC 6851, RFC 4315 COPYUID) ----------------------------

    async def cmd_copy(self, tag: str, args: list[Token], uid: bool = False) -> Any:
        return await self._copy(tag, args, uid, move=False)

    async def cmd_move(self, tag: str, args: list[Token], uid: bool = False) -> Any:
        return await self._copy(tag, args, uid, move=True)

    async def _copy(self, tag: str, args: list[Token], uid: bool, *, move: bool) -> Any:
        if len(args) != 2:
            raise Bad("COPY needs a sequence set and a mailbox")
        targets = self._targets(args[0], uid)
        name = self.mailbox_name(args[1])  # type: ignore[attr-defined]
        view = self._view()
        if move and view.readonly:
            raise No("Mailbox is read-only", "READ-ONLY")
        try:
            dest = await self.store.open(self.user, name, self.io)
        except FolderError as e:
            if e.code == "NONEXISTENT":
                raise No("Mailbox does not exist", "TRYCREATE") from None
            raise
        src = view.box
        same = dest is src
        sources: list[Message] = [m for _, u in targets if (m := src.by_uid.get(u)) is not None]
        added = 0 if move else sum(m.size for m in sources)  # MOVE within the account uses no space
        await self.store.check_quota(self.user, added, self.io, 0 if move else len(sources))
        # The destination's letters for each source's letters, all settled before anything is
        # placed: a keyword the destination has no room for refuses the whole COPY or MOVE.
        translated: dict[str, str] = {}
        try:
            for msg in sources:
                if msg.letters not in translated:
                    translated[msg.letters] = await dest.letters_of(src.flags(msg))
        except TooManyKeywords:
            raise No("Too many keywords in the target mailbox", "LIMIT") from None
        placed: list[Message | None] = []
        # In steps of COPY_STEP messages: between steps the reactor serves every other session.
        try:
            for start in range(0, len(sources), COPY_STEP):
                items = [(src.file_path(msg), msg.size, translated[msg.letters], msg.internal_date)
                         for msg in sources[start:start + COPY_STEP]]
                placed += await dest.add_links(items, move=move and not same)
        except Exception:
            await self._take_back(src, dest, [n for n in placed if n is not None], move=move and not same)
            raise
        self.store.usage_added(self.user, added, 0 if move else len([n for n in placed if n is not None]))
        done = [(m, n) for m, n in zip(sources, placed, strict=True) if n is not None]
        if move and not same:
            await src.detach(*(m for m, _ in done))
        pairs = [(m.uid, n.uid) for m, n in done]
        code = ""
        if pairs:
            code = f"COPYUID {dest.uidvalidity} {uid_set_text([a for a, _ in pairs])} " \
                   f"{uid_set_text([b for _, b in pairs])}"
        if move:
            if same:
                await src.expunge([a for a, _ in pairs])
            if code:
                self.send(f"* OK [{code}] Moved\r\n".encode())  # type: ignore[operator]
            self._publish()
            self.publish_change(None if name == "INBOX" else name)
            self._after_move(tag, bool(pairs))
            return None
        self.publish_change(None if name == "INBOX" else name)
        return self.ok(tag, "UID COPY" if uid else "COPY", code=code)  # type: ignore[attr-defined]

    def _after_move(self, tag: str, moved: bool) -> None:
        self.sync(allow_expunge=True)  # RFC 6851 §3.3: EXPUNGE before the tagged OK
        code = ""
        if moved and self.view is not None:  # RFC 6851 §4.4: a CONDSTORE server MUST
            code = f"[HIGHESTMODSEQ {self.view.box.highestmodseq}] "
        self.send(f"{tag} OK {code}MOVE completed\r\n".encode())  # type: ignore[operator]

    # -- UID (RFC 3501 §6.4.8, RFC 4315 §2.1) ---------------------------------------------------

    async def cmd_uid(self, tag: str, args: list[Token]) -> Any:
        if not args or not isinstance(args[0], Atom):
            raise Bad("UID needs a command")
        sub = args[0].upper()
        handlers = {"FETCH": self.cmd_fetch, "STORE": self.cmd_store, "SEARCH": self.cmd_search, "SORT": self.cmd_sort,
                    "THREAD": self.cmd_thread,
                    "COPY": self.cmd_copy, "MOVE": self.cmd_move, "EXPUNGE": self.cmd_expunge}
        if sub not in handlers:
            raise Bad(f"Unknown UID command {sub[:20]}")
        return await handlers[sub](tag, args[1:], uid=True)


_GONE = Message(0, "", "new", "", 0, 0)  # stands in for a message expunged meanwhile


# the last THREAD answer per mailbox, with what it was for (cmd_thread)
_THREADS: weakref.WeakKeyDictionary[Any, tuple[tuple[Any, ...], str]] = weakref.WeakKeyDictionary()


def _stamp(view: View) -> tuple[int, int, int]:
    """What a kept result was worked out against: the mailbox's changes and the messages the
    client has been told of (results hold only those)."""
    return (view.box.version, len(view.uids), view.uids[-1] if view.uids else 0)


def _charset(tok: Token) -> str:
    """A SEARCH, SORT or THREAD charset name (astring: an atom or a string)."""
    return tok.value.decode("ascii", "replace") if isinstance(tok, String) else atom(tok)


def _header_of(path: Any) -> bytes | None:
    """A message file's header section (io thread): read in steps until the blank line."""
    try:
        with open(path, "rb") as f:
            data = f.read(8192)
            while data.find(b"\r\n\r\n") < 0 and data.find(b"\n\n") < 0:
                more = f.read(65536)
                if not more:
                    break
                data += more
    except FileNotFoundError:
        return None
    return split_message(data)[0]


def _add_seen(letters: str) -> str:
    return letters + "S"
