"""IMAP4rev1 server (RFC 3501) over Maildir++, with IDLE, UIDPLUS, MOVE, NAMESPACE,
SPECIAL-USE, ENABLE, LITERAL+, ID, UNSELECT, CHILDREN and SASL-IR.

Layers: :mod:`.parse` (bytes -> tokens, pure), :mod:`.session` (+ :mod:`.mailboxes`,
:mod:`.selected`, :mod:`.view`: states, commands, responses as values),
:mod:`.protocol` (framing, literals, TLS, IDLE, timeouts), :mod:`.fetch`,
:mod:`.search`, :mod:`.mime` (message structure). Storage is
:mod:`mailstack.maildir.folders` and :mod:`mailstack.maildir.mailbox`.
"""
