"""Pipelines: whole flows that string the other rooms together (the demo)."""
