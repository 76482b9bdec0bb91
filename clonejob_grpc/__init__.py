"""GENERATED code for the clonejob.v1 protos. Do not edit.

Regenerate with `python protos/generate.py`.
"""
