"""The audit log: one row per supervisor action or admin state edit."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class AuditEntry(models.Model):
    class Action(models.TextChoices):
        TAKE_OVER = "take_over", "Take over"
        HAND_BACK = "hand_back", "Hand back"
        RELEASE = "release", "Release claim"
        REASSIGN = "reassign", "Reassign claim"
        REPLY = "reply", "Reply"
        NOTE = "note", "Note"
        CLOSE = "close", "Close session"
        STATE_EDIT = "state_edit", "Edit state"
        APPROVE = "approve", "Approve tool call"
        REJECT = "reject", "Reject tool call"

    created = models.DateTimeField(auto_now_add=True, db_index=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    actor_name = models.CharField(max_length=150, help_text="Kept if the user is deleted.")
    action = models.CharField(max_length=32, choices=Action.choices)
    session_id = models.CharField(max_length=256, db_index=True)
    outcome = models.CharField(max_length=16, default="done")  # done | refused
    detail = models.TextField(blank=True)
    before = models.JSONField(null=True, blank=True)
    after = models.JSONField(null=True, blank=True)
    client_address = models.GenericIPAddressField(null=True, blank=True)

    class Meta:
        ordering = ["-created", "-id"]
        verbose_name_plural = "audit entries"
        permissions = [("intervene", "Can act on sessions (take over, reassign, close, ...)")]
        indexes = [models.Index(fields=["session_id", "-created"])]

    def __str__(self) -> str:
        return f"{self.created:%Y-%m-%d %H:%M:%S} {self.actor_name} {self.action} {self.session_id}"


class ApiToken(models.Model):
    """A bearer token for the JSON API. Only a SHA-256 digest is stored; the token itself is
    shown once, when it is created (``manage.py create_api_token``)."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens"
    )
    name = models.CharField(max_length=100, help_text="What the token is for.")
    prefix = models.CharField(max_length=12, help_text="The token's first characters.")
    digest = models.CharField(max_length=64, unique=True)
    created = models.DateTimeField(auto_now_add=True)
    last_used = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created"]
        verbose_name = "API token"

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.name}, {self.user})"

    @staticmethod
    def hash(token: str) -> str:
        import hashlib

        return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()

    @classmethod
    def issue(cls, user, name: str) -> tuple[ApiToken, str]:
        """A new token for ``user``; returns the row and the token (not stored anywhere)."""
        import secrets

        token = "coord_" + secrets.token_urlsafe(32)
        row = cls.objects.create(user=user, name=name, prefix=token[:12], digest=cls.hash(token))
        return row, token


class SavedFilter(models.Model):
    """A named sessions-list filter, one user's own (``query`` is the list's query string)."""

    MAX_PER_USER = 50

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="saved_filters"
    )
    name = models.CharField(max_length=60)
    query = models.CharField(max_length=600, help_text="status, agent and q, URL-encoded.")
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["user", "name"], name="saved_filter_name_per_user")
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.user})"
