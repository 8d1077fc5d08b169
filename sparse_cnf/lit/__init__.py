"""lit package."""
