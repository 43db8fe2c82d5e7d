"""elastiserve_store."""
