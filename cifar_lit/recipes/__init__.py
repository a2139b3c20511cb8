"""Recipes: named presets (``presets``: the table, the machine they are chosen for) and their
application to a config and its data (``plan``). Import the two modules directly: the config
imports the table, and ``plan`` imports the config."""
