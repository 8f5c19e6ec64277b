"""``manage.py prune_audit --older-than DAYS``: delete old audit entries, saying how many."""

from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from coordination.models import AuditEntry


class Command(BaseCommand):
    help = "Delete audit entries older than the given number of days (nothing is pruned silently)."

    def add_arguments(self, parser):
        parser.add_argument("--older-than", type=int, required=True, metavar="DAYS")
        parser.add_argument("--dry-run", action="store_true", help="only count what would go")

    def handle(self, *args, older_than: int, dry_run: bool, **options):
        if older_than < 1:
            raise CommandError("--older-than must be at least 1 day")
        cutoff = timezone.now() - timedelta(days=older_than)
        old = AuditEntry.objects.filter(created__lt=cutoff)
        count = old.count()
        if dry_run:
            self.stdout.write(
                f"{count} audit entries are older than {cutoff:%Y-%m-%d %H:%M} UTC (dry run: kept)."
            )
            return
        old.delete()
        self.stdout.write(f"Deleted {count} audit entries older than {cutoff:%Y-%m-%d %H:%M} UTC.")
