"""Kafka resources: ``kafka_producer`` and ``kafka_consumer`` (kafka-python 3.x).

A ``kafka_producer`` owns one ``KafkaProducer``. ``send`` hands the record to the driver
and returns a ``Deferred``: the actor thread moves on at once and the caller's future
resolves on the driver's thread when the broker acknowledges, so the records of all
callers are in flight together (the driver batches and pipelines them). The poll hook
watches the records in flight: no acknowledgement within ``ack_timeout``, or no broker
connection for ``fault_after``, is a fault.

A ``kafka_consumer`` owns one ``KafkaConsumer`` (not thread-safe: the actor is its only
user). It polls from the runtime's ``poll()`` hook between calls. With a handler
(``handler = "module:function"`` or ``consume(callback)``) it runs the handler per
record and commits after the handler returned (at-least-once); without one, callers
pull records with ``fetch()`` and ``commit()`` themselves ("manual mode"; the issue
calls it ``poll``, but ``poll`` is the runtime's hook name).

What is a fault (the resource is broken: the caller gets ``ResourceFault`` with the
driver error as ``__cause__``, outcome unknown, and the actor restarts) and what goes to
the caller (the actor keeps running):

=========================================================  ================================
error                                                      outcome
=========================================================  ================================
``KafkaConnectionError``, ``NodeNotReadyError``            fault
no broker connection for ``fault_after`` seconds while     fault (``KafkaConnectionError``)
acks are awaited or a consumer has a subscription
(a dead broker raises nothing by itself)
no acknowledgement within ``ack_timeout`` (the driver      fault (``AckTimeout``)
retries inside one producer instance for 2 minutes)
``KafkaTimeoutError`` with no live broker connection       fault
``KafkaTimeoutError`` while connected (a topic's           caller
metadata not found within ``max_block_ms``)
any error once the client is closed                        fault
``UnknownProducerIdError``, ``OutOfOrderSequenceNumber``,  fault (a new producer gets a
``InvalidProducerEpoch``, ``ProducerFenced``, any error    new producer id)
while the producer's idempotence state is fatal
a record in flight when its producer broke, was aborted    fault: why it broke
or closed (its ack will never come)                        (``AckTimeout``, ...), else
                                                           ``ProducerClosed``
``KafkaAborted`` (``abort()``: the runtime gave up on a    fault
stalled call and tore the connection down)
non-retriable record errors: ``MessageSizeTooLarge``,      caller
``InvalidTopic``, authorization, ...
``CommitFailedError`` (the group rebalanced)               caller (records come again)
``TypeError``/``ValueError`` (value, key, topic, header),  caller
``RecordDecodeError``
a handler exception                                        ``on_handler_error`` applies
=========================================================  ================================

A broker that cannot be reached at start is a failed start: the driver's bootstrap is
bounded by ``bootstrap_timeout_ms`` (default 5 s here instead of kafka-python's 30 s)
and retried by the supervisor with backoff.

Bounded waits (issue 9, "hangs are faults"). Every wait on the actor thread has a
finite default below ``call_timeout`` (5 s), so a frozen or black-holed broker makes the
kind report the fault itself, with its cause, before the runtime's stall watchdog
(``stall_timeout``, default twice ``call_timeout``) has to: ``connect()`` by
``bootstrap_timeout_ms`` (5 s; passing ``api_version`` skips that bootstrap), a
``send()`` waiting for a topic's metadata by ``max_block_ms`` (``ack_timeout``, 4 s;
kafka-python: 60 s), ``flush()`` by ``ack_timeout``, a consumer poll by
``rebalance_poll_timeout`` (2 s), ``fetch()`` by its own finite ``timeout``, commits,
``committed()`` and dead-letter acks by ``commit_timeout`` (4 s), a disconnect by
``close_timeout`` (2 s). The driver's other timeouts (``request_timeout_ms`` 30 s,
``delivery_timeout_ms`` 2 min, ``connections_max_idle_ms``, ``session_timeout_ms``,
``max_poll_interval_ms``) run on the driver's own thread, not the actor's; records in
flight are watched by ``ack_timeout`` instead. None of our keys accepts ``inf``;
``bootstrap_timeout_ms``/``max_block_ms`` set to None or inf (kafka-python: "forever")
are reported by ``sessions check`` (``Options.unbounded_waits()``).

``abort(resource)`` (the runtime gave up on a stalled incarnation) works from another
thread without blocking: it shuts the client's broker sockets down, stops the
producer's sender thread (every record in flight fails) or the consumer's IO thread,
and fails every caller waiting on the driver (a ``send()`` waiting for metadata, a
``flush()``, a consumer ``poll()``/``commit()``/``committed()``) with
``KafkaAborted``. The disconnect that follows closes the aborted client without
flushing or leaving the group.

``bootstrap_servers = "memory://NAME"`` swaps kafka-python's client objects for the
in-process stand-ins of :mod:`sessions.actors.kafka.memory` (for tests): both kinds run
unchanged on them, with the same fault rules.
"""

from sessions.actors.kafka._common import AckTimeout, KafkaAborted
from sessions.actors.kafka.consumer import (
    ConsumerOptions,
    KafkaConsumerActor,
    Record,
    RecordDecodeError,
)
from sessions.actors.kafka.producer import (
    KafkaProducerActor,
    ProducerClosed,
    ProducerOptions,
    SendResult,
)

__all__ = [
    "AckTimeout",
    "ConsumerOptions",
    "KafkaAborted",
    "KafkaConsumerActor",
    "KafkaProducerActor",
    "ProducerClosed",
    "ProducerOptions",
    "Record",
    "RecordDecodeError",
    "SendResult",
]
