"""The bottom layer: the resource contract and the runtime that serves it.

``contract`` is what a kind implements (:class:`ResourceActor`, ``Deferred``,
``IGNORE``, the ``ResourceContext`` the runtime hands each actor); ``runner`` is the
actor thread that serves one incarnation (the Mailbox outlives it); ``futures``,
``stats``, ``breaker``, ``abort`` and ``fanout`` are the shared mechanisms; ``kinds``
finds a kind by name. Nothing here imports the supervision tree, the system, a kind or
a tool (``lint-imports`` checks it).
"""
