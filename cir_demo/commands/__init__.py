"""Small CLI commands that belong to no other layer."""
