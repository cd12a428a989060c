"""lavaconv's Lava processes (``process.py``) and their CPU models (``models.py``); nothing else
may live here, since Lava's model discovery executes every file of this folder."""
