"""Recipes: named presets (``presets``: the table, the machine they are chosen for), their
application to a config and its data (``plan``), and the network a time budget affords
(``scaling``). Import the modules directly: the config imports the table, and ``plan`` imports
the config."""
