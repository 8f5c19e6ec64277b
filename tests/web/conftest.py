"""Django tests: settings point at the test Redis and this test's key namespace."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group, User


@pytest.fixture(autouse=True)
def coordination_settings(settings, redis_url, namespace):
    settings.REDIS_URL = redis_url
    settings.COORDINATION_NAMESPACE = namespace
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": redis_url,
            "KEY_PREFIX": f"{namespace}:cache",
        }
    }
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": [redis_url], "prefix": f"{namespace}:asgi"},
        }
    }
    return settings


@pytest.fixture
def supervisor(db):
    user = User.objects.create_user("sup", password="pw-sup-123456")
    group, _ = Group.objects.get_or_create(name="supervisors")
    user.groups.add(group)
    return user


@pytest.fixture
def viewer(db):
    user = User.objects.create_user("view", password="pw-view-123456")
    group, _ = Group.objects.get_or_create(name="viewers")
    user.groups.add(group)
    return user
