"""Checking and running a Sieve script (RFC 5228) against one message at delivery.

:func:`compile_script` parses a script and checks every command and test (:mod:`.checker`):
that its extension was named in ``require``, that its tags and arguments are the ones it
takes, that control commands sit where they may. Errors carry the line and column.
:meth:`Script.run` then evaluates it for one message and gives the :class:`Outcome`:
where copies go (with their flags), redirects, a rejection, or nothing (discard).
Running is pure computation over an in-memory view of the message, bounded by
MAX_STEPS commands and tests (a limit hit keeps the message, RFC 5228 §2.10.6 asks
for implicit keep on errors).

Supported: the base language (require, if/elsif/else, stop, keep, discard, redirect;
address, allof, anyof, envelope, exists, false, header, not, size, true; comparators
i;octet and i;ascii-casemap; :is, :contains, :matches; :all, :localpart, :domain) and
the extensions (EXTENSIONS, which ManageSieve advertises):

* fileinto (RFC 5228 §4.1), envelope, copy (RFC 3894), imap4flags (RFC 5232; on named
  variables too), subaddress (RFC 5233: :user and :detail), mailbox (RFC 5490: :create,
  mailboxexists), relational (RFC 5231: :count and :value), comparator-i;ascii-numeric
  (RFC 4790), reject and ereject (RFC 5429);
* vacation (RFC 5230) and vacation-seconds (RFC 6131): the decision only, a
  :class:`~.vacation.Vacation` on the outcome; the delivery side remembers and sends;
* variables (RFC 5229): ``set`` and its modifiers, the ``string`` test, ``${name}`` and
  the match variables ``${0}``..``${9}`` in every string but the ``require`` list,
  comparator names, relational operators and included script names, which are
  constant (:mod:`.variables` has the limits);
* encoded-character (RFC 5228 §2.4.2.4): decoded in every string before the script is
  checked (:func:`.parser.decode_encoded`);
* body (RFC 5173): :raw, :content and :text over MessageView.body (:mod:`.body`);
* regex (draft-ietf-sieve-regex-01): :regex with i;octet and i;ascii-casemap, its match
  variables, set :quoteregex (:mod:`.regex`);
* date and index (RFC 5260): date and currentdate with :zone/:originalzone and every
  date-part (:mod:`.date`); :index/:last on header, address and date;
* editheader (RFC 5293): addheader, deleteheader; later tests see the changed header,
  and Outcome.header carries it, as the run left it, for every copy (:mod:`.editheader`);
* include (RFC 6609): include [:personal|:global] [:once] [:optional], return, global
  and ${global.name}; scripts come from MessageView.load_script and are compiled once
  per text; a missing script (without :optional), a loop, more than MAX_INCLUDE_DEPTH
  scripts inside one another or MAX_INCLUDES in a run fail the run.

Match types and comparators are in :mod:`.matching`, addresses in :mod:`.addressing`.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from mailstack.imap import mime
from mailstack.sieve import body as bodies
from mailstack.sieve import date as dates
from mailstack.sieve import editheader, regex, vacation
from mailstack.sieve.addressing import ADDRESS_HEADERS, addr_spec, address_part, mailboxes_of, split_address
from mailstack.sieve.addressing import decode_words as _decoded  # also read by actions.py
from mailstack.sieve.checker import Checker, SieveError, decode_strings, positional_strings, tag_argument, tag_number
from mailstack.sieve.matching import Matcher
from mailstack.sieve.parser import Argument, Command, Number, SieveSyntaxError, StringList, Tag, Test, parse
from mailstack.sieve.vacation import Vacation
from mailstack.sieve.variables import MODIFIERS, ExpansionLimit, Variables

MAX_STEPS = 100_000  # commands and tests one run may evaluate
MAX_REDIRECTS = 10  # redirects one run may make
MAX_INCLUDE_DEPTH = 10  # scripts running inside one another, the main one included (RFC 6609 §3.1 asks for 3)
MAX_INCLUDES = 100  # scripts one run may include

EXTENSIONS = ("fileinto", "envelope", "copy", "imap4flags", "subaddress", "mailbox", "relational",
              "comparator-i;ascii-numeric", "reject", "ereject", "vacation", "vacation-seconds", "variables",
              "encoded-character", "body", "regex", "date", "index", "editheader", "include")
# RFC 5228 §6.1: every implementation has these, and a script may require them
BUILT_IN = ("comparator-i;octet", "comparator-i;ascii-casemap")
class SieveRuntimeError(Exception):
    """A run that cannot finish (a limit hit): the message is kept, the error logged."""


@dataclass(frozen=True, slots=True)
class Delivery:
    """A copy into a folder (None: INBOX) with IMAP flags."""

    folder: str | None
    flags: tuple[str, ...] = ()
    create: bool = False


@dataclass(slots=True)
class Outcome:
    deliveries: list[Delivery] = field(default_factory=list)
    redirects: list[str] = field(default_factory=list)
    reject: str | None = None  # the reason, for reject/ereject
    ereject: bool = False  # the reject was ereject (a DSN, not an MDN, when it cannot be refused in SMTP)
    discarded: bool = False
    vacation: Vacation | None = None  # a reply to send (RFC 5230), when the message allows one
    header: bytes | None = None  # the header as editheader left it (RFC 5293), for every copy; None: unchanged


@dataclass(frozen=True, slots=True)
class MessageView:
    """What a script looks at: the header (raw, with the empty line that ends it), the
    envelope, the size and the body (the octets after the header)."""

    header: bytes
    size: int
    sender: str  # envelope from; "" for the null path
    recipient: str  # envelope to, as it was sent (user+detail@domain)
    mailbox_exists: Callable[[str], bool] = lambda name: True
    delimiter: str = "+"  # delivery.recipient_delimiter: what separates :user from :detail (RFC 5233)
    body: bytes = b""  # the message octets after the header (RFC 5173 body test)
    now: float = 0.0  # the time of delivery, epoch seconds, for currentdate (0.0: when the run starts)
    # include (RFC 6609): a script's text by name, from the user's scripts (False) or the site's (True)
    load_script: Callable[[str, bool], str | None] = lambda name, is_global: None
    # the mailbox the copy is for, when the recipient is an alias of it: vacation counts its address
    # as the user's own too (RFC 5230 §4.5)
    mailbox: str = ""

    def raw_fields(self) -> dict[str, list[str]]:
        """Header field name -> unfolded values (not RFC 2047 decoded), in order; one parse."""
        return mime.field_values(self.header)


def compile_script(text: str | bytes) -> Script:
    """Parse and check a script; raises SieveSyntaxError (or SieveError) with a position."""
    commands = parse(text)
    required: set[str] = set()
    position = 0
    for i, command in enumerate(commands):
        if command.name != "require":
            break
        position = i + 1
        if command.tests or command.block is not None or len(command.arguments) != 1 or \
                not isinstance(command.arguments[0], StringList):
            raise SieveError("require takes one string list", command.line, command.column)
        for name in command.arguments[0].values:  # capability names are case-sensitive (§6)
            if name not in EXTENSIONS and name not in BUILT_IN:
                arg = command.arguments[0]
                raise SieveError(f"unsupported extension {name!r}", arg.line, arg.column)
            required.add(name)
            if name == "vacation-seconds":  # RFC 6131 §2: implies vacation
                required.add("vacation")
    body = commands[position:]
    if "encoded-character" in required:
        decode_strings(body)
    Checker(required).block(body)
    return Script(body, frozenset(required), _size(body))


@dataclass(frozen=True, slots=True)
class Script:
    commands: list[Command]
    required: frozenset[str]
    size: int = 0  # commands and tests in it

    def run(self, message: MessageView) -> Outcome:
        """The outcome for one message; a run that hits a limit raises SieveRuntimeError."""
        return _Run(message, "variables" in self.required).execute(self.commands)


def _size(commands: list[Command]) -> int:
    """Commands and tests, nested ones included."""
    count = 0
    stack: list[Command | Test] = list(commands)
    while stack:
        node = stack.pop()
        count += 1
        stack.extend(node.tests)
        if isinstance(node, Command) and node.block:
            stack.extend(node.block)
    return count


# -- running ----------------------------------------------------------------------------------


class _Stop(Exception):
    pass


class _Return(Exception):
    """return (RFC 6609 §3.3): the end of the script it is in; in the main one, as stop."""


@functools.lru_cache(maxsize=64)
def _included(text: str) -> Script:
    """An included script, compiled once per text (a few are kept)."""
    return compile_script(text)


class _Run:
    def __init__(self, message: MessageView, variables: bool = False) -> None:
        self.message = message
        self.shared: dict[str, str] = {}  # global variables (RFC 6609 §3.4)
        self.expanded = [0]  # characters expanded by every script of the run (variables.MAX_EXPANDED)
        self.vars = Variables(self.shared, self.expanded) if variables else None
        self.including: list[tuple[bool, str]] = []  # (global, name) of the included scripts running
        self.included: set[tuple[bool, str]] = set()
        self._bodies: dict[tuple[str, tuple[str, ...]], list[str]] = {}
        self.now = message.now or time.time()  # RFC 5260 §5: one moment for the whole run
        self.edited: list[tuple[str, bytes]] | None = None  # the fields, once editheader changed them
        self.added = 0
        self.linesep = b"\n" if message.header.endswith(b"\n") and not message.header.endswith(b"\r\n") else b"\r\n"
        self.source: list[Argument] | None = None  # the unexpanded arguments of the action running
        self._fields: dict[str, list[str]] | None = None
        self._addresses: dict[str, list[tuple[str, str]]] = {}  # header name -> its mailboxes
        self._decoded: dict[str, list[str]] = {}  # header name -> its values, RFC 2047 decoded
        # (test, names, part, folded, as octets) -> the values the quick header/address/envelope tests read
        self.values: dict[tuple[str, tuple[str, ...], str, bool, bool], list[str | bytes | None]] = {}
        self.steps = 0
        self.flags: list[str] = []  # the internal variable of imap4flags
        self.vacation_run = False  # RFC 5230 §4.7: once per script
        self.outcome = Outcome()
        self.implicit_keep = True

    def raw(self, name: str) -> list[str]:
        """Unfolded values of a header field (the header parsed once per run, and again after
        editheader changed it)."""
        if self._fields is None:
            if self.edited is None:
                self._fields = self.message.raw_fields()
            else:
                self._fields = {}
                for field_name, raw in self.edited:
                    self._fields.setdefault(field_name, []).append(mime.field_value(raw))
        return self._fields.get(name.lower(), [])

    def edit_fields(self) -> list[tuple[str, bytes]]:
        """The header's fields for editheader to change; later tests read the changed ones."""
        if self.edited is None:
            self.edited = mime.header_fields(self.message.header)
        self._fields = None
        self._addresses = {}
        self._decoded = {}
        self.values = {}
        return self.edited

    def add_header(self, name: str, value: str, last: bool) -> None:
        """addheader (RFC 5293 §4): at the top, or the bottom with :last."""
        problem = editheader.name_error(name)
        if problem:
            raise SieveRuntimeError(problem)
        self.added += 1
        if self.added > editheader.MAX_ADDED:
            raise SieveRuntimeError(f"more than {editheader.MAX_ADDED} added header fields")
        try:
            raw = editheader.field(name, value, self.linesep)
        except editheader.EditError as e:
            raise SieveRuntimeError(str(e)) from None
        fields = self.edit_fields()
        fields.insert(len(fields) if last else 0, (name.lower(), raw))

    def delete_header(self, args: list[Argument], strings: list[StringList]) -> None:
        """deleteheader (RFC 5293 §5): the named fields, the :index-th of them, those whose values
        match; never a protected one (§6, silently)."""
        name = strings[0].values[0].lower()
        problem = editheader.name_error(name)
        if problem:
            raise SieveRuntimeError(problem)
        if name in editheader.PROTECTED:
            return
        fields = self.edited if self.edited is not None else mime.header_fields(self.message.header)
        found = [i for i, (field_name, _) in enumerate(fields) if field_name == name]
        index = tag_number(args, "index")
        if index is not None:
            at = len(found) - index if any(isinstance(a, Tag) and a.name == "last" for a in args) else index - 1
            found = [found[at]] if 0 <= at < len(found) else []
        if len(strings) == 2:  # as the header test would match them
            matcher = Matcher(args)
            found = [i for i in found if matcher.match([_decoded(mime.field_value(fields[i][1]))], strings[1].values)]
        if found:
            fields = self.edit_fields()  # the same fields, now kept as the run's
            for i in reversed(found):
                del fields[i]

    def mailboxes(self, name: str) -> list[tuple[str, str]]:
        """The addresses of a header field's values, parsed once per run."""
        key = name.lower()
        found = self._addresses.get(key)
        if found is None:
            found = self._addresses[key] = [a for v in self.raw(name) for a in mailboxes_of(v)]
        return found

    def field(self, names: Sequence[str], index: int, last: bool) -> list[tuple[str, str]]:
        """The index-th of the named header fields, counted in the order of the names (from the
        end with :last), as [(name, raw value)]; none when there are fewer."""
        fields = [(name, value) for name in names for value in self.raw(name)]
        at = len(fields) - index if last else index - 1
        return [fields[at]] if 0 <= at < len(fields) else []

    def date_values(self, name: str, args: list[Argument], positional: list[tuple[str, ...]]) -> list[str]:
        """The date-part a date or currentdate test compares (RFC 5260 §4, §5): none when the
        field has no valid date."""
        zone_arg = tag_argument(args, "zone")
        zone_text = zone_arg.values[0] if zone_arg is not None else None
        part = positional[-2][0]
        if self.vars is not None and zone_text is not None:
            zone_text = self.vars.expand(zone_text)
        problem = dates.zone_error(zone_text) if zone_text is not None else None
        if problem:
            raise SieveRuntimeError(problem)
        if part.lower() not in dates.DATE_PARTS:
            raise SieveRuntimeError(f"no date-part {part!r}")
        if name == "currentdate":
            moment = dates.now(self.now)
        else:
            index = tag_number(args, "index")
            last = any(isinstance(a, Tag) and a.name == "last" for a in args)
            chosen = self.field(positional[0][:1], index or 1, last and index is not None)
            found = dates.field_date(chosen[0][1]) if chosen else None
            if found is None:
                return []
            moment = found
        original = any(isinstance(a, Tag) and a.name == "originalzone" for a in args)
        return [dates.date_part(dates.shifted(moment, dates.zone(zone_text) if zone_text else None, original), part)]

    def body_strings(self, args: list[Argument]) -> list[str]:
        """What a body test matches against (RFC 5173 §5), worked out once per run and transform."""
        transform = next((a.name for a in args if isinstance(a, Tag) and a.name in ("raw", "content")), "text")
        types: tuple[str, ...] = ("text",)
        if transform == "content":
            found = tag_argument(args, "content")
            types = found.values if found is not None else ()
            if self.vars is not None:
                types = self.vars.expand_all(types)
        key = (transform, types)
        strings = self._bodies.get(key)
        if strings is None:
            message = self.message
            if not bodies.has_body(message.header, message.body):
                strings = []
            elif transform == "raw":
                strings = bodies.raw(message.body)
            else:
                strings = bodies.content(message.header, message.body, list(types))
            self._bodies[key] = strings
        return strings

    def decoded(self, name: str) -> list[str]:
        """The same, RFC 2047 words decoded (RFC 5228 §5.7), for the header test; once per run."""
        key = name.lower()
        found = self._decoded.get(key)
        if found is None:
            found = self._decoded[key] = [_decoded(v) for v in self.raw(name)]
        return found

    def execute(self, commands: list[Command]) -> Outcome:
        try:
            self.block(commands)
        except (_Stop, _Return):
            pass
        except ExpansionLimit as e:
            raise SieveRuntimeError(str(e)) from None
        except regex.RegexError as e:  # a pattern made by variables at run time
            raise SieveRuntimeError(f"bad regular expression: {e}") from None
        if self.implicit_keep and self.outcome.reject is None:
            self.deliver(None, tuple(self.flags))
        if self.outcome.reject is not None and (self.outcome.deliveries or self.outcome.redirects):
            # RFC 5429 §2.4: reject with keep, fileinto or redirect is prohibited here
            raise SieveRuntimeError("reject together with keep, fileinto or redirect")
        if self.outcome.reject is not None and self.vacation_run:  # RFC 5230 §4.7
            raise SieveRuntimeError("reject together with vacation")
        if self.edited is not None:
            self.outcome.header = b"".join(raw for _, raw in self.edited) + self.linesep
        return self.outcome

    def block(self, commands: list[Command]) -> None:
        taken = False  # an if/elsif of this chain ran its block
        for command in commands:
            self.steps += 1
            if self.steps > MAX_STEPS:
                raise SieveRuntimeError(f"more than {MAX_STEPS} steps")
            name = command.name
            if name == "if":
                taken = self.test(command.tests[0])
                if taken:
                    self.block(command.block or [])
                continue
            if name == "elsif":
                if not taken and self.test(command.tests[0]):
                    taken = True
                    self.block(command.block or [])
                continue
            if name == "else":
                if not taken:
                    self.block(command.block or [])
                continue
            self.action(command)

    def action(self, command: Command) -> None:
        name, args = command.name, command.arguments
        tags = {a.name for a in args if isinstance(a, Tag)}
        strings = [a for a in args if isinstance(a, StringList)]
        if name == "include":  # the name is never expanded (RFC 6609 §3.2)
            return self.include(strings[0].values[0], tags)
        if name == "return":
            raise _Return
        if name == "global" and self.vars is not None:
            self.vars.global_names.update(v.lower() for v in strings[0].values)
            return None
        if self.vars is not None:
            return self.expanded_action(command, tags, strings)
        if name == "stop":
            raise _Stop
        if name == "keep":
            self.implicit_keep = False
            self.deliver(None, self.flags_from(args))
        elif name == "discard":
            self.implicit_keep = False
            self.outcome.discarded = True
        elif name == "fileinto":
            if "copy" not in tags:
                self.implicit_keep = False
            target = strings[-1].values[0]
            self.deliver(None if target.upper() == "INBOX" else target, self.flags_from(args), "create" in tags)
        elif name == "redirect":
            if "copy" not in tags:
                self.implicit_keep = False
            target = addr_spec(strings[-1].values[0]) or strings[-1].values[0]
            if target not in self.outcome.redirects:
                if len(self.outcome.redirects) >= MAX_REDIRECTS:
                    raise SieveRuntimeError(f"more than {MAX_REDIRECTS} redirects")
                self.outcome.redirects.append(target)
        elif name in ("reject", "ereject"):
            if self.outcome.reject is not None:  # RFC 5429 §2.4: at most one
                raise SieveRuntimeError("more than one reject")
            self.implicit_keep = False
            self.outcome.reject = strings[-1].values[0]
            self.outcome.ereject = name == "ereject"
        elif name == "vacation":
            if self.vacation_run:  # RFC 5230 §4.7
                raise SieveRuntimeError("more than one vacation")
            self.vacation_run = True
            self.outcome.vacation = self.vacation_reply(args, strings[-1].values[0], "mime" in tags)
        elif name == "addheader":
            self.add_header(strings[0].values[0], strings[1].values[0], "last" in tags)
        elif name == "deleteheader":
            self.delete_header(args, strings)
        elif name == "setflag":
            self.flags = _flag_list(strings[-1].values)
        elif name == "addflag":
            self.flags = _flag_list([*self.flags, *strings[-1].values])
        elif name == "removeflag":
            gone = {f.lower() for f in _flag_list(strings[-1].values)}
            self.flags = [f for f in self.flags if f.lower() not in gone]

    def vacation_reply(self, args: list[Argument], reason: str, mime: bool) -> Vacation | None:
        """The reply a vacation action asks for, or None when the message must not get one."""
        message = self.message
        own = {message.recipient.lower()}
        if message.mailbox:
            own.add(message.mailbox.lower())
        local, domain = split_address(message.recipient)
        user = address_part((local, domain), "user", message.delimiter)
        if user is not None and domain:
            own.add(f"{user}@{domain}".lower())
        addresses = tag_argument(args, "addresses")
        for extra in addresses.values if addresses is not None else ():
            found = addr_spec(extra)
            if found is not None:
                own.add(found.lower())
        if not vacation.reply_allowed(message.sender, own, self.raw,
                                      lambda name: [address_part(a, "all") or "" for a in self.mailboxes(name)]):
            return None
        subject, from_, handle = (tag_argument(args, t) for t in ("subject", "from", "handle"))
        from_value = from_.values[0] if from_ is not None else None
        if from_value is not None and addr_spec(from_value) is None:  # §4.3: an invalid one is ignored
            from_value = None
        if mime and not vacation.mime_header_is_ascii(reason):  # §5: made so by variables at run time
            raise SieveRuntimeError("a :mime vacation reason has 8-bit text in its header")
        if handle is None:  # §4.2: from the arguments as written, before variables are expanded
            source = self.source or args
            subject_written, from_written = (tag_argument(source, t) for t in ("subject", "from"))
            derived = vacation.derived_handle([a for a in source if isinstance(a, StringList)][-1].values[0],
                                              subject_written.values[0] if subject_written else None,
                                              from_written.values[0] if from_written else None, mime)
        return Vacation(
            reason=reason,
            subject=subject.values[0] if subject is not None else None,
            from_=from_value,
            mime=mime,
            handle=handle.values[0] if handle is not None else derived,
            seconds=vacation.period(tag_number(args, "days"), tag_number(args, "seconds")),
            to=message.sender,
        )

    def include(self, name: str, tags: set[str]) -> None:
        """Run another of the user's (or the site's) scripts here (RFC 6609 §3.2): with its own
        requires and variables, sharing the globals, the actions and the header edits."""
        key = ("global" in tags, name)
        if "once" in tags and (key in self.included or key in self.including):
            return
        if key in self.including:
            raise SieveRuntimeError(f"script {name!r} includes itself")
        text = self.message.load_script(name, key[0])
        if text is None:
            if "optional" in tags:
                return
            raise SieveRuntimeError(f"no {'global' if key[0] else 'personal'} script {name!r} to include")
        if len(self.including) + 1 >= MAX_INCLUDE_DEPTH:
            raise SieveRuntimeError(f"scripts included more than {MAX_INCLUDE_DEPTH} deep")
        self.included.add(key)
        if len(self.included) > MAX_INCLUDES:
            raise SieveRuntimeError(f"more than {MAX_INCLUDES} scripts included")
        try:
            script = _included(text)
        except SieveSyntaxError as e:
            raise SieveRuntimeError(f"included script {name!r}: {e}") from None
        saved = self.vars
        self.vars = Variables(self.shared, self.expanded) if "variables" in script.required else None
        self.including.append(key)
        try:
            self.block(script.commands)
        except _Return:
            pass
        finally:
            self.including.pop()
            self.vars = saved

    def expanded_action(self, command: Command, tags: set[str], strings: list[StringList]) -> None:
        """An action of a script with variables: its strings expanded first (RFC 5229 §3)."""
        assert self.vars is not None
        if command.name == "set":
            name, value = strings[0].values[0], strings[1].values[0]
            self.vars.set(name, self.vars.expand(value), [t for t in tags if t in MODIFIERS])
            return
        expand = self.vars.expand_all
        if command.name in ("setflag", "addflag", "removeflag") and len(strings) == 2:  # RFC 5232 §3
            name, given = strings[0].values[0], _flag_list(expand(strings[1].values))
            current = _flag_list([self.vars.get(name)])
            if command.name == "addflag":
                given = _flag_list([*current, *given])
            elif command.name == "removeflag":
                gone = {f.lower() for f in given}
                given = [f for f in current if f.lower() not in gone]
            self.vars.set(name, " ".join(given), [])
            return
        args = [StringList(expand(a.values), a.single, a.line, a.column) if isinstance(a, StringList) and
                any("${" in v for v in a.values) else a for a in command.arguments]
        if command.name == "redirect":
            target = [a for a in args if isinstance(a, StringList)][-1].values[0]
            if addr_spec(target) is None:
                raise SieveRuntimeError(f"redirect to {target!r}, which is not a mail address")
        self.vars, saved = None, self.vars
        self.source = command.arguments
        try:
            self.action(Command(command.name, args, command.tests, command.block, command.line, command.column))
        finally:
            self.vars = saved
            self.source = None

    def flags_from(self, args: list[Argument]) -> tuple[str, ...]:
        """:flags given to keep/fileinto, else the internal variable (RFC 5232 §5)."""
        value = tag_argument(args, "flags")
        return tuple(_flag_list(value.values)) if value is not None else tuple(self.flags)

    def deliver(self, folder: str | None, flags: tuple[str, ...], create: bool = False) -> None:
        deliveries = self.outcome.deliveries
        for i, existing in enumerate(deliveries):
            if existing.folder == folder:  # RFC 5228 §2.10.3: one copy per folder; the last flags (RFC 5232 §3)
                deliveries[i] = Delivery(folder, flags, create or existing.create)
                return
        deliveries.append(Delivery(folder, flags, create))

    # -- tests -----------------------------------------------------------------------------

    def test(self, test: Test) -> bool:
        self.steps += 1
        if self.steps > MAX_STEPS:
            raise SieveRuntimeError(f"more than {MAX_STEPS} steps")
        prepared = test.prepared
        if prepared is None:  # the script's runs share it
            prepared = test.prepared = _Prepared(test)
        quick = prepared.quick
        if quick is not None and (self.vars is None or prepared.quick_with_variables):
            return quick(self)
        name = test.name
        args = test.arguments
        positional, matcher, index, last, part = (prepared.positional, prepared.matcher, prepared.index,
                                                  prepared.last, prepared.part)
        variables = self.vars
        if variables is not None and prepared.dynamic:
            positional = [variables.expand_all(values) for values in positional]
        if name == "header":
            if index is not None:  # RFC 5260 §6: one field, counted over the named ones in order
                values = [_decoded(v) for _, v in self.field(positional[0], index, last)]
            else:
                values = [v for h in positional[0] for v in self.decoded(h)]
            return matcher.match(values, positional[1], variables)
        delimiter = self.message.delimiter
        if name == "address":  # RFC 5228 §5.1: address headers only, never the phrase (not decoded)
            found: list[str | None] = []
            if index is not None:
                found = [address_part(a, part, delimiter) for h, v in self.field(positional[0], index, last)
                         if h.lower() in ADDRESS_HEADERS for a in mailboxes_of(v)]
                return matcher.match(found, positional[1], variables)
            for header in positional[0]:
                if header.lower() in ADDRESS_HEADERS:
                    found += [address_part(a, part, delimiter) for a in self.mailboxes(header)]
            return matcher.match(found, positional[1], variables)
        if name == "envelope":
            found = []
            for which in positional[0]:
                which = which.lower()
                address = self.message.sender if which == "from" else self.message.recipient if which == "to" else None
                if address is None:
                    continue
                if address == "":  # RFC 5228 §5.4: the null reverse-path is "" whatever the part;
                    if matcher.kind != "count":  # RFC 5231 §4.2: and counts as no address
                        found.append("")
                else:
                    found.append(address_part(split_address(address), part, delimiter))
            return matcher.match(found, positional[1], variables)
        if name == "exists":  # size and the logical tests always run quick (_Prepared)
            return all(self.raw(h) for h in positional[0])
        if name == "mailboxexists":
            return all(self.message.mailbox_exists(m) for m in positional[0])
        if name in ("date", "currentdate"):
            return matcher.match(self.date_values(name, args, positional), positional[-1], variables)
        if name == "string":  # RFC 5229 §5: an empty string counts as none
            sources = [v for v in positional[0] if v or matcher.kind != "count"]
            return matcher.match(sources, positional[1], variables)
        if name == "body":  # RFC 5173 §6: never sets match variables
            return matcher.match(self.body_strings(args), positional[0])
        if name == "hasflag":  # RFC 5232 §4: keys are flag lists too
            flags = self.flags
            if len(positional) == 2 and variables is not None:  # the flags in the named variables
                flags = [f for v in positional[0] for f in _flag_list([variables.get(v)])]
            return matcher.match(list(flags), _flag_list(positional[-1]), variables)
        raise SieveRuntimeError(f"test {name} cannot run")


_FLAG = re.compile(r"\\?[!#$&'+\-.0-9;<>=?@A-Z\[^_`a-z|}~:/,]+\Z")  # an IMAP flag (RFC 3501 §9 atom)


def _flag_list(values: Sequence[str]) -> list[str]:
    """Flags from strings that may each hold several, space separated; each once, \\Recent and
    what is no IMAP flag left out (RFC 5232 §2, §3)."""
    out: list[str] = []
    seen: set[str] = set()
    for value in values:
        for flag in value.split(" "):
            lowered = flag.lower()
            if not flag or lowered == "\\recent" or not _FLAG.match(flag) or lowered in seen:
                continue
            seen.add(lowered)
            out.append(flag)
    return out


class _Prepared:
    """A test node worked out once (the runs of a script share it): its positional values,
    matcher, whether a value holds "${", :index, :last, the address part, and for the common
    tests a ``quick`` function of the run that needs no more dispatching: the logical tests,
    exists, size, and header, address and envelope with :is, :contains or :matches under
    i;octet or i;ascii-casemap (the run keeps their values, folded, once per run).
    Compiled scripts are shared by every run, user and thread (an included one across
    users): nothing here may depend on a message, a user or a run."""

    __slots__ = ("positional", "matcher", "dynamic", "index", "last", "part", "quick", "quick_with_variables")

    def __init__(self, test: Test) -> None:
        args = test.arguments
        self.positional = [a.values for a in positional_strings(args)]
        tags = {a.name for a in args if isinstance(a, Tag)}
        self.matcher = Matcher(args)
        self.dynamic = any("${" in v for x in self.positional for v in x)
        self.index = tag_number(args, "index")
        self.last = "last" in tags
        self.part = next((t for t in ("localpart", "domain", "user", "detail") if t in tags), "all")
        self.quick: Callable[[_Run], bool] | None = None
        # with variables, only where nothing is expanded and no match variable is set
        self.quick_with_variables = not self.dynamic and self.matcher.kind != "matches"
        name = test.name
        if name in ("true", "false", "not", "allof", "anyof"):
            self.quick = _logical(name, test.tests)
        elif name == "size":
            limit = next(a for a in args if isinstance(a, Number)).value
            self.quick = (lambda run: run.message.size > limit) if "over" in tags else \
                (lambda run: run.message.size < limit)
        elif name == "exists":
            names = self.positional[0]
            self.quick = lambda run: all(run.raw(h) for h in names)
        elif name in ("header", "address", "envelope") and self.index is None:
            match = self.matcher.quick_match(self.positional[1])
            if match is not None:
                self.quick = _source(name, tuple(self.positional[0]), self.part, self.matcher, match)


def _logical(name: str, tests: list[Test]) -> Callable[[_Run], bool]:
    if name in ("true", "false"):
        value = name == "true"
        return lambda run: value
    if name == "not":
        inner = tests[0]
        return lambda run: not run.test(inner)
    if name == "allof":
        def allof(run: _Run) -> bool:
            for t in tests:
                if not run.test(t):
                    return False
            return True
        return allof

    def anyof(run: _Run) -> bool:
        for t in tests:
            if run.test(t):
                return True
        return False
    return anyof


def _source(name: str, names: tuple[str, ...], part: str, matcher: Matcher,
            match: Callable[[Sequence[str | bytes | None]], bool]) -> Callable[[_Run], bool]:
    """header, address or envelope over constant names and keys: the values the test reads, as
    its comparator sees them, are kept by the run (tests asking the same share them)."""
    key = (name, names, part, matcher.fold, matcher.kind == "matches")
    folded = matcher.quick_value

    def values(run: _Run) -> list[str | bytes | None]:
        if name == "header":
            return [folded(v) for h in names for v in run.decoded(h)]
        delimiter = run.message.delimiter
        if name == "address":  # RFC 5228 §5.1: address headers only, never the phrase
            return [None if p is None else folded(p) for h in names if h.lower() in ADDRESS_HEADERS
                    for p in (address_part(a, part, delimiter) for a in run.mailboxes(h))]
        found: list[str | bytes | None] = []
        for which in names:
            which = which.lower()
            address = run.message.sender if which == "from" else run.message.recipient if which == "to" else None
            if address == "":  # RFC 5228 §5.4: the null reverse-path is "" whatever the part
                found.append(folded(""))
            elif address is not None:
                p = address_part(split_address(address), part, delimiter)
                found.append(None if p is None else folded(p))
        return found

    def quick(run: _Run) -> bool:
        found = run.values.get(key)
        if found is None:
            found = run.values[key] = values(run)
        return match(found)
    return quick


__all__ = ["EXTENSIONS", "Delivery", "MessageView", "Outcome", "Script", "SieveError", "SieveRuntimeError",
           "Vacation", "compile_script"]
