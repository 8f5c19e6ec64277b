"""The dashboard's pages: views, the supervisor's forms and buttons, and the context and
partials that both a page load and a live push render, so a row looks the same either way.

May import: ``coordination.core``, ``coordination.supervision``, ``coordination.foundation``,
``coordination.realtime`` (to announce changes), ``coordination.models``.
"""
