"""Pooh Pursues Patterns: the pieces two or more chapters share."""
