"""Tools for the people who own the rules (SPEC §9): replay, simulate, report, export, verify.

Everything here reads topics or an NDJSON export and runs the pure engine offline; nothing
writes to a live topic.
"""
