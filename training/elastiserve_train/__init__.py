"""elastiserve_train."""
