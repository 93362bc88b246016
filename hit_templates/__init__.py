"""HIT pages (Jinja2 templates) shown to workers."""
