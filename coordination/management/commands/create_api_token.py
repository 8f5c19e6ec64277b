"""Issue a JSON API token for a user; the token is printed once and only its digest is kept."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from coordination.models import ApiToken


class Command(BaseCommand):
    help = "Create a bearer token for the JSON API (/api/v1/) for an existing user."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--name", default="api", help="what the token is for")

    def handle(self, *args, username: str, name: str, **options):
        try:
            user = get_user_model().objects.get_by_natural_key(username)
        except get_user_model().DoesNotExist:
            raise CommandError(f"no user named {username!r}") from None
        if not user.is_active:
            raise CommandError(f"user {username!r} is inactive")
        _, token = ApiToken.issue(user, name[:100])
        self.stdout.write(token)
        self.stderr.write(
            "Send it as 'Authorization: Bearer <token>'. It is not stored and cannot be shown again."
        )
