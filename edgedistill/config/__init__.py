"""The recipe: its schema (schema.py) and how a YAML file becomes a checked Recipe (load.py)."""
