"""Files written safely: atomic writes and locks between processes."""
