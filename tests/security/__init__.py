"""Drills for issue 13: hostile input and failure containment, one file per finding."""
