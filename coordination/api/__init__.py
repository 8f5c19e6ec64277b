"""The JSON API, /api/v1/ (django-ninja): ``v1`` mounts the routes, ``approvals`` adds the
approvals router. Views only parse and call ``coordination.supervision``.

May import: ``coordination.core``, ``coordination.supervision``, ``coordination.dashboard``
(display helpers), ``coordination.foundation``, ``coordination.models``.
"""
