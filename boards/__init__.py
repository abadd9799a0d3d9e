"""qfx.boards: board descriptions (Ultra96 v2 first). Built by the RTL issue."""
