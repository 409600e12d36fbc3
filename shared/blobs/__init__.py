"""BlobStore port and its Blob Storage adapter (Azurite locally)."""
