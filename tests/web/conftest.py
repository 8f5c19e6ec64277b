"""Django tests: settings point at the test Redis and this test's key namespace."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group, Permission, User

from coordinator_site.settings import redis_services

from ..conftest import redis_url_of_kind


@pytest.fixture(autouse=True)
def coordination_settings(settings, redis_url, namespace):
    settings.REDIS_URL = redis_url
    settings.COORDINATION_NAMESPACE = namespace
    settings.CACHES, settings.CHANNEL_LAYERS = redis_services(redis_url, namespace)
    return settings


@pytest.fixture
def supervisor(db):
    user = User.objects.create_user("sup", password="pw-sup-123456")
    group, _ = Group.objects.get_or_create(name="supervisors")
    # as migration 0002 grants it (transactional tests flush migration data)
    group.permissions.add(Permission.objects.get(codename="intervene"))
    user.groups.add(group)
    return user


@pytest.fixture
def viewer(db):
    user = User.objects.create_user("view", password="pw-view-123456")
    group, _ = Group.objects.get_or_create(name="viewers")
    user.groups.add(group)
    return user


@pytest.fixture
def staff(client, django_user_model):
    """A client signed in as a staff member of the supervisors (the admin's state editor)."""
    user = django_user_model.objects.create_user("boss", password="pw-boss-123456", is_staff=True)
    user.groups.add(Group.objects.get(name="supervisors"))
    client.force_login(user)
    return client


# Every dashboard test runs on one Redis server and on a Redis Cluster.
redis_url = pytest.fixture(params=["single", "cluster"])(redis_url_of_kind)
