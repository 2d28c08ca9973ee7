"""Shared test code: subprocess fits, tiny runs, raw-data kits, ZeRO folders, script loaders."""
