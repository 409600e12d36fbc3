"""The local host behind `conveyor up`: Azurite, the HTTP routes, blob events, schedules, the queue consumer."""
