"""Numpy analysis of captured rows: scene geometry, summaries, consistency, map scaling."""
