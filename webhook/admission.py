"""The two webhooks: how a decision is answered by /validate (deny) and by /mutate (restore)."""

from __future__ import annotations

from typing import Final

from webhook.config import Config
from webhook.decision import Decision, decide
from webhook.review import Review

WEBHOOKS: Final[tuple[str, ...]] = ("validate", "mutate")


def outcome(webhook: str, decision: Decision) -> str:
    """allowed, denied or restored: the word logs and metrics use."""
    if not decision.violation:
        return "allowed"
    return "denied" if webhook == "validate" else "restored"


def respond(webhook: str, review: Review, config: Config) -> tuple[dict, Decision]:
    decision = decide(review.request, config)
    if not decision.violation:
        return review.allowed(), decision
    fields = ",".join(decision.fields)
    if webhook == "validate":
        return review.denied(decision.message, {"violation": fields}), decision
    return review.patched(decision.patch, decision.warning, {"restored": fields}), decision
