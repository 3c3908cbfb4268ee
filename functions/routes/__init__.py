"""The HTTP routes, one module per OpenAPI tag; each route parses, calls `core`, maps."""
