"""Checking a Sieve script (RFC 5228 and the extensions): before it ever runs.

:class:`Checker` walks the commands and tests once the ``require`` list is known: that
each command and test exists and its extension was required, that its tags and
positional arguments are the ones it takes (tags first, RFC 5228 §2.6.2), that tags
which exclude each other are not given together, and what each extension asks of its
arguments when they are written out (comparators, relational operators, variable names
and references, regular expressions, addresses, zones and date-parts, header field and
script names). Every error names the line and column of what is wrong.
"""

from __future__ import annotations

from mailstack.sieve import date as dates
from mailstack.sieve import editheader, regex, vacation
from mailstack.sieve.addressing import addr_spec
from mailstack.sieve.matching import MATCH_TYPES, tag_value
from mailstack.sieve.parser import Argument, Command, Number, SieveSyntaxError, StringList, Tag, Test, decode_encoded
from mailstack.sieve.variables import MAX_VALUE as MAX_VARIABLE_VALUE
from mailstack.sieve.variables import MAX_VARIABLES, MODIFIERS, constant, name_error, octets, reference_error


class SieveError(SieveSyntaxError):
    """A script that parses but is not valid Sieve (an unknown command, a missing require...)."""


COMPARATORS = {"i;octet", "i;ascii-casemap", "i;ascii-numeric"}
_RELATIONS = {"gt", "ge", "lt", "le", "eq", "ne"}
MAX_SCRIPT_NAME = 512  # characters of an included script's name


def decode_strings(commands: list[Command]) -> None:
    """RFC 5228 §2.4.2.4: every string's encoded characters decoded, in place."""
    stack: list[Command | Test] = list(commands)
    while stack:
        node = stack.pop()
        for i, arg in enumerate(node.arguments):
            if isinstance(arg, StringList) and any("${" in v for v in arg.values):
                try:
                    values = tuple(decode_encoded(v) for v in arg.values)
                except ValueError as e:
                    raise SieveError(str(e), arg.line, arg.column) from None
                node.arguments[i] = StringList(values, arg.single, arg.line, arg.column)
        stack.extend(node.tests)
        if isinstance(node, Command) and node.block:
            stack.extend(node.block)


# -- checking ---------------------------------------------------------------------------------

# name -> (tags that take no value, tags that take a value and its kind, positional kinds)
# kinds: "s" a string, "l" a string list, "n" a number
_COMMANDS: dict[str, tuple[str | None, set[str], dict[str, str], list[str]]] = {
    # name: (extension, flag tags, valued tags, positional)
    "keep": (None, set(), {"flags": "l"}, []),
    "discard": (None, set(), {}, []),
    "stop": (None, set(), {}, []),
    "redirect": (None, {"copy"}, {}, ["s"]),
    "fileinto": ("fileinto", {"copy", "create"}, {"flags": "l"}, ["s"]),
    "reject": ("reject", set(), {}, ["s"]),
    "ereject": ("ereject", set(), {}, ["s"]),
    "setflag": ("imap4flags", set(), {}, ["l"]),
    "addflag": ("imap4flags", set(), {}, ["l"]),
    "removeflag": ("imap4flags", set(), {}, ["l"]),
    "set": ("variables", set(MODIFIERS), {}, ["s", "s"]),
    "addheader": ("editheader", {"last"}, {}, ["s", "s"]),
    "include": ("include", {"personal", "global", "once", "optional"}, {}, ["s"]),
    "return": ("include", set(), {}, []),
    "global": ("include", set(), {}, ["l"]),
    "deleteheader": ("editheader", {"last", "is", "contains", "matches", "regex"},
                     {"index": "n", "comparator": "s", "count": "s", "value": "s"}, ["s"]),
    "vacation": ("vacation", {"mime"}, {"days": "n", "seconds": "n", "subject": "s", "from": "s", "addresses": "l",
                                        "handle": "s"}, ["s"]),
}
ADDRESS_PARTS = {"all", "localpart", "domain", "user", "detail"}
_TESTS: dict[str, tuple[str | None, list[str]]] = {
    "address": (None, ["l", "l"]),
    "header": (None, ["l", "l"]),
    "envelope": ("envelope", ["l", "l"]),
    "exists": (None, ["l"]),
    "size": (None, ["n"]),
    "true": (None, []),
    "false": (None, []),
    "hasflag": ("imap4flags", ["l"]),
    "mailboxexists": ("mailbox", ["l"]),
    "string": ("variables", ["l", "l"]),
    "body": ("body", ["l"]),
    "date": ("date", ["s", "s", "l"]),
    "currentdate": ("date", ["s", "l"]),
}


class Checker:
    def __init__(self, required: set[str]) -> None:
        self.required = required
        self.variables = "variables" in required
        self.include = "include" in required
        self.assigned: set[str] = set()  # names given to set so far (RFC 6609 §3.4.1)
        self.names: set[str] = set()  # the variables set anywhere in the script

    def dynamic(self, text: str) -> bool:
        """A string whose value is known only when it runs (RFC 5229 §3)."""
        return self.variables and not constant(text)

    def flag_variable(self, args: list[Argument]) -> bool:
        """Whether imap4flags arguments start with variable names (two positional string lists)."""
        return self.variables and len(positional_strings(args)) == 2

    def check_names(self, names: StringList) -> None:
        for name in names.values:
            problem = name_error(name, self.include)
            if problem:
                raise SieveError(problem, names.line, names.column)
            self.names.add(name.lower())
        if len(self.names) > MAX_VARIABLES:
            raise SieveError(f"more than {MAX_VARIABLES} variables", names.line, names.column)

    def check_set(self, command: Command) -> None:
        """RFC 5229 §4: a constant, valid name; one modifier per precedence; bounded values."""
        strings = [a for a in command.arguments if isinstance(a, StringList)]
        name, value = strings[0], strings[1]
        problem = name_error(name.values[0], self.include)
        if problem:
            raise SieveError(problem, name.line, name.column)
        self.names.add(name.values[0].lower())
        self.assigned.add(name.values[0].lower())
        if len(self.names) > MAX_VARIABLES:
            raise SieveError(f"more than {MAX_VARIABLES} variables", name.line, name.column)
        if not self.dynamic(value.values[0]) and octets(value.values[0]) > MAX_VARIABLE_VALUE:
            raise SieveError(f"a variable holds at most {MAX_VARIABLE_VALUE} octets", value.line, value.column)
        seen: dict[int, Tag] = {}
        for tag in (a for a in command.arguments if isinstance(a, Tag)):
            if MODIFIERS[tag.name] in seen:
                raise SieveError(f":{tag.name} and :{seen[MODIFIERS[tag.name]].name} cannot go together",
                                 tag.line, tag.column)
            seen[MODIFIERS[tag.name]] = tag
            if tag.name == "quoteregex":
                self.need("regex", tag, ":quoteregex")

    def check_include(self, command: Command, rest: list[Argument]) -> None:
        """RFC 6609 §3.2, §3.4.1: one location and a constant script name; global needs
        variables, and names not set before it."""
        strings = rest[0]
        assert isinstance(strings, StringList)
        if command.name == "global":
            self.need("variables", command, "global")
            for name in strings.values:
                problem = name_error(name)
                if problem:
                    raise SieveError(problem, strings.line, strings.column)
                if name.lower() in self.assigned:
                    raise SieveError(f"{name!r} was set before it was declared global", strings.line, strings.column)
            return
        locations = [a for a in command.arguments if isinstance(a, Tag) and a.name in ("personal", "global")]
        if len(locations) > 1:
            raise SieveError("only one of :personal and :global", locations[1].line, locations[1].column)
        name = strings.values[0]
        if self.variables and not constant(name):
            raise SieveError("an included script's name cannot hold variables", strings.line, strings.column)
        if not name or len(name) > MAX_SCRIPT_NAME or any(
                ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F or c in "\u2028\u2029" for c in name):
            raise SieveError(f"{name!r} is not a script name (RFC 5804 §1.6)", strings.line, strings.column)

    def check_edit(self, command: Command, rest: list[Argument]) -> None:
        """RFC 5293 §4, §5: a valid field name (when written out); deleteheader's tags as a test's."""
        field_name = rest[0]
        assert isinstance(field_name, StringList)
        if not self.dynamic(field_name.values[0]):
            problem = editheader.name_error(field_name.values[0])
            if problem:
                raise SieveError(problem, field_name.line, field_name.column)
        if command.name == "deleteheader":
            self.check_tags(command, rest, keys=len(rest) == 2)

    def check_index(self, node: Command | Test, tag: Tag, extension: str) -> None:
        """RFC 5260 §6, RFC 5293 §5: :index counts from 1; :last only with :index."""
        self.need(extension, tag, f":{tag.name}")
        index = tag_number(node.arguments, "index")
        if tag.name == "last" and index is None:
            raise SieveError(":last needs :index", tag.line, tag.column)
        if tag.name == "index" and index is not None and index < 1:
            raise SieveError(":index counts from 1", tag.line, tag.column)

    def check_date(self, test: Test, rest: list[Argument]) -> None:
        """RFC 5260 §4.1, §4.2: a +hhmm/-hhmm zone, a known date-part (when written out)."""
        zone = tag_argument(test.arguments, "zone")
        if zone is not None and not self.dynamic(zone.values[0]):
            problem = dates.zone_error(zone.values[0])
            if problem:
                raise SieveError(problem, zone.line, zone.column)
        part = rest[-2]
        assert isinstance(part, StringList)
        if not self.dynamic(part.values[0]) and part.values[0].lower() not in dates.DATE_PARTS:
            raise SieveError(f"no date-part {part.values[0]!r} (year, month, day, date, julian, hour, minute, "
                             "second, time, iso8601, std11, zone, weekday)", part.line, part.column)

    def check_regex(self, node: Command | Test, tag: Tag, rest: list[Argument]) -> None:
        """draft-ietf-sieve-regex: required, with i;octet or i;ascii-casemap, literal patterns valid."""
        self.need("regex", tag, ":regex")
        comparator = tag_value(node.arguments, "comparator") or "i;ascii-casemap"
        if comparator not in ("i;octet", "i;ascii-casemap"):
            raise SieveError(f":regex cannot be used with {comparator}", tag.line, tag.column)
        if not rest:
            return
        keys = rest[-1]
        assert isinstance(keys, StringList)
        for pattern in keys.values:
            if self.dynamic(pattern):
                continue
            try:
                regex.compiled(pattern, comparator == "i;ascii-casemap")
            except regex.RegexError as e:
                raise SieveError(f"bad regular expression {pattern!r}: {e}", keys.line, keys.column) from None

    def need(self, extension: str | None, node: Command | Test | Argument, what: str) -> None:
        if extension is not None and extension not in self.required:
            raise SieveError(f'{what} needs require "{extension}"', node.line, node.column)

    def block(self, commands: list[Command]) -> None:
        previous = ""
        for command in commands:
            name = command.name
            if name in ("if", "elsif", "else"):
                if name != "if" and previous not in ("if", "elsif"):
                    raise SieveError(f"{name} without if before it", command.line, command.column)
                if command.block is None or command.arguments or len(command.tests) != (0 if name == "else" else 1):
                    raise SieveError(f"{name} takes {'a block' if name == 'else' else 'one test and a block'}",
                                     command.line, command.column)
                for test in command.tests:
                    self.test(test)
                self.block(command.block)
            elif name == "require":
                raise SieveError("require must come before any other command", command.line, command.column)
            elif name in _COMMANDS:
                extension, flags, valued, positional = _COMMANDS[name]
                self.need(extension, command, name)
                if command.block is not None or command.tests:
                    raise SieveError(f"{name} takes no test or block", command.line, command.column)
                if name in ("setflag", "addflag", "removeflag") and self.flag_variable(command.arguments):
                    positional = ["s", "l"]  # RFC 5232 §3: a variable name first
                if name == "deleteheader" and len(positional_strings(command.arguments)) == 2:
                    positional = ["s", "l"]  # RFC 5293 §5: value patterns after the name
                rest = self.arguments(command, command.arguments, flags, valued, positional)
                if name in ("addheader", "deleteheader"):
                    self.check_edit(command, rest)
                if name in ("include", "global"):
                    self.check_include(command, rest)
                if len(rest) == 2 and name in ("setflag", "addflag", "removeflag") and isinstance(rest[0], StringList):
                    self.check_names(rest[0])
                if name == "set":
                    self.check_set(command)
                if name == "redirect" and isinstance(rest[0], StringList) and not self.dynamic(rest[0].values[0]) \
                        and addr_spec(rest[0].values[0]) is None:
                    raise SieveError("redirect needs one mail address", rest[0].line, rest[0].column)
                for arg in command.arguments:
                    if isinstance(arg, Tag) and arg.name == "flags":
                        self.need("imap4flags", command, ":flags")
                    if isinstance(arg, Tag) and arg.name == "copy":
                        self.need("copy", arg, ":copy")
                    if isinstance(arg, Tag) and arg.name == "create":
                        self.need("mailbox", arg, ":create")
                if name == "vacation":
                    self.check_vacation(command)
            else:
                raise SieveError(f"unknown command {name!r}", command.line, command.column)
            previous = name

    def check_vacation(self, command: Command) -> None:
        """RFC 5230 §4 and RFC 6131 §2: one period tag, addresses that are addresses, a :mime
        reason with an ASCII header."""
        tags = {a.name: a for a in command.arguments if isinstance(a, Tag)}
        if "seconds" in tags:
            self.need("vacation-seconds", tags["seconds"], ":seconds")
            seconds = tag_number(command.arguments, "seconds")
            if seconds is not None and seconds >= 2**31:  # RFC 6131 §2: 0 to 2**31 - 1
                raise SieveError(":seconds is below 2147483648", tags["seconds"].line, tags["seconds"].column)
            if "days" in tags:
                later = max(tags["seconds"], tags["days"], key=lambda t: (t.line, t.column))
                raise SieveError("vacation takes :days or :seconds, not both", later.line, later.column)
        for tag in ("from", "addresses"):
            value = tag_argument(command.arguments, tag)
            if value is None:
                continue
            for address in value.values:
                if not self.dynamic(address) and addr_spec(address) is None:
                    raise SieveError(f":{tag} needs mail addresses, not {address!r}", value.line, value.column)
        reason = [a for a in command.arguments if isinstance(a, StringList)][-1]
        if "mime" in tags and not self.dynamic(reason.values[0]) and \
                not vacation.mime_header_is_ascii(reason.values[0]):
            raise SieveError("a :mime reason has 8-bit text in its header", reason.line, reason.column)

    def arguments(self, node: Command | Test, args: list[Argument], flags: set[str], valued: dict[str, str],
                  positional: list[str]) -> list[Argument]:
        """Check tags and positional arguments; returns the positional ones."""
        rest: list[Argument] = []
        seen: set[str] = set()
        i = 0
        while i < len(args):
            arg = args[i]
            if self.variables and isinstance(arg, StringList):
                for text in arg.values:
                    problem = reference_error(text, self.include) if "${" in text else None
                    if problem:
                        raise SieveError(problem, arg.line, arg.column)
            if isinstance(arg, Tag):
                if rest:  # RFC 5228 §2.6.2: tagged arguments come before the positional ones
                    raise SieveError(f":{arg.name} must come before the other arguments", arg.line, arg.column)
                if arg.name in seen:
                    raise SieveError(f":{arg.name} given twice", arg.line, arg.column)
                seen.add(arg.name)
                if arg.name in flags:
                    i += 1
                    continue
                if arg.name in valued:
                    value = args[i + 1] if i + 1 < len(args) else None
                    if not _kind(value, valued[arg.name]):
                        raise SieveError(f":{arg.name} needs a {_KIND_NAMES[valued[arg.name]]}", arg.line, arg.column)
                    i += 2
                    continue
                raise SieveError(f"{node.name} does not take :{arg.name}", arg.line, arg.column)
            rest.append(arg)
            i += 1
        if len(rest) != len(positional) or not all(_kind(a, k) for a, k in zip(rest, positional, strict=True)):
            want = " and ".join(_KIND_NAMES[k] for k in positional) or "no arguments"
            raise SieveError(f"{node.name} takes {want}", node.line, node.column)
        return rest

    def test(self, test: Test) -> None:
        name = test.name
        if name in ("allof", "anyof"):
            if test.arguments or not test.tests:
                raise SieveError(f"{name} takes a list of tests", test.line, test.column)
            for sub in test.tests:
                self.test(sub)
            return
        if name == "not":
            if test.arguments or len(test.tests) != 1:
                raise SieveError("not takes one test", test.line, test.column)
            self.test(test.tests[0])
            return
        if name not in _TESTS:
            raise SieveError(f"unknown test {name!r}", test.line, test.column)
        if test.tests:
            raise SieveError(f"{name} takes no test", test.line, test.column)
        extension, positional = _TESTS[name]
        self.need(extension, test, name)
        if name == "hasflag" and self.flag_variable(test.arguments):
            positional = ["l", "l"]  # RFC 5232 §4: a list of variables first
        flags: set[str] = set()
        valued: dict[str, str] = {}
        if name in ("address", "header", "envelope", "hasflag", "string", "body", "date", "currentdate"):
            flags |= {"is", "contains", "matches", "regex"}
            valued |= {"comparator": "s", "count": "s", "value": "s"}
        if name in ("address", "envelope"):
            flags |= ADDRESS_PARTS
        if name == "size":
            flags |= {"over", "under"}
        if name == "body":  # RFC 5173 §5: one body transform
            flags |= {"raw", "text"}
            valued["content"] = "l"
        if name in ("date", "currentdate"):  # RFC 5260 §4.1
            valued["zone"] = "s"
            flags |= {"originalzone"} if name == "date" else set()
        if name in ("header", "address", "date"):  # RFC 5260 §6
            valued["index"] = "n"
            flags.add("last")
        rest = self.arguments(test, test.arguments, flags, valued, positional)
        if name == "hasflag" and len(rest) == 2 and isinstance(rest[0], StringList):
            self.check_names(rest[0])
        self.check_tags(test, rest)
        if name in ("date", "currentdate"):
            self.check_date(test, rest)

    def check_tags(self, node: Command | Test, rest: list[Argument], keys: bool = True) -> None:
        """Tags that exclude each other, and what each needs (match types, comparators...)."""
        name = node.name
        tags = [a for a in node.arguments if isinstance(a, Tag)]
        for group, label in ((MATCH_TYPES, "match type"), (ADDRESS_PARTS, "address part"), ({"over", "under"}, ""),
                             ({"raw", "content", "text"}, "body transform"), ({"zone", "originalzone"}, "zone")):
            used = [t for t in tags if t.name in group]
            if len(used) > 1:
                raise SieveError(f"only one {label or ':over or :under'}", used[1].line, used[1].column)
        if name == "size" and not any(t.name in ("over", "under") for t in tags):
            raise SieveError("size takes :over or :under", node.line, node.column)
        for tag in tags:
            if tag.name in ("count", "value"):
                self.need("relational", tag, f":{tag.name}")
                relation = tag_value(node.arguments, tag.name)
                if relation not in _RELATIONS:
                    raise SieveError(f":{tag.name} takes one of {', '.join(sorted(_RELATIONS))}", tag.line, tag.column)
            if tag.name in ("user", "detail"):
                self.need("subaddress", tag, f":{tag.name}")
            if tag.name == "regex":
                self.check_regex(node, tag, rest if keys else [])
            if tag.name in ("index", "last"):
                self.check_index(node, tag, "editheader" if name == "deleteheader" else "index")
            if tag.name == "comparator":
                comparator = tag_value(node.arguments, "comparator")
                if comparator not in COMPARATORS:
                    raise SieveError(f"unknown comparator {comparator!r}", tag.line, tag.column)
                if comparator == "i;ascii-numeric":
                    self.need("comparator-i;ascii-numeric", tag, "i;ascii-numeric")
                    if any(t.name in ("contains", "matches") for t in tags):  # RFC 4790 §9.1: no substrings
                        raise SieveError("i;ascii-numeric cannot be used with :contains or :matches",
                                         tag.line, tag.column)


# tags followed by a value (not a positional argument)
VALUED_TAGS = frozenset({"comparator", "count", "value", "flags", "content", "days", "seconds", "subject", "from",
                          "addresses", "handle", "zone", "index"})
_KIND_NAMES = {"s": "string", "l": "string list", "n": "number"}


def _kind(arg: Argument | None, kind: str) -> bool:
    if kind == "n":
        return isinstance(arg, Number)
    if not isinstance(arg, StringList):
        return False
    return kind == "l" or len(arg.values) == 1


def positional_strings(args: list[Argument]) -> list[StringList]:
    out: list[StringList] = []
    skip = False
    for i, arg in enumerate(args):
        if skip:
            skip = False
            continue
        if isinstance(arg, Tag):
            skip = arg.name in VALUED_TAGS and i + 1 < len(args)
            continue
        if isinstance(arg, StringList):
            out.append(arg)
    return out


def tag_argument(args: list[Argument], name: str) -> StringList | None:
    for i, arg in enumerate(args):
        if isinstance(arg, Tag) and arg.name == name and i + 1 < len(args):
            value = args[i + 1]
            return value if isinstance(value, StringList) else None
    return None


def tag_number(args: list[Argument], name: str) -> int | None:
    for i, arg in enumerate(args):
        if isinstance(arg, Tag) and arg.name == name and i + 1 < len(args):
            value = args[i + 1]
            return value.value if isinstance(value, Number) else None
    return None


__all__ = ["ADDRESS_PARTS", "COMPARATORS", "VALUED_TAGS", "Checker", "SieveError", "decode_strings",
           "positional_strings", "tag_argument", "tag_number"]
