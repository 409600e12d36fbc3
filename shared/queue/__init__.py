"""WorkQueue port and adapters (Service Bus in Azure; Storage Queue on Azurite locally)."""
