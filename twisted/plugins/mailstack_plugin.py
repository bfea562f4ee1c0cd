"""twistd plugin: ``twistd -n mailstack [--config PATH]``."""

from twisted.application.service import ServiceMaker

mailstack = ServiceMaker(
    "mailstack",
    "mailstack.tap",
    "A complete mail system: SMTP, submission, queue, Maildir, POP3 and IMAP",
    "mailstack",
)
