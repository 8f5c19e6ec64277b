"""``manage.py redis_acl``: print the ``ACL SETUSER`` lines that give agents Redis credentials
that can coordinate and nothing else, and the dashboard a user of its own (see
coordination/foundation/redis_acl.py and docs/security.md). Pipe the output into ``redis-cli``."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from coordination.foundation import redis_acl


class Command(BaseCommand):
    help = (
        "Print ACL SETUSER lines for an agents' user and a dashboard user of this namespace; "
        "passwords are read from (or created in) 0600 files and appear only as SHA-256 hashes."
    )

    def add_arguments(self, parser):
        parser.add_argument("--agent-user", default=redis_acl.DEFAULT_AGENT_USER)
        parser.add_argument("--dashboard-user", default=redis_acl.DEFAULT_DASHBOARD_USER)
        parser.add_argument(
            "--namespace",
            default=settings.COORDINATION_NAMESPACE,
            help="the key namespace (default: COORDINATION_NAMESPACE)",
        )
        parser.add_argument(
            "--redis-version",
            default="7.2",
            help="the server's version, for the one rule that depends on it (Redis 7.0 and 7.1 "
            "do not know CLIENT SETINFO); default 7.2",
        )
        parser.add_argument(
            "--password-dir",
            default=str(Path(settings.VAR_DIR) / "redis-acl"),
            help="where <user>.password files are read, or created with a random password "
            "(mode 0600) when missing (default: var/redis-acl)",
        )

    def handle(
        self, *args, agent_user, dashboard_user, namespace, redis_version, password_dir, **options
    ):
        directory = Path(password_dir)
        try:
            version = redis_acl.parse_version(redis_version)
            lines = [
                redis_acl.command_line(
                    redis_acl.setuser(user, _password(directory, user), rules(namespace, version))
                )
                for user, rules in (
                    (agent_user, redis_acl.agent_rules),
                    (dashboard_user, redis_acl.dashboard_rules),
                )
            ]
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        for line in lines:
            self.stdout.write(line)
        self.stderr.write(
            f"Passwords: {directory / (agent_user + '.password')} and "
            f"{directory / (dashboard_user + '.password')}.\n"
            f"Agents connect with redis://{agent_user}:<password>@host:port/0, the dashboard's "
            f"REDIS_URL with redis://{dashboard_user}:<password>@host:port/0.\n"
            "Also give the 'default' user a password (or turn it off): an open default user "
            "lets anyone in with every right."
        )


def _password(directory: Path, user: str) -> str:
    path = directory / f"{user}.password"
    if path.exists():
        password = path.read_text().strip()
        if not password:
            raise ValueError(f"{path} is empty")
        return password
    password = redis_acl.new_password()
    redis_acl.write_secret(path, password + "\n")
    return password
