"""The outbound queue: durable store-and-forward that never loses mail.

How a message moves (maddy's queue and Postfix's qmgr are the models):

1. Accept. The SMTP router writes a message with any remote recipient once to
   the spool (``spool.py``): envelope + message to ``tmp/``, fsync, rename into
   ``msg/``, fsync the directory, all before the 250. Local recipients of the
   same message are delivered to their Maildirs in the same step; if that
   fails, the spool copy is withdrawn and the client gets the error.
2. Attempt (``runner.py``). Pending recipients are grouped by domain; local
   ones go to Maildir, remote ones to ``relay.py`` (MX or smarthost, STARTTLS
   when offered), within ``relay.connections`` and ``relay.connections_per_domain``.
3. Record. Each recipient's outcome is appended to ``state/<id>`` and fsynced
   before anything else happens: delivered (2xx) is final and never repeated;
   a temporary failure (4xx, connection or DNS trouble) is retried after
   ``relay.retry[attempt]`` (then every last interval) until ``relay.max_age``;
   a permanent failure (5xx, no such domain, null MX, expiry, a mail loop)
   is failed.
4. Bounce. Failed recipients are reported in one RFC 3464 DSN (``dsn.py``) to
   the envelope sender, itself queued durably from the null sender; a message
   from the null sender (a bounce) is never bounced. Then the failures are
   marked as reported. After ``relay.delay_warning`` the sender is told once that
   the remaining recipients are still being retried (``Action: delayed``).
5. Remove. When every recipient is delivered or reported, the state log and
   the message are removed.

After a crash, start-up removes uncommitted ``tmp/`` files and resumes every
message in ``msg/`` with its recorded state. ``mailstack queue list|flush|delete``
read the spool directly and leave requests in ``ctl/`` that a running server
picks up within a second.
"""

from mailstack.queue.spool import QueuedMessage, RecipientState, Spool

__all__ = ["QueuedMessage", "RecipientState", "Spool"]
