"""RunStore port and its Table Storage adapter (Azurite locally, Azure Tables in Azure)."""
