"""``manage.py simulate_agents``: the demo support desk, live, against this dashboard's Redis."""

from __future__ import annotations

import asyncio

from django.conf import settings
from django.core.management.base import BaseCommand

from coordination.core import RedisUnavailable, check_connection


class Command(BaseCommand):
    help = "Run demo agents (triage and specialists) over many sessions; obeys supervisors."

    def add_arguments(self, parser):
        parser.add_argument(
            "--sessions", type=int, default=8, help="sessions worked on at once (default 8)"
        )
        parser.add_argument(
            "--rate", type=float, default=12.0, help="new sessions per minute (default 12)"
        )
        parser.add_argument(
            "--duration", type=float, default=0.0, help="seconds to run; 0 = until Ctrl-C"
        )
        parser.add_argument(
            "--pace", type=float, default=1.5, help="seconds between an agent's turns"
        )
        parser.add_argument("--seed", type=int, default=None)

    def handle(self, *args, sessions, rate, duration, pace, seed, **options):
        from coordination.devtools.demo import Fleet, FleetSettings

        try:
            asyncio.run(check_connection(settings.REDIS_URL))
        except RedisUnavailable as exc:
            self.stderr.write(f"error: {exc}")
            raise SystemExit(2) from None
        fleet = Fleet(
            settings.REDIS_URL,
            settings.COORDINATION_NAMESPACE,
            FleetSettings(sessions=sessions, rate=rate, duration=duration, pace=pace, seed=seed),
        )
        self.stdout.write(
            f"Demo agents running: {sessions} sessions at a time, {rate:g} new per minute."
        )
        try:
            asyncio.run(fleet.run())
        except KeyboardInterrupt:
            pass
