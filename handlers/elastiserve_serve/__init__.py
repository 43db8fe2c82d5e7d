"""elastiserve_serve."""
