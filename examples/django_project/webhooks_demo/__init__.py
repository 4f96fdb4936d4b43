"""A tiny app whose only job is to connect the example's signal receivers."""
