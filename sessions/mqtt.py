"""The MQTT session manager: ``MQTTSessionManager`` over the ``mqtt`` kind
(:mod:`sessions.actors.mqtt`, paho-mqtt; the ``mqtt`` extra).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from sessions._registry import SessionManager

__all__ = ["MQTTSessionManager"]

#: The kind as a config names it.
MQTT_KIND = "mqtt"


class MQTTSessionManager(SessionManager):
    """``with MQTTSessionManager(host="broker.local") as mqtt:`` -- one supervised MQTT
    client (resource name ``"mqtt"`` unless ``name`` is given); ``with``/``async with``
    yields its handle::

        with MQTTSessionManager(host="broker.local", client_id="line-3") as mqtt:
            mqtt.subscribe("plant/+/temp", print, qos=1).result()
            mqtt.publish("plant/line-3/temp", "21.5", qos=1).result()

    ``options`` are the kind's keys (``host``, ``port``, ``client_id``,
    ``clean_session``, ``username``, ``password``, ``tls``, ``will``, ``queue_size``,
    ...; see :class:`sessions.actors.mqtt.MQTTOptions`) and the supervision keys
    (``call_timeout``, ``restart``, ...); ``supervisor`` sets the root supervisor's policy.
    """

    kind: ClassVar[str] = MQTT_KIND

    def __init__(self, *, name: str | None = None,
                 supervisor: Mapping[str, Any] | None = None, **options: Any) -> None:
        super().__init__(None, name=name or "mqtt", supervisor=supervisor, **options)
