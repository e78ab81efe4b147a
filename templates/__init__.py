"""The single source of truth for the information elements espmeter exports."""
