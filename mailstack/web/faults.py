"""``/api/v1/faults``: the failure-injection rules (:mod:`mailstack.faults`) at run time.

- ``GET /api/v1/faults``: the rules in force, in order, with how often each applied;
- ``POST /api/v1/faults`` with a rule as JSON (``{"action": "reply", "code": 451,
  "recipient": "bob@b.test"}``): 201 and the rule with its ``id``; a bad rule is
  a 400 naming the field;
- ``DELETE /api/v1/faults/{id}`` and ``DELETE /api/v1/faults`` (every rule).
"""

from __future__ import annotations

from typing import Any

from twisted.web.resource import IResource
from twisted.web.server import Request

from mailstack.faults import FaultRules, RuleError, parse_rule
from mailstack.web import ErrorPage, HTTPError, JSONResource, read_json, send_error, send_json

__all__ = ["FaultsResource"]


class FaultsResource(JSONResource):
    def __init__(self, rules: FaultRules) -> None:
        super().__init__()
        self.rules = rules

    def getChild(self, path: bytes, request: Request) -> IResource:
        if path == b"":
            return self
        return OneRule(self.rules, path.decode("ascii", "replace"))

    def render_GET(self, request: Request) -> bytes:
        send_json(request, {"rules": self.rules.as_json()})
        return b""

    def render_POST(self, request: Request) -> bytes:
        try:
            raw = read_json(request)
            rule = self.rules.add(parse_rule(raw))
        except RuleError as e:
            return send_error(request, 400, f"rule field {e}")
        except HTTPError as e:
            return send_error(request, e.status, e.message)
        send_json(request, rule.as_json(), 201)
        return b""

    def render_DELETE(self, request: Request) -> bytes:
        send_json(request, {"deleted": self.rules.clear()})
        return b""


class OneRule(JSONResource):
    isLeaf = True

    def __init__(self, rules: FaultRules, id: str) -> None:
        super().__init__()
        self.rules = rules
        self.id = id

    def render_GET(self, request: Request) -> Any:
        for rule in self.rules.rules:
            if rule.id == self.id:
                send_json(request, rule.as_json())
                return b""
        return ErrorPage(404, f"no fault rule {self.id!r}").render(request)

    def render_DELETE(self, request: Request) -> Any:
        if not self.rules.remove(self.id):
            return ErrorPage(404, f"no fault rule {self.id!r}").render(request)
        request.setResponseCode(204)
        return b""
