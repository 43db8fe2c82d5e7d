"""elastiserve_operator."""
