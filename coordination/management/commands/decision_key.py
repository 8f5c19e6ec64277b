"""Print the public key agents use to check that a person made a decision.

    .venv/bin/python manage.py decision_key
    export COORDINATION_DECISION_KEY=<that key>   # in the agents' environment

It is derived from SECRET_KEY and the namespace: change either and agents need the new key.
"""

from django.core.management.base import BaseCommand

from coordination.foundation.core_clients import decision_signer


class Command(BaseCommand):
    help = "Print COORDINATION_DECISION_KEY: the public key agents verify decisions with."

    def handle(self, *args, **options):
        self.stdout.write(decision_signer().public_key)
