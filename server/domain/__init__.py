"""The clone job domain: states, steps, transitions, names and validation.

Imports nothing else of this project, and nothing generated: the API layer maps
protos to these types and back.
"""
