"""Shipped recipes and the JSON Schema of the recipe core."""
