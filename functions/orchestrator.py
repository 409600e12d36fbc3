"""Service Bus message -> engine (one step of one run forward, then let go).

The message is completed automatically when the function returns (host.json:
``extensions.serviceBus.autoCompleteMessages: true``). Raising abandons it: Service Bus redelivers it
and, after the queue's MaxDeliveryCount (``maxDeliveryCount`` in infra/, 10 there, and the same
figure in ``CONVEYOR_MAX_DELIVERY_COUNT``, whose own default is 5), moves it to the dead-letter queue with reason
``MaxDeliveryCountExceeded``. That is how Conveyor dead-letters on Functions:

* a malformed message (not a valid ``Message`` JSON) raises ``ValidationError`` -> logged as
  malformed, re-raised -> dead-lettered after MaxDeliveryCount deliveries (the Python worker
  cannot dead-letter directly without SDK-type bindings; the retries are cheap and bounded);
* a retryable error (throttling, lost race) raises -> redelivered, normally succeeds;
* step failures are not exceptions: the engine records them on the run and decides retries.
"""

from __future__ import annotations

import logging

import azure.functions as func

bp = func.Blueprint()
log = logging.getLogger("conveyor.functions.orchestrator")


@bp.function_name("orchestrator")
@bp.service_bus_queue_trigger(arg_name="msg", queue_name="%CONVEYOR_QUEUE_NAME%", connection="ServiceBusConnection")
def orchestrator(msg: func.ServiceBusMessage) -> None:
    from shared.engine.executor import Executor
    from shared.errors import RetryableError, ValidationError
    from shared.wiring import get_services

    body = msg.get_body()
    delivery_count = msg.delivery_count or 1
    services = get_services()
    try:
        # delivery_count > 1 lets the engine resume a side effect a crash interrupted.
        Executor.from_services(services).handle_body(body, delivery_count=delivery_count)
    except ValidationError as exc:
        log.error(
            "malformed message %s (delivery %s): %s; raising so Service Bus dead-letters it after MaxDeliveryCount",
            msg.message_id,
            delivery_count,
            exc,
        )
        raise
    except RetryableError as exc:
        log.warning("message %s (delivery %s) will be retried: %s", msg.message_id, delivery_count, exc)
        raise
    finally:
        # Exporters batch; an instance may be scaled in right after this invocation.
        services.telemetry.flush()
