"""The ``traitlens serve`` dashboard: read-only JSON endpoints (:mod:`.data`) behind a Starlette
app (:mod:`.app`), and static pages drawing their plots as SVG (``static/``)."""
