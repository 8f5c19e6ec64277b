"""Live updates: the relay that moves the core's feed into the channel layer, the
authenticated channel layer itself, and the websocket consumers and routes.

May import: ``coordination.core``, ``coordination.dashboard`` (its partials, for pushes),
``coordination.foundation``, ``coordination.models``.
"""
