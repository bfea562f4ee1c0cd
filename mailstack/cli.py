"""The ``mailstack`` command line: edit the account store, check the configuration.

``mailstack [--config PATH] COMMAND``; the configuration is ``--config``, else
``$MAILSTACK_CONFIG``, else ``etc/mailstack.toml`` in the current directory, else
the built-in defaults. Commands edit the same account store the running servers
read (``storage.accounts``); servers see a change on their next lookup, without
a restart. Before an account command runs, the configuration's ``domains`` are
added to the store if missing, as the service does at start.

Errors print one line, ``mailstack: <message>``, on stderr and exit 1; bad
usage exits 2. Command groups are registered in :data:`COMMAND_GROUPS`: a group
adds its sub-parser and sets ``handler`` (``(args, context) -> int | None``).
"""

from __future__ import annotations

import argparse
import getpass
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from mailstack import config
from mailstack.accounts import AccountError, SQLiteAccountStore, open_store
from mailstack.accounts.directory import canonical_address, canonical_alias_source, canonical_domain, domain_of
from mailstack.addresses import InvalidAddress
from mailstack.config import ConfigError, Settings
from mailstack.dkim.keys import ALGORITHMS, DKIMKeyError, KeyDirectory
from mailstack.dnsrecords import txt, zone_text
from mailstack.queue.spool import FAILED, RecipientState, Spool
from mailstack.sieve.interpreter import compile_script
from mailstack.sieve.parser import SieveSyntaxError

if TYPE_CHECKING:
    SubParsers = argparse._SubParsersAction[argparse.ArgumentParser]
else:
    SubParsers = argparse._SubParsersAction

__all__ = ["COMMAND_GROUPS", "CommandError", "Context", "build_parser", "main", "run"]

PROG = "mailstack"


class CommandError(Exception):
    """A command was refused; the message is printed as one line."""


@dataclass
class Context:
    """What a command handler may use: settings, streams and the account store."""

    settings: Settings
    config_path: Path | None
    stdin: TextIO
    stdout: TextIO
    ask_password: Callable[[str], str]
    store_factory: Callable[[Path], SQLiteAccountStore]
    _store: SQLiteAccountStore | None = field(default=None, repr=False)

    @property
    def store(self) -> SQLiteAccountStore:
        """The account store, opened on first use and seeded with the config's domains."""
        if self._store is None:
            self._store = self.store_factory(self.settings.storage.accounts)
            self._store.ensure_domains(self.settings.domains)
        return self._store

    def say(self, line: str) -> None:
        print(line, file=self.stdout)

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None


Handler = Callable[[argparse.Namespace, Context], "int | None"]


# -- entry points ----------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Console script entry point; returns the exit status."""
    return run(argv)


def run(
    argv: Sequence[str] | None = None,
    *,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    ask_password: Callable[[str], str] = getpass.getpass,
    store_factory: Callable[[Path], SQLiteAccountStore] = open_store,
) -> int:
    """Parse *argv*, load the configuration and run one command."""
    err = stderr if stderr is not None else sys.stderr
    words = list(sys.argv[1:] if argv is None else argv)
    try:
        lab_at = _command_position(words)
        if lab_at is not None and words[lab_at] == "lab":  # its words are its own (options first too)
            args = build_parser().parse_args(words[:lab_at + 1])
            args.words = words[lab_at + 1:]
        else:
            args = build_parser().parse_args(words)
    except SystemExit as e:  # argparse: usage error (2) or --help (0)
        return e.code if isinstance(e.code, int) else 2
    ctx: Context | None = None
    try:
        path = args.config if args.config is not None else config.default_path()
        # `lab` brings its own configuration: a broken mailstack.toml must not stop it
        settings = config.load(path) if getattr(args, "needs_config", True) else config.from_mapping({})
        ctx = Context(
            settings=settings,
            config_path=path,
            stdin=stdin if stdin is not None else sys.stdin,
            stdout=stdout if stdout is not None else sys.stdout,
            ask_password=ask_password,
            store_factory=store_factory,
        )
        handler: Handler = args.handler
        return handler(args, ctx) or 0
    except (ConfigError, AccountError, CommandError) as e:
        print(f"{PROG}: {e}", file=err)
        return 1
    except KeyboardInterrupt:
        print(file=err)
        return 130
    finally:
        if ctx is not None:
            ctx.close()


def _command_position(words: list[str]) -> int | None:
    """Where the command's name is among *words*, past the global options."""
    i = 0
    while i < len(words):
        if words[i] == "--config":
            i += 2
        elif words[i].startswith("-"):
            i += 1
        else:
            return i
    return None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Manage a mailstack installation.")
    parser.add_argument(
        "--config",
        metavar="PATH",
        type=Path,
        help="configuration file (default: $MAILSTACK_CONFIG, else etc/mailstack.toml)",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in COMMAND_GROUPS.values():
        register(commands)
    return parser


def _group(commands: SubParsers, name: str, help: str) -> SubParsers:
    parser = commands.add_parser(name, help=help, description=help)
    return parser.add_subparsers(dest="action", metavar="ACTION", required=True)


# -- argument parsing helpers ------------------------------------------------------------

_SIZE = re.compile(r"^(\d+)\s*([kmgt]?)(?:i?b)?$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def _quota(text: str) -> int:
    """Bytes: ``1048576``, or with a binary unit, ``500M``, ``2G``; 0 is unlimited."""
    m = _SIZE.match(text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"invalid size {text!r} (bytes, or with K, M, G, T)")
    return int(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]


def _count(text: str) -> int:
    """A message count: a whole number, 0 for unlimited."""
    if not (text.strip().isdigit() and text.strip().isascii()):
        raise argparse.ArgumentTypeError(f"invalid number of messages {text!r}")
    return int(text.strip())


def _user_count(text: str) -> int:
    if not (text.strip().isdigit() and text.strip().isascii()):
        raise argparse.ArgumentTypeError(f"invalid number of users {text!r}")
    return int(text.strip())


def _address(text: str) -> str:
    try:
        return canonical_address(text)
    except InvalidAddress as e:
        raise CommandError(f"invalid address {text!r}: {e}") from None


def _domain(text: str) -> str:
    try:
        return canonical_domain(text)
    except InvalidAddress as e:
        raise CommandError(str(e)) from None


def _format_quota(quota: int) -> str:
    return "unlimited" if quota == 0 else str(quota)


def _read_password(args: argparse.Namespace, ctx: Context) -> str:
    """One line from stdin with --password-stdin, else asked twice on the terminal."""
    if args.password_stdin:
        line = ctx.stdin.readline()
        if line.endswith("\n"):
            line = line[:-1]
            if line.endswith("\r"):
                line = line[:-1]
        return line
    if not ctx.stdin.isatty():
        raise CommandError("no terminal to ask for the password; pipe it in with --password-stdin")
    try:
        first = ctx.ask_password("Password: ")
        second = ctx.ask_password("Repeat password: ")
    except EOFError:
        raise CommandError("no password given") from None
    if first != second:
        raise CommandError("passwords do not match")
    return first


# -- domain ------------------------------------------------------------------------------


def _domain_commands(commands: SubParsers) -> None:
    actions = _group(commands, "domain", "local domains")
    p = actions.add_parser("add", help="add a local domain")
    p.add_argument("domain")
    p.set_defaults(handler=_domain_add)
    p = actions.add_parser("del", help="remove a domain that has no users or aliases left")
    p.add_argument("domain")
    p.set_defaults(handler=_domain_del)
    p = actions.add_parser("list", help="list local domains")
    p.set_defaults(handler=_domain_list)


def _domain_add(args: argparse.Namespace, ctx: Context) -> None:
    name = _domain(args.domain)
    ctx.store.add_domain(name)
    ctx.say(f"added domain {name}")


def _domain_del(args: argparse.Namespace, ctx: Context) -> None:
    name = _domain(args.domain)
    if name in ctx.settings.domains:
        where = ctx.config_path if ctx.config_path is not None else "the built-in defaults"
        raise CommandError(f"domain {name} is listed in domains in {where}; remove it there first")
    ctx.store.remove_domain(name)
    ctx.say(f"removed domain {name}")


def _domain_list(args: argparse.Namespace, ctx: Context) -> None:
    for name in ctx.store.list_domains():
        ctx.say(name)


# -- user ----------------------------------------------------------------------------------


def _user_commands(commands: SubParsers) -> None:
    actions = _group(commands, "user", "mailbox accounts")
    p = actions.add_parser("add", help="add a user")
    p.add_argument("address")
    p.add_argument("--password-stdin", action="store_true", help="read the password as one line from stdin")
    p.add_argument("--quota", type=_quota, default=0, metavar="BYTES", help="mailbox size limit (0 = unlimited)")
    p.add_argument("--messages", type=_count, default=0, metavar="N",
                   help="limit on the number of messages (0 = unlimited)")
    p.set_defaults(handler=_user_add)
    p = actions.add_parser("del", help="remove a user (the Maildir is left on disk)")
    p.add_argument("address")
    p.set_defaults(handler=_user_del)
    p = actions.add_parser("passwd", help="change a user's password")
    p.add_argument("address")
    p.add_argument("--password-stdin", action="store_true", help="read the password as one line from stdin")
    p.set_defaults(handler=_user_passwd)
    p = actions.add_parser("quota", help="change a user's mailbox size limit (and message limit)")
    p.add_argument("address")
    p.add_argument("quota", type=_quota, metavar="BYTES", help="0 = unlimited; K, M, G, T units allowed")
    p.add_argument("--messages", type=_count, default=None, metavar="N",
                   help="limit on the number of messages (0 = unlimited; left as it is when not given)")
    p.set_defaults(handler=_user_quota)
    p = actions.add_parser("list", help="list users with their quota")
    p.add_argument("domain", nargs="?")
    p.set_defaults(handler=_user_list)
    p = actions.add_parser("allow-sender", help="let a user send as other addresses or whole domains (@domain), "
                                                "e.g. the account another host relays through")
    p.add_argument("address")
    p.add_argument("senders", nargs="+", metavar="SENDER")
    p.set_defaults(handler=_user_allow_sender)
    p = actions.add_parser("revoke-sender", help="take a sender grant back (all of the user's without SENDER)")
    p.add_argument("address")
    p.add_argument("sender", nargs="?", metavar="SENDER")
    p.set_defaults(handler=_user_revoke_sender)
    p = actions.add_parser("senders", help="list sender grants (of one user, or all)")
    p.add_argument("address", nargs="?")
    p.set_defaults(handler=_user_senders)


def _user_allow_sender(args: argparse.Namespace, ctx: Context) -> None:
    ctx.store.allow_sender(args.address, args.senders)
    _user_senders(args, ctx)


def _user_revoke_sender(args: argparse.Namespace, ctx: Context) -> None:
    ctx.store.revoke_sender(args.address, args.sender)
    ctx.say(f"revoked {args.sender or 'every sender grant'} of {canonical_address(args.address)}")


def _user_senders(args: argparse.Namespace, ctx: Context) -> None:
    for user, sender in ctx.store.list_sender_grants(args.address):
        ctx.say(f"{user}\tmay send as\t{sender}")


def _user_add(args: argparse.Namespace, ctx: Context) -> None:
    address = _address(args.address)
    store = ctx.store
    # refuse before asking for a password; add_user checks again
    if not store.is_local_domain(domain_of(address)):
        domain = domain_of(address)
        raise CommandError(f"unknown domain {domain} (add it first with: mailstack domain add {domain})")
    if store.get_user(address) is not None:
        raise CommandError(f"user {address} already exists")
    store.add_user(address, _read_password(args, ctx), quota=args.quota, max_messages=args.messages)
    ctx.say(f"added user {address}")


def _user_del(args: argparse.Namespace, ctx: Context) -> None:
    address = _address(args.address)
    ctx.store.remove_user(address)
    ctx.say(f"removed user {address}")


def _user_passwd(args: argparse.Namespace, ctx: Context) -> None:
    address = _address(args.address)
    if ctx.store.get_user(address) is None:
        raise CommandError(f"no such user: {address}")
    ctx.store.set_password(address, _read_password(args, ctx))
    ctx.say(f"changed password of {address}")


def _user_quota(args: argparse.Namespace, ctx: Context) -> None:
    address = _address(args.address)
    ctx.store.set_quota(address, args.quota, args.messages)
    messages = "" if args.messages is None else f", messages {_format_quota(args.messages)}"
    ctx.say(f"quota of {address} is {_format_quota(args.quota)}{messages}")


def _user_list(args: argparse.Namespace, ctx: Context) -> None:
    for user in ctx.store.list_users(args.domain):
        ctx.say(f"{user.address}\t{_format_quota(user.quota)}\t{_format_quota(user.max_messages)}")


# -- alias ---------------------------------------------------------------------------------


def _alias_commands(commands: SubParsers) -> None:
    actions = _group(commands, "alias", "aliases, forwarding and catch-alls (@domain)")
    p = actions.add_parser("add", help="deliver mail for SOURCE to each TARGET")
    p.add_argument("source", help="local@domain, or @domain for a catch-all")
    p.add_argument("targets", nargs="+", metavar="TARGET", help="local user, alias or external address")
    p.set_defaults(handler=_alias_add)
    p = actions.add_parser("del", help="remove an alias, or one of its targets")
    p.add_argument("source")
    p.add_argument("target", nargs="?")
    p.set_defaults(handler=_alias_del)
    p = actions.add_parser("list", help="list aliases, one SOURCE TARGET pair a line")
    p.set_defaults(handler=_alias_list)


def _alias_add(args: argparse.Namespace, ctx: Context) -> None:
    ctx.store.add_alias(args.source, args.targets)
    targets = ", ".join(dict.fromkeys(canonical_address(t) for t in args.targets))
    ctx.say(f"added alias {canonical_alias_source(args.source)} -> {targets}")


def _alias_del(args: argparse.Namespace, ctx: Context) -> None:
    ctx.store.remove_alias(args.source, args.target)
    target = f" -> {canonical_address(args.target)}" if args.target is not None else ""
    ctx.say(f"removed alias {canonical_alias_source(args.source)}{target}")


def _alias_list(args: argparse.Namespace, ctx: Context) -> None:
    for source, target in ctx.store.list_aliases():
        ctx.say(f"{source}\t{target}")


# -- sieve -----------------------------------------------------------------------------------


GLOBAL = ":global"  # in place of an address: the global scripts any user's script may include (RFC 6609)


def _sieve_commands(commands: SubParsers) -> None:
    actions = _group(commands, "sieve", "users' Sieve filters (RFC 5228), one active per user; "
                                        f"{GLOBAL} in place of ADDRESS: the global scripts (RFC 6609)")
    optional_name = {"nargs": "?"}
    table: list[tuple[str, str, Callable[..., Any], dict[str, dict[str, Any]]]] = [
        ("put", "store a script (checked first), from FILE or stdin", _sieve_put,
         {"address": {}, "name": {}, "file": {"nargs": "?", "type": Path, "help": "the script; stdin when left out"}}),
        ("get", "print a script", _sieve_get, {"address": {}, "name": {}}),
        ("list", "list a user's scripts, the active one marked", _sieve_list, {"address": {}}),
        ("activate", "make NAME the script that runs; without NAME, none runs", _sieve_activate,
         {"address": {}, "name": optional_name}),
        ("delete", "remove a script that is not active", _sieve_delete, {"address": {}, "name": {}}),
    ]
    for command, help, handler, arguments in table:
        p = actions.add_parser(command, help=help)
        for argument, options in arguments.items():
            p.add_argument(argument, **options)
        p.set_defaults(handler=handler)


def _sieve_put(args: argparse.Namespace, ctx: Context) -> None:
    address = args.address if args.address == GLOBAL else _address(args.address)
    try:
        if args.file is not None:
            text = args.file.read_bytes()
        else:  # bytes, so a script that is not UTF-8 gets a line and column, not a crash
            buffer = getattr(ctx.stdin, "buffer", None)
            text = buffer.read() if buffer is not None else ctx.stdin.read().encode("utf-8", "surrogateescape")
    except OSError as e:
        raise CommandError(f"cannot read {args.file}: {e.strerror}") from None
    try:
        compile_script(text)
    except SieveSyntaxError as e:
        raise CommandError(f"script {args.name!r} is not valid: {e}") from None
    if address == GLOBAL:
        ctx.store.put_global_script(args.name, text.decode("utf-8"))
        ctx.say(f"stored global script {args.name!r}")
        return
    ctx.store.put_script(address, args.name, text.decode("utf-8"))
    ctx.say(f"stored script {args.name!r} of {address}")


def _sieve_get(args: argparse.Namespace, ctx: Context) -> None:
    if args.address == GLOBAL:
        ctx.stdout.write(ctx.store.get_global_script(args.name))
        return
    ctx.stdout.write(ctx.store.get_script(_address(args.address), args.name))


def _sieve_list(args: argparse.Namespace, ctx: Context) -> None:
    if args.address == GLOBAL:
        for name in ctx.store.list_global_scripts():
            ctx.say(name)
        return
    for name, active in ctx.store.list_scripts(_address(args.address)):
        ctx.say(f"{name}\t{'active' if active else ''}".rstrip())


def _sieve_activate(args: argparse.Namespace, ctx: Context) -> None:
    if args.address == GLOBAL:
        raise CommandError("global scripts are included by users' scripts; none is active by itself")
    address = _address(args.address)
    ctx.store.set_active_script(address, args.name)
    ctx.say(f"active script of {address}: {args.name!r}" if args.name else f"no script runs for {address}")


def _sieve_delete(args: argparse.Namespace, ctx: Context) -> None:
    if args.address == GLOBAL:
        ctx.store.delete_global_script(args.name)
        ctx.say(f"removed global script {args.name!r}")
        return
    address = _address(args.address)
    ctx.store.delete_script(address, args.name)
    ctx.say(f"removed script {args.name!r} of {address}")


# -- check-config ----------------------------------------------------------------------------


def _check_config_command(commands: SubParsers) -> None:
    p = commands.add_parser("check-config", help="validate the configuration and print it in full")
    p.set_defaults(handler=_check_config)


def _check_config(args: argparse.Namespace, ctx: Context) -> None:
    from mailstack.tls import certificate_warnings

    settings = ctx.settings
    ctx.stdout.write(config.render(settings))
    names = {settings.hostname: "hostname"}
    if settings.listen.https is not None:  # senders fetch the MTA-STS policy from mta-sts.DOMAIN over HTTPS
        names |= {f"mta-sts.{domain}": "the MTA-STS policy" for domain in settings.domains}
    for warning in certificate_warnings(settings.tls, names):
        print(f"{PROG}: warning: {warning}", file=sys.stderr)
    if settings.relay.ca_file:
        from mailstack.mtasts import trust_root

        try:
            trust_root(Path(settings.relay.ca_file))
        except (OSError, ValueError) as e:
            print(f"{PROG}: warning: relay.ca_file: cannot load {settings.relay.ca_file}: {e}", file=sys.stderr)


# -- queue -------------------------------------------------------------------------------


def _queue_commands(commands: SubParsers) -> None:
    actions = _group(commands, "queue", "the outbound mail queue")
    p = actions.add_parser("list", help="list queued messages with their state")
    p.set_defaults(handler=_queue_list)
    p = actions.add_parser("flush", help="retry now (one message, or all); a running server acts within a second")
    p.add_argument("id", nargs="?", default="")
    p.set_defaults(handler=_queue_flush)
    p = actions.add_parser("delete", help="remove a message from the queue (no bounce unless --bounce)")
    p.add_argument("id")
    p.add_argument("--bounce", action="store_true", help="return it to the sender as undeliverable")
    p.set_defaults(handler=_queue_delete)


def _spool(ctx: Context) -> Spool:
    return Spool(ctx.settings.storage.queue)


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def _queue_list(args: argparse.Namespace, ctx: Context) -> None:
    messages = _spool(ctx).load_all()
    if not messages:
        ctx.say("queue is empty")
        return
    now = time.time()
    for m in messages:
        pending = m.pending()
        next_try = m.next_try()
        when = "now" if next_try <= now else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(next_try))
        ctx.say(f"{m.queue_id}  age {_age(now - m.created)}  attempts {m.attempts()}  next {when}  "
                f"<{m.sender}> -> {', '.join(r.address for r in pending) or '(bounce pending)'}")
        for r in pending:
            if r.last_error:
                ctx.say(f"    {r.address}: {r.last_error}")


def _queue_flush(args: argparse.Namespace, ctx: Context) -> None:
    spool = _spool(ctx)
    if args.id and not spool.exists(args.id):
        raise CommandError(f"no message {args.id} in the queue")
    spool.request("flush", args.id)
    ctx.say(f"flush requested for {args.id or 'all messages'}")


def _queue_delete(args: argparse.Namespace, ctx: Context) -> None:
    spool = _spool(ctx)
    msg = spool.load(args.id)
    if msg is None:
        raise CommandError(f"no message {args.id} in the queue")
    if args.bounce:
        failed = [RecipientState(r.address, FAILED, r.attempts, 0.0, "deleted by the administrator", "5.0.0")
                  for r in msg.pending()]
        spool.record(args.id, failed)
        spool.request("flush", args.id)
        ctx.say(f"{args.id} will be returned to <{msg.sender}>")
        return
    spool.remove(args.id)
    spool.request("delete", args.id)
    ctx.say(f"{args.id} deleted")


# -- dkim and dns-records --------------------------------------------------------------


def _keys(ctx: Context) -> KeyDirectory:
    return KeyDirectory(ctx.settings.storage.dkim)


def _signing_domain(ctx: Context, text: str) -> str:
    """A domain that may have DKIM keys: a local domain, or the server's own host name (bounces)."""
    name = _domain(text)
    if name != ctx.settings.hostname and name not in ctx.store.list_domains():
        raise CommandError(f"{name} is not a local domain (add it with: {PROG} domain add {name})")
    return name


def _dkim_commands(commands: SubParsers) -> None:
    actions = _group(commands, "dkim", "DKIM signing keys")
    p = actions.add_parser("generate", help="make a key for DOMAIN and print its DNS record")
    p.add_argument("domain")
    p.add_argument("--selector", help="DNS label for the key (default: YYYYMM-ALGORITHM)")
    p.add_argument("--algorithm", choices=ALGORITHMS, default="rsa", help="rsa (2048-bit, default) or ed25519")
    p.set_defaults(handler=_dkim_generate)
    p = actions.add_parser("list", help="list keys: domain, selector, algorithm, created, signing or published")
    p.set_defaults(handler=_dkim_list)
    p = actions.add_parser("retire", help="stop using a key; the next key of its algorithm signs")
    p.add_argument("domain")
    p.add_argument("selector")
    p.set_defaults(handler=_dkim_retire)
    p = commands.add_parser("dns-records", help="print the DNS records DOMAIN needs, in zone-file form")
    p.add_argument("domain")
    p.set_defaults(handler=_dns_records)
    p = commands.add_parser("dns-check", help="look DOMAIN's records up in DNS; exit 1 when one is wrong")
    p.add_argument("domain")
    p.set_defaults(handler=_dns_check)


def _dkim_generate(args: argparse.Namespace, ctx: Context) -> None:
    domain = _signing_domain(ctx, args.domain)
    try:
        key = _keys(ctx).generate(domain, args.algorithm, args.selector)
    except DKIMKeyError as e:
        raise CommandError(str(e)) from None
    state = "signs now" if key.signing else "published only: it signs once the older key is retired"
    ctx.say(f"; {domain} {key.selector} ({key.algorithm}): {state}. Publish:")
    ctx.say(f"{key.record_name()}. IN TXT {txt(key.record_text())}")


def _dkim_list(args: argparse.Namespace, ctx: Context) -> None:
    keys = _keys(ctx)
    found = False
    for domain in keys.domains():
        for key in keys.keys(domain):
            found = True
            when = time.strftime("%Y-%m-%d", time.gmtime(key.created))
            ctx.say(f"{domain}  {key.selector}  {key.algorithm}  {when}  {'signing' if key.signing else 'published'}")
    if not found:
        ctx.say("no DKIM keys")


def _dkim_retire(args: argparse.Namespace, ctx: Context) -> None:
    domain = _domain(args.domain)
    try:
        _keys(ctx).retire(domain, args.selector)
    except DKIMKeyError as e:
        raise CommandError(str(e)) from None
    ctx.say(f"retired {args.selector} of {domain}; keep its DNS record a few days for mail still in transit")


def _listeners(ctx: Context) -> set[str]:
    listen = ctx.settings.listen
    return {name for name in ("submission", "submissions", "imap", "imaps", "pop3", "pop3s", "managesieve",
                              "http", "https")
            if getattr(listen, name) is not None}


def _dns_records(args: argparse.Namespace, ctx: Context) -> None:
    domain = _signing_domain(ctx, args.domain)
    from mailstack.clientconfig import ClientSettings, mta_sts_id

    policy = mta_sts_id(ClientSettings.from_settings(ctx.settings))
    ctx.stdout.write(zone_text(domain, ctx.settings.hostname, _keys(ctx).keys(domain), _listeners(ctx), policy))


def _dns_check(args: argparse.Namespace, ctx: Context) -> int:
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred

    from mailstack.dns import MXResolver, make_resolver
    from mailstack.dnscheck import check_domain

    domain = _signing_domain(ctx, args.domain)
    keys, listeners = _keys(ctx).keys(domain), _listeners(ctx)
    outcome: list[object] = []

    def go() -> None:
        resolver = MXResolver(make_resolver(ctx.settings.relay.resolvers, reactor))
        d = Deferred.fromCoroutine(check_domain(resolver, domain, ctx.settings.hostname, keys, listeners))
        d.addBoth(outcome.append)
        d.addBoth(lambda _: reactor.stop())  # type: ignore[attr-defined]

    reactor.callWhenRunning(go)  # type: ignore[attr-defined]
    reactor.run(installSignalHandlers=False)  # type: ignore[attr-defined, call-arg]
    if not outcome or not isinstance(outcome[0], list):
        raise CommandError(f"checking {domain} failed: {outcome[0] if outcome else 'no answer'}")
    findings = outcome[0]
    for finding in findings:
        ctx.say(finding.line())
    wrong = [f for f in findings if f.wrong]
    ctx.say(f"{domain}: {len(wrong)} problem(s)" if wrong else f"{domain}: all required records are in place")
    return 1 if wrong else 0


# -- trace ------------------------------------------------------------------------------


def _trace_command(commands: SubParsers) -> None:
    p = commands.add_parser("trace", help="print one message's path from the JSON log ([log] format = \"json\")")
    p.add_argument("queue_id", nargs="?", help="the queue id (\"250 OK queued as ...\")")
    p.add_argument("--message-id", help="find the message by its Message-ID instead")
    p.add_argument("--log", type=Path, metavar="PATH", help="the JSON log to read (default: log.path; a lab's "
                                                             "is mailstack.jsonl in its directory)")
    p.set_defaults(handler=_trace)


def _trace(args: argparse.Namespace, ctx: Context) -> int:
    from mailstack import trace

    path = args.log if args.log is not None else ctx.settings.log.path
    if not path.exists():
        if args.log is not None:
            raise CommandError(f"--log: no JSON log at {path}")
        hint = "" if ctx.settings.log.format == "json" else ' (set [log] format = "json" to write it)'
        raise CommandError(f"log.path: no JSON log at {path}{hint}")
    if (args.queue_id is None) == (args.message_id is None):
        raise CommandError("give a queue id or --message-id, not both")
    queue_ids = [args.queue_id] if args.queue_id else trace.queue_ids_of(path, args.message_id)
    if not queue_ids:
        raise CommandError(f"no message with Message-ID {args.message_id} in {path}")
    found_any = False
    for queue_id in queue_ids:
        found = trace.trace(path, queue_id)
        if not found.events:
            ctx.say(f"{queue_id}: nothing about it in {path}")
            continue
        found_any = True
        ctx.say(f"{queue_id}:")
        for line in trace.lines(found):
            ctx.say(f"  {line}")
    return 0 if found_any else 1


_LAB_HELP = "run several mail domains on this machine, with their own DNS (Ctrl-C stops)"


def _lab_commands(commands: SubParsers) -> None:
    # `lab DOMAIN...` and `lab fail ACTION ...` share the name: the words after it are parsed in _lab
    p = commands.add_parser("lab", help=_LAB_HELP, description=_LAB_HELP, add_help=False)
    p.add_argument("words", nargs=argparse.REMAINDER)
    p.set_defaults(handler=_lab, needs_config=False)


def _lab_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"{PROG} lab", description=_LAB_HELP,
                                epilog=f"{PROG} lab fail --help: failure rules of a running lab")
    p.add_argument("domains", nargs="*", metavar="DOMAIN", help="the lab's domains (or --config LAB.TOML)")
    p.add_argument("--dir", type=Path, help="where the lab keeps its files (default: ./mailstack-lab)")
    p.add_argument("--users", type=_user_count, default=2, metavar="N", help="users made in each domain (default 2)")
    p.add_argument("--ports", choices=("standard", "high"),
                   help="25, 587, ... (the default for root) or 2525, 5870, ... (otherwise)")
    p.add_argument("--dns", metavar="HOST:PORT", help="the lab's DNS server (default 127.0.0.10, port 53 or 5353)")
    p.add_argument("--no-capture", action="store_true", help="send mail for other domains out instead of capturing it")
    p.add_argument("--config", "--lab-config", type=Path, metavar="LAB.TOML", dest="lab_config",
                   help="domains, users and failure rules in one file (docs/lab.md)")
    return p


def _lab_fail_parser() -> argparse.ArgumentParser:
    fail = argparse.ArgumentParser(prog=f"{PROG} lab fail", description="failure rules of a running lab's domain")
    fail.add_argument("--dir", type=Path, help="the lab's directory (default: ./mailstack-lab)")
    actions = fail.add_subparsers(dest="fail_action", metavar="ACTION", required=True)
    q = actions.add_parser("add", help="add a rule (mailstack.faults says what each action does)")
    q.add_argument("domain", help="the lab domain whose SMTP listeners misbehave")
    q.add_argument("--action", required=True, choices=("reply", "disconnect", "delay", "greylist", "full"))
    q.add_argument("--stage", choices=("mail", "rcpt", "data"))
    q.add_argument("--recipient", help="recipient pattern (shell-style: bob@*, *@b.test)")
    q.add_argument("--sender", help="sender pattern")
    q.add_argument("--to-domain", dest="match_domain", help="recipient domain pattern")
    q.add_argument("--role", choices=("smtp", "submission", "submissions"))
    q.add_argument("--code", type=int)
    q.add_argument("--status", help="enhanced status code, e.g. 4.3.0")
    q.add_argument("--text")
    q.add_argument("--seconds", type=float)
    q.add_argument("--times", type=int, help="apply to the first N matches only")
    q.add_argument("--permanent", action="store_true", help="a full mailbox for good (552 5.2.2)")
    q = actions.add_parser("list", help="the rules in force")
    q.add_argument("domain")
    q = actions.add_parser("del", help="remove a rule by its id")
    q.add_argument("domain")
    q.add_argument("id")
    q = actions.add_parser("clear", help="remove every rule")
    q.add_argument("domain")
    for sub in actions.choices.values():
        sub.add_argument("--dir", type=Path, default=argparse.SUPPRESS, help="the lab's directory")
    return fail


def _lab(args: argparse.Namespace, ctx: Context) -> int:
    from mailstack import lab

    words = list(args.words)
    fail = bool(words) and words[0] == "fail"
    try:
        args = (_lab_fail_parser() if fail else _lab_parser()).parse_args(words[1:] if fail else words)
    except SystemExit as e:  # usage error (2) or --help (0)
        return e.code if isinstance(e.code, int) else 2
    directory = args.dir if args.dir is not None else Path("mailstack-lab")
    if fail:
        return _lab_fail(args, ctx, directory)
    if args.lab_config is not None:
        if args.domains:
            raise CommandError("give DOMAIN... or --config LAB.TOML, not both")
        spec = lab.load_spec(args.lab_config, directory=args.dir)
    else:
        spec = lab.make_spec(args.domains, directory=directory, users=args.users, ports=args.ports, dns=args.dns,
                             capture=not args.no_capture)
    return lab.run(spec, ctx.stdout)


def _lab_fail(args: argparse.Namespace, ctx: Context, directory: Path) -> int:
    import json
    import urllib.error
    import urllib.request

    from mailstack import lab

    state = lab.read_state(directory)
    domain = state["domains"].get(args.domain.lower())
    if domain is None:
        raise CommandError(f"{args.domain} is not one of the lab's domains ({', '.join(state['domains'])})")
    url = f"{domain['http']}/api/v1/faults"
    body = None
    method = {"add": "POST", "list": "GET", "del": "DELETE", "clear": "DELETE"}[args.fail_action]
    if args.fail_action == "del":
        url += f"/{args.id}"
    if args.fail_action == "add":
        rule: dict[str, Any] = {"action": args.action}
        for key, given in (("stage", args.stage), ("recipient", args.recipient), ("sender", args.sender),
                           ("domain", args.match_domain), ("role", args.role), ("code", args.code),
                           ("status", args.status), ("text", args.text), ("seconds", args.seconds),
                           ("times", args.times)):
            if given is not None:
                rule[key] = given
        if args.permanent:
            rule["permanent"] = True
        body = json.dumps(rule).encode()
    request = urllib.request.Request(url, data=body, method=method, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            answer = response.read()
    except urllib.error.HTTPError as e:
        try:
            message = json.loads(e.read())["error"]
        except Exception:
            message = e.reason
        raise CommandError(f"{args.domain}: {message}") from None
    except OSError as e:
        raise CommandError(f"{args.domain}: cannot reach the lab at {domain['http']}: {e}") from None
    value: Any = json.loads(answer) if answer else {}
    if args.fail_action == "add":
        ctx.say(f"rule {value['id']} added to {args.domain}")
    elif args.fail_action == "list":
        from mailstack.faults import describe, parse_rule

        for raw in value["rules"]:
            hits = raw.pop("hits")
            id = raw.pop("id")
            ctx.say(f"{id}: {describe(parse_rule(raw))} (applied {hits} time(s))")
    elif args.fail_action == "clear":
        ctx.say(f"{value['deleted']} rule(s) removed from {args.domain}")
    return 0


COMMAND_GROUPS: dict[str, Callable[[SubParsers], None]] = {
    "domain": _domain_commands,
    "user": _user_commands,
    "alias": _alias_commands,
    "sieve": _sieve_commands,
    "queue": _queue_commands,
    "check-config": _check_config_command,
    "dkim": _dkim_commands,
    "trace": _trace_command,
    "lab": _lab_commands,
}
"""Command name -> function adding its sub-parser(s); each sets ``handler``."""


if __name__ == "__main__":
    sys.exit(main())
