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
