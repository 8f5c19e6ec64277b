"""coordinator: agents coordinate over Redis; supervisors watch and steer them from a browser.

The package root re-exports the coordination core (no Django needed); the Django app's
modules (views, consumers, admin) live beside it and load only under Django.
"""

from coordination.core import *  # noqa: F403
from coordination.core import __all__  # noqa: F401
