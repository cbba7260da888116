"""The seed's Kafka session manager: ``KafkaSessionManager`` over the ``kafka_producer``
and ``kafka_consumer`` kinds (:mod:`sessions.actors.kafka`, kafka-python; the ``kafka``
extra).

Importing this module needs no driver: kafka-python is imported when the resource starts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sessions._registry import SessionManager

__all__ = ["KafkaSessionManager"]


class KafkaSessionManager(SessionManager):
    """``KafkaSessionManager(bootstrap_servers=..., **options)``: a supervised producer;
    with ``group_id=...`` a supervised consumer instead. ``with``/``async with`` yields
    the handle."""

    kind = "kafka_producer"

    def __init__(
        self,
        bootstrap_servers: str | list[str],
        *,
        group_id: str | None = None,
        name: str | None = None,
        supervisor: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> None:
        if group_id is not None:
            options["group_id"] = group_id
        super().__init__(
            "kafka_consumer" if group_id is not None else "kafka_producer",
            name=name,
            supervisor=supervisor,
            bootstrap_servers=bootstrap_servers,
            **options,
        )
